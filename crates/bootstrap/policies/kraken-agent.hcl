# Consul agents (every node): register their own node, read the catalog for DNS
# and anti-entropy, and nothing else.
node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
