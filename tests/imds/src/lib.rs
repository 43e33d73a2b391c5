//! A fake EC2 Instance Metadata Service that follows AWS's documented IMDSv2
//! behaviour, errors included, so the agent's real IMDS client can be tested
//! off AWS: in-process through [`FakeImds::start`], or as the
//! `kraken-fake-imds` binary inside a test VM's network namespace.
//!
//! Faults (delays, error statuses, hangs, token invalidation) can be set at
//! start and changed while it runs, to test the client's timeouts, retries
//! and token handling.

mod config;
mod metadata;
mod server;
mod service;
mod state;

pub use config::{
    Config, Faults, IamRole, InstanceData, SpotAction, SpotInstanceAction, TargetLifecycleState,
    TokenMode, validate,
};
pub use server::{FakeImds, FakeImdsHandle};
pub use state::Stats;
