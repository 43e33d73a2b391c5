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
//! harness). [`mod@test`] runs every check, the cluster's last; [`process`]
//! runs the commands for all of them and [`paths`] says where they work.

mod cluster;
mod paths;
mod peers;
mod process;
mod test;
mod usage;

use std::process::ExitCode;

use process::shell_quote;
use usage::USAGE;

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
