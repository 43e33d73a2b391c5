# With the node identity of the node itself (its own `node "<name>" write`
# and `service_prefix "" read`), the agent token of every node that is not
# a Consul server: what the node's Consul agent and the kraken agent on it
# do besides writing their own node. No node write on any other node: a
# leaked token cannot register, deregister or change another node.
#
# The agent API listens on loopback only (`consul.client_addr`), so
# `agent_prefix` write reaches the node's own agent: joining the servers
# EC2 knows when every one was lost.
agent_prefix "" {
  policy = "write"
}
# Following the servers through the catalog, Nomad's registration.
node_prefix "" {
  policy = "read"
}
# The bootstrap state: whether the Nomad servers' phase is done, and the
# role tokens' digests (a node re-reads its Nomad token after a rotation).
key "kraken/@CLUSTER@/bootstrap/state" {
  policy = "read"
}
