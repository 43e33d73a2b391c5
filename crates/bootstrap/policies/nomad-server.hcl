# Nomad servers: register the nomad service and, for the one-time bootstrap,
# take the lease under kraken/@CLUSTER@/bootstrap/.
agent_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "write"
}
key_prefix "kraken/@CLUSTER@/bootstrap/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
# Workload identity (docs/workload-identity.md): the Nomad servers' agent keeps
# the nomad-workloads auth method's keys equal to Nomad's, and a role per
# Nomad namespace. Nomad's own minimal server policy has it too.
acl = "write"
