//! The one-time bootstrap against three real Consul servers (configured by
//! the agent's own renderer, ACLs default-deny, gossip encrypted), a real
//! Nomad server with ACLs on, and moto's SSM as the secret store.
//!
//! `cluster` is the fixture; the tests are grouped by what they show.

mod cluster;
mod exactly_once;
mod faults;
mod node_tokens;
mod nomad_lost;
mod tokens;
