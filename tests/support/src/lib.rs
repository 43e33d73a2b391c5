//! Real Consul, Nomad and moto peers for the integration tests, on loopback.
//!
//! Every peer runs in a temp dir of its own with its output in a log file
//! there, and is killed with everything it spawned when its handle drops. When
//! a test panics, the tail of each peer's log is printed and the dir is kept,
//! so a failure on CI can be read from the CI log alone.
//!
//! The binaries come from `cargo xtask deps` through `CONSUL_BIN`, `NOMAD_BIN`
//! and `MOTO_SERVER`. A missing one is a panic, not a skip: a test suite that
//! quietly skips its peers proves nothing.
//!
//! [`asg::LifecycleFake`] serves the two autoscaling lifecycle calls moto
//! lacks, in front of moto.

pub mod asg;
mod consul;
mod dir;
mod moto;
mod net;
mod nomad;
mod peer;
mod wait;

pub use consul::{CONSUL_HTTP_PORT, ConsulCluster, ConsulDev};
pub use dir::TestDir;
pub use moto::Moto;
pub use net::{LoopbackAddrs, free_port};
pub use nomad::{NOMAD_HTTP_PORT, NOMAD_RPC_PORT, NomadClient, NomadDev, NomadServer};
pub use peer::{Peer, PeerCommand, consul_bin, moto_server, nomad_bin};
pub use wait::{START_TIMEOUT, get_text, http_client, wait_for, wait_http_ok, wait_until};
