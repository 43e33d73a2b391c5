# Tasks of Nomad namespace @NAMESPACE@, through their workload identity (the
# role nomad-tasks-@NAMESPACE@): what templates read. Service and node
# lookups, and the KV under nomad/@NAMESPACE@/ only: one namespace's tasks do
# not read another's configuration, nor kraken's own keys.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
key_prefix "nomad/@NAMESPACE@/" {
  policy = "read"
}
