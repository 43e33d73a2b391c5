# A leaving Nomad client's agent: drain its own node (allocations migrate
# before the instance goes), then purge it so no down node lingers. Nomad
# has no per-node rule: node write covers every node (docs/iam.md).
node {
  policy = "write"
}
