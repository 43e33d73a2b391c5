# Rendered by kraken-agent 0.1.0 for i-0c0b1de000000001 (consul-server,nomad-server) of cluster small.
# It is rewritten at every boot: change the instance tags, /etc/kraken/agent.toml
# or a template override instead of this file.

node_name      = "i-0c0b1de000000001"
datacenter     = "dc1"
data_dir       = "/opt/consul"
bind_addr      = "10.0.1.10"
advertise_addr = "10.0.1.10"
client_addr    = "127.0.0.1"
log_level      = "INFO"
server         = true
bootstrap_expect = 3

ui_config {
  enabled = true
}

# The servers this node found in EC2 when it booted; gossip finds the rest.
retry_join = ["10.0.1.10", "10.0.1.11", "10.0.1.12"]

node_meta {
  instance_id       = "i-0c0b1de000000001"
  availability_zone = "us-west-2b"
  kraken_roles      = "consul-server,nomad-server"
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
