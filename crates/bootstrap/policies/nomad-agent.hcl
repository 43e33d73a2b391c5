# The kraken agent on Nomad servers: join servers, read autopilot's health
# before and after a restart, read the nodes for doctor.
agent {
  policy = "write"
}
operator {
  policy = "read"
}
node {
  policy = "read"
}
