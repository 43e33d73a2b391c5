# Rendered by kraken-agent 0.1.0 for i-0000000000000001 (consul-server,nomad-server,nomad-client) of cluster dev.
# It is rewritten at every boot: change the instance tags, /etc/kraken/agent.toml
# or a template override instead of this file.

name       = "i-0000000000000001"
region     = "global"
datacenter = "dc1"
data_dir   = "/opt/nomad"
bind_addr  = "0.0.0.0"
log_level  = "INFO"

disable_update_check = true

advertise {
  http = "10.9.0.5"
  rpc  = "10.9.0.5"
  serf = "10.9.0.5"
}

server {
  enabled          = true
  bootstrap_expect = 1

  # Gossip encryption key of the Nomad servers (from the secret store).
  encrypt = "bm9tYWQgZ29sZGVuIGZpbGUsIG5vdCBhIGtleSEhISE="

  server_join {
    retry_join     = ["10.9.0.5"]
    retry_interval = "15s"
  }
}

# Rolling replacements (docs/operations.md): dead servers are removed once a
# replacement is healthy, never below the expected count.
autopilot {
  cleanup_dead_servers      = true
  min_quorum                = 1
  server_stabilization_time = "10s"
  last_contact_threshold    = "200ms"
}

client {
  enabled = true
  node_class = "generic"

  server_join {
    retry_join     = ["10.9.0.5"]
    retry_interval = "15s"
  }

  # Nomad never reaches instance metadata here (the IMDS guard rejects it,
  # docs/iam.md): its cloud fingerprinters could only fail, and env_aws
  # fails by its 2 s timeout, at every client start. The agent gives the
  # facts they would have found as meta instead.
  options {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }

  meta {
    "kraken.cluster" = "dev"
    "kraken.instance_id" = "i-0000000000000001"
    "kraken.availability_zone" = "eu-central-1a"
  }
}

plugin "docker" {
  config {
    allow_privileged = false

    volumes {
      enabled = false
    }
  }
}

# exec and raw_exec tasks never run as root (uid 0): the node's tokens, keys
# and certificates are root's or the services' files, and file modes protect
# them only from other users (docs/iam.md). exec runs as nobody unless a
# task says `user`; raw_exec as Nomad's own user (root) unless it does, so a
# raw_exec task must set `user`. No `denied_host_gids`: Nomad 1.11's check
# lists a zero gid for every user (its validator pads the group list), so
# gid 0 denied refuses every task.
# exec gives its tasks Nomad's default capabilities (setuid, chown,
# dac_override and the rest) in their ambient set, so a task as nobody can
# make itself root: an exec task keeps only what a service needs.
plugin "exec" {
  config {
    denied_host_uids = "0"
    allow_caps       = ["audit_write", "kill", "net_bind_service"]
  }
}

# The cluster PKI (docs/pki.md): HTTPS and RPC with certificates both ways;
# servers must prove they are server.<region>.nomad.
tls {
  http = true
  rpc  = true

  ca_file   = "/etc/nomad.d/tls/ca.pem"
  cert_file = "/etc/nomad.d/tls/nomad.pem"
  key_file  = "/etc/nomad.d/tls/nomad-key.pem"

  verify_server_hostname = true
  verify_https_client    = true
}

consul {
  address = "127.0.0.1:8501"
  token   = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
  # Consul's CA, and no client certificate: Nomad reads this block only
  # at start, and a certificate here would expire under it (docs/pki.md).
  ssl          = true
  verify_ssl   = true
  grpc_address = "127.0.0.1:8503"
  ca_file      = "/etc/consul.d/tls/ca.pem"

  # Workload identity (docs/workload-identity.md): every Consul service and
  # every task with a consul block gets an identity for Consul, which the
  # client exchanges at the nomad-workloads auth method for the workload's
  # own Consul token. Jobs carry no Consul token.
  service_identity {
    aud = ["consul.io"]
    ttl = "1h"
  }

  task_identity {
    aud = ["consul.io"]
    ttl = "1h"
  }
}

# Prometheus metrics at /v1/metrics?format=prometheus. Nomad asks no ACL
# token there: with TLS on its HTTPS port takes only callers with a
# certificate of the cluster CA (docs/operations.md, the scraper's).
telemetry {
  prometheus_metrics         = true
  disable_hostname           = true
  collection_interval        = "10s"
  publish_node_metrics       = true
  publish_allocation_metrics = true
}

acl {
  enabled = true
}
