//! The commands, side by side: `run` (the daemon), `render` (a dry run into
//! a directory), `doctor` (what is wrong, read-only), `snapshot` (the
//! Consul and Nomad snapshots in S3) and `leave` (out of the cluster, now
//! or at power-off).

pub mod doctor;
pub mod leave;
pub mod render;
pub mod run;
pub mod snapshot;
