//! Where xtask finds the workspace and keeps its cache and builds.

use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

pub fn cache_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("KRAKEN_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").context("neither KRAKEN_CACHE nor HOME is set")?;
            Path::new(&home).join(".cache/kraken")
        }
    };
    // Paths end up in exported variables used from other directories.
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()?.join(dir)
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// `cargo run` sets `CARGO_MANIFEST_DIR` for the process it runs: read it
/// there first. The compile-time value is the checkout that built this
/// binary, which, with a target directory shared between checkouts (CI's
/// `~/.cache/kraken/target`), can be another checkout, since removed.
pub fn xtask_dir() -> PathBuf {
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

pub fn workspace_root() -> PathBuf {
    xtask_dir().join("../..")
}

/// Where `test` and `cluster` build: `CARGO_TARGET_DIR`, else the
/// checkout's own `target/`. Not a directory shared by every checkout:
/// cargo hashes a workspace's units by paths relative to its root, so two
/// checkouts sharing one target directory share artifacts, and a build in
/// one can leave the other running binaries of the first (the older
/// sources look fresh next to them).
pub fn target_dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target"),
    })
}
