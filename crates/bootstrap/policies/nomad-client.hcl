# Nomad clients, under workload identity: a workload registers its services
# and reads KV with its own token (the nomad-workloads auth method). The
# client's token still registers the nomad-client service, reads its agent,
# and deregisters the services of stopped allocations (Nomad >= 1.9 does
# that with the agent's own token: hashicorp/nomad#24166), hence service
# write. No KV, no ACL rights.
agent_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "write"
}
