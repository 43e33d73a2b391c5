//! The boot steps, each implemented once; `run`, `render` and `doctor`
//! call these same functions.
//!
//! 1. identity (IMDS) and 2. intent (tags and agent.toml): [`node`]
//! 3. secrets: [`secrets`], and the cluster PKI: [`pki`]
//! 4. discovery (EC2): [`discovery`]
//! 5. render and install the configs: [`render`]
//! 6. start the services, and for the node's life restart or reload them as
//!    what they loaded requires: [`start`], [`apply`], [`applied`], with
//!    servers restarting one at a time: [`restart`]; the certificates they
//!    serve: [`served`]
//! 7. the one-time bootstrap: [`bootstrap`], then this node's tokens: [`tokens`]
//!    (on the Consul leader, every other node's own agent token: [`node_tokens`]);
//!    snapshots of Consul and Nomad in S3, taken by the leaders and restored
//!    at a fresh cluster's bootstrap: [`snapshot`]
//! 8. ready: `kraken_ready`, driven by `cmd::run`
//!
//! After the boot, the instance's autoscaling lifecycle: [`lifecycle`].

pub mod applied;
pub mod apply;
pub mod autopilot;
pub mod bootstrap;
pub mod discovery;
pub mod follow;
pub mod lifecycle;
pub mod node;
pub mod node_tokens;
pub mod pki;
pub mod published;
pub mod render;
pub mod restart;
pub mod secrets;
pub mod served;
pub mod snapshot;
pub mod start;
pub mod tokens;
