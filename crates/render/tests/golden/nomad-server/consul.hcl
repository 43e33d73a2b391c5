# Rendered by kraken-agent 0.1.0 for i-0a0ad5e7e0000000a (nomad-server) of cluster kraken.
# It is rewritten at every boot: change the instance tags, /etc/kraken/agent.toml
# or a template override instead of this file.

node_name      = "i-0a0ad5e7e0000000a"
datacenter     = "dc1"
data_dir       = "/opt/consul"
bind_addr      = "172.16.0.10"
advertise_addr = "172.16.0.10"
client_addr    = "127.0.0.1"
log_level      = "INFO"
server         = false

# The servers this node found in EC2 when it booted; gossip finds the rest.
retry_join = ["172.16.0.7", "172.16.0.21", "172.16.0.39"]

node_meta {
  instance_id       = "i-0a0ad5e7e0000000a"
  availability_zone = "us-west-2a"
  kraken_roles      = "nomad-server"
}

# HTTPS and gRPC over TLS only; the plain ports are off.
ports {
  http     = -1
  https    = 8501
  grpc     = -1
  grpc_tls = 8503
}

# The cluster PKI (docs/pki.md): every caller of the HTTPS API and of the
# servers' RPC presents a certificate of the cluster CA, and servers must
# prove they are server.<datacenter>.consul.
tls {
  defaults {
    ca_file         = "/etc/consul.d/tls/ca.pem"
    cert_file       = "/etc/consul.d/tls/consul.pem"
    key_file        = "/etc/consul.d/tls/consul-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }

  internal_rpc {
    verify_server_hostname = true
  }

  # The HTTPS API asks for no client certificate: ACL tokens guard it, and
  # Nomad's link to Consul then outlives every renewal of the certificate
  # it would present, which Nomad cannot reload (docs/pki.md).
  https {
    verify_incoming = false
  }

  grpc {
    # Envoy sidecars and dataplanes authenticate with ACL tokens and check
    # the server against the CA.
    verify_incoming = false
  }
}

connect {
  enabled = true
}

# Prometheus metrics at /v1/agent/metrics?format=prometheus, behind the
# HTTPS port and the ACLs (the scraper's token: docs/operations.md). One
# series per metric for the whole cluster: the node is a label, not part
# of the name.
telemetry {
  prometheus_retention_time = "60s"
  disable_hostname          = true
}

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true

  tokens {
  }
}
