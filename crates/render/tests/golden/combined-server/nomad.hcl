# Rendered by kraken-agent 0.1.0 for i-0c0b1de000000001 (consul-server,nomad-server) of cluster small.
# It is rewritten at every boot: change the instance tags, /etc/kraken/agent.toml
# or a template override instead of this file.

name       = "i-0c0b1de000000001"
region     = "global"
datacenter = "dc1"
data_dir   = "/opt/nomad"
bind_addr  = "0.0.0.0"
log_level  = "INFO"

disable_update_check = true

advertise {
  http = "10.0.1.10"
  rpc  = "10.0.1.10"
  serf = "10.0.1.10"
}

server {
  enabled          = true
  bootstrap_expect = 3

  server_join {
    retry_join     = ["10.0.1.10", "10.0.1.11", "10.0.1.12"]
    retry_interval = "15s"
  }
}

consul {
  address = "127.0.0.1:8500"
}

acl {
  enabled = true
}
