# Rendered by kraken-agent 0.1.0 for i-0000000000000001 (consul-server,nomad-server,nomad-client) of cluster dev.
# It is rewritten at every boot: change the instance tags, /etc/kraken/agent.toml
# or a template override instead of this file.

node_name      = "i-0000000000000001"
datacenter     = "dc1"
data_dir       = "/opt/consul"
bind_addr      = "10.9.0.5"
advertise_addr = "10.9.0.5"
client_addr    = "127.0.0.1"
log_level      = "INFO"
server         = true
bootstrap_expect = 1

ui_config {
  enabled = true
}

# Gossip encryption key of the cluster (from the secret store).
encrypt = "a3Jha2VuIGdvbGRlbiBmaWxlLCBub3QgYSBrZXkhISE="

# The servers this node found in EC2 when it booted; gossip finds the rest.
retry_join = ["10.9.0.5"]

node_meta {
  instance_id       = "i-0000000000000001"
  availability_zone = "eu-central-1a"
  kraken_roles      = "consul-server,nomad-server,nomad-client"
}

ports {
  grpc = 8502
}

connect {
  enabled = true
}

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true

  tokens {
    initial_management = "00000000-1111-2222-3333-444444444444"
    agent = "55555555-6666-7777-8888-999999999999"
  }
}
