# Consul agents (every node): register their own node, read the catalog for DNS
# and anti-entropy, and join the gossip pool through the agent API (a node
# that lost every server rejoins the ones EC2 knows now).
node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
agent_prefix "" {
  policy = "write"
}
# The bootstrap state: which secret each role token was made with (digests,
# never secrets), so a node re-reads its tokens from the secret store only
# after a rotation.
key "kraken/@CLUSTER@/bootstrap/state" {
  policy = "read"
}
