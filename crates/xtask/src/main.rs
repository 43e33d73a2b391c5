//! Developer tasks for the kraken-agent workspace.
//!
//! `cargo xtask deps` builds the real test peers (Consul and Nomad from their
//! published Go modules, moto from PyPI) into a cache outside the repository
//! and prints `export` lines for them; `cargo xtask test` runs the whole check
//! with those peers in place. Progress goes to stderr so that
//! `eval "$(cargo xtask deps)"` sees only the exports.
//!
//! Two jobs: [`peers`] builds the real peers (`deps`); [`cluster`] drives
//! the VM cluster (host tools, binaries, image, the `kraken-cluster`
//! harness). [`test`] runs every check, the cluster's last; [`process`]
//! runs the commands for all of them.

mod cluster;
mod peers;
mod process;
mod test;

use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use process::shell_quote;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  deps               build/install the test peers (consul, nomad, moto) into the
                     cache and print `export` lines: eval \"$(cargo xtask deps)\"
  test [ARGS...]     deps, then cargo fmt --check, clippy -D warnings,
                     cargo test --workspace [ARGS...] with the peers' env set,
                     and `cluster test`
  cluster up [--topology small|seed]
                     build the local image and boot the cluster in nspawn VMs,
                     deploy the web job and print its answers; leaves it running
  cluster status     check the running cluster
  cluster down       stop it and remove everything it made
  cluster test       the fault scenario on a fresh small cluster, then down
  cluster bench [--topology small|seed]
                     boot timings, EC2 calls and agent memory, against
                     Consul's and Nomad's own cloud auto-join (JSON on stdout)

environment:
  KRAKEN_CACHE       cache directory (default: ~/.cache/kraken)
  CARGO_TARGET_DIR   for `test`; defaults to $KRAKEN_CACHE/target";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("deps") if args.len() == 1 => peers::deps().map(|deps| {
            for (name, path) in deps.vars() {
                println!("export {name}={}", shell_quote(&path.to_string_lossy()));
            }
            ExitCode::SUCCESS
        }),
        Some("test") => test::run(&args[1..]),
        Some("cluster") => cluster::run(&args[1..]),
        Some("help" | "-h" | "--help") => {
            eprintln!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}

fn cache_dir() -> Result<PathBuf> {
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

fn xtask_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn workspace_root() -> PathBuf {
    xtask_dir().join("../..")
}

/// Where `test` and `cluster` build: `CARGO_TARGET_DIR`, else the cache's.
fn target_dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => cache_dir()?.join("target"),
    })
}
