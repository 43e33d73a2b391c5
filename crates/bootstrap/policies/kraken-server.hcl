# Servers' own work (Consul and Nomad servers): the cluster-wide restart lock
# and the bootstrap state under kraken/@CLUSTER@/, autopilot's health, joining
# servers, and reading ACL metadata to check the role tokens and policies
# (reading never shows a token's secret; changing anything needs the
# management token).
key_prefix "kraken/@CLUSTER@/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
agent_prefix "" {
  policy = "write"
}
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
operator = "read"
acl = "read"
