//! kraken-agent: the boot flow of one node, and the commands around it.
//!
//! `steps` holds the one implementation of each boot step; the commands in
//! `cmd` (`run`, `render`, `doctor`) call those same functions.

pub mod clients;
pub mod cmd;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod steps;
pub mod tuning;

pub use error::BootError;
