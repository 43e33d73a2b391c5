//! kraken-agent: the boot flow of one node, and the commands around it.
//!
//! `steps` holds the one implementation of each boot step; `run`, `render`
//! and `doctor` call those same functions.

pub mod doctor;
pub mod error;
pub mod logging;
pub mod node_file;
pub mod render_cmd;
pub mod run;
pub mod steps;
pub mod tls;

pub use error::BootError;
