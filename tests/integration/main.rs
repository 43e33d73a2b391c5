//! The integration tests: one test binary, one module per area, so that
//! the AWS SDK and the agent's crates are linked once rather than once per
//! area. `cargo test -p kraken-agent --test integration web_job::` runs
//! one area; docs/testing.md says what each proves.

mod common;

mod autopilot;
mod boot;
mod bootstrap;
mod budget;
mod doctor;
mod exec_driver;
mod follow;
mod live_peers;
mod metrics;
mod published;
mod render_validate;
mod run;
mod snapshots;
mod teams;
mod tls;
mod web_job;
mod workload_identity;
