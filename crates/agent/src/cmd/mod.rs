//! The commands, side by side: `run` (the daemon), `render` (a dry run into
//! a directory), `doctor` (what is wrong, read-only) and `snapshot` (the
//! Consul and Nomad snapshots in S3).

pub mod doctor;
pub mod render;
pub mod run;
pub mod snapshot;
