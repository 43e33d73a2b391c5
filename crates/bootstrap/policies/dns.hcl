# The anonymous token: DNS lookups of nodes and services, nothing else (no KV,
# no writes). Consul's documented DNS-only policy.
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
