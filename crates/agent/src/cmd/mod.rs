//! The commands, side by side: `run` (the daemon), `render` (a dry run into
//! a directory) and `doctor` (what is wrong, read-only).

pub mod doctor;
pub mod render;
pub mod run;
