//! The agent's configs and its start-and-wait logic against real Consul and
//! Nomad on loopback, and its HTTP clients against live servers.
//!
//! Services are started by a `ServiceManager` that runs the real binaries
//! as processes of the test (systemd itself is exercised in the VM tests);
//! everything the agent waits on is the real server answering.

mod consul_client;
mod consul_servers;
mod nomad;
mod support;
