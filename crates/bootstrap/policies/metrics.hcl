# The Prometheus scraper (docs/operations.md): every agent's
# /v1/agent/metrics needs agent read on that node; consul_sd_configs reads
# the catalog (nodes and services). Read-only: no KV, no ACLs, no writes.
agent_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
