# Rendered by kraken-agent 0.1.0 for i-0c11e47000000055 (nomad-client) of cluster kraken.
# It is rewritten at every boot: change the instance tags, /etc/kraken/agent.toml
# or a template override instead of this file.

node_name      = "i-0c11e47000000055"
datacenter     = "dc1"
data_dir       = "/opt/consul"
bind_addr      = "172.16.0.55"
advertise_addr = "172.16.0.55"
client_addr    = "127.0.0.1"
log_level      = "INFO"
server         = false

# The servers this node found in EC2 when it booted; gossip finds the rest.
retry_join = ["172.16.0.7", "172.16.0.21", "172.16.0.39"]

node_meta {
  instance_id       = "i-0c11e47000000055"
  availability_zone = "us-west-2a"
  kraken_roles      = "nomad-client"
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
  }
}
