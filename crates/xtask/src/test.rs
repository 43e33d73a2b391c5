//! `cargo xtask test`: the whole check, with the real peers in place.

use anyhow::{Context, Result};
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::cluster;
use crate::paths::{target_dir, workspace_root};
use crate::peers::deps;
use crate::process::{describe, fmt_duration, step};

pub fn run(cargo_test_args: &[String]) -> Result<ExitCode> {
    // On a cold machine the peers' Go builds take a quarter of an hour:
    // they run beside fmt, clippy and the tests' compilation, which need no
    // peer, and fill the cores that a Rust build leaves idle (one large
    // crate or a link at a time).
    let peers = std::thread::spawn(deps);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = target_dir()?;
    let mut test_args = vec!["test", "--workspace"];
    test_args.extend(cargo_test_args.iter().map(String::as_str));
    // `--no-run` before any `--`: the test binaries' arguments follow it.
    let mut compile_args = vec!["test", "--workspace", "--no-run"];
    compile_args.extend(
        cargo_test_args
            .iter()
            .map(String::as_str)
            .take_while(|a| *a != "--"),
    );
    let checks: [(&str, Vec<&str>); 3] = [
        ("cargo fmt", vec!["fmt", "--all", "--", "--check"]),
        (
            "cargo clippy",
            vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("cargo test --no-run", compile_args),
    ];
    let started = Instant::now();
    for (name, args) in checks {
        if let Some(code) = cargo_step(&cargo, &target, name, &args, &[])? {
            return Ok(code);
        }
    }
    let deps = peers
        .join()
        .map_err(|_| anyhow::anyhow!("the peers' build panicked"))??;
    // The integration tests mostly wait (leases, certificate lifetimes,
    // elections), so more of them at once than there are cores shortens
    // the run: libtest's default is one per core.
    let threads = std::env::var("RUST_TEST_THREADS").unwrap_or_else(|_| TEST_THREADS.to_owned());
    let mut env: Vec<(&str, std::ffi::OsString)> = deps
        .vars()
        .iter()
        .map(|(var, path)| (*var, path.as_os_str().to_owned()))
        .collect();
    env.push(("RUST_TEST_THREADS", threads.into()));
    if let Some(code) = cargo_step(&cargo, &target, "cargo test", &test_args, &env)? {
        return Ok(code);
    }
    let code = step("cluster test", || {
        cluster::run_with(&deps, &target, &["test".into()])
    })?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    // Past the first minute: four one-minute certificate lifetimes on a
    // fresh cluster under load (docs/testing.md).
    let soak = ["soak", "--minutes", "4", "--leaf-lifetime-secs", "60"].map(String::from);
    let code = step("cluster soak", || cluster::run_with(&deps, &target, &soak))?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    // A short bench: one client added to a running cluster, its join timed
    // (a figure, not an assert) under load that must not fail.
    let bench = [
        "bench",
        "--scenario",
        "add-client",
        "--runs",
        "1",
        "--discovery",
        "agent",
    ]
    .map(String::from);
    let code = step("cluster bench add-client", || {
        cluster::run_with(&deps, &target, &bench)
    })?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    // Tasks kept from the node's credentials (raw_exec, exec, Docker with
    // the host's network, each refused IMDS, the token files, the TLS keys
    // and SSM), then the instance's life on a running cluster
    // (docs/testing.md): an instance refresh of every server then every client, one more client,
    // a spot interruption of a client that runs the web service, a client
    // through the warm pool into service, then a power-off with no hook of
    // another that runs the web service, and of a server (which the others
    // cannot spare: it goes down failed, and its replacement takes its
    // place); each under load that must not fail. VM names: the group and a sequence number, gone ones counted
    // (the roll makes server4 to server6, client3 and client4, launch
    // client5, warm client6).
    // Then every server lost at once and replaced (the clients survive),
    // and the whole cluster lost and booted anew from a snapshot.
    let lifecycle: [&[&str]; 12] = [
        &["up"],
        &["escape"],
        &["roll", "--group", "all"],
        &["launch", "client"],
        &["terminate", "client3", "--spot"],
        &["warm", "add", "client"],
        &["warm", "start", "client6"],
        &["terminate", "client4", "--poweroff"],
        &["terminate", "server4", "--poweroff"],
        &["lose-servers"],
        &["restore"],
        &["down"],
    ];
    for args in lifecycle {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let code = step(&format!("cluster {}", args.join(" ")), || {
            cluster::run_with(&deps, &target, &args)
        })?;
        if code != ExitCode::SUCCESS {
            // The cluster the steps share goes (its VMs' journals with it:
            // the failing verb printed what it saw).
            if args[0] != "down" {
                let down = ["down".to_owned()];
                let _ = step("cluster down", || cluster::run_with(&deps, &target, &down));
            }
            return Ok(code);
        }
    }
    eprintln!(
        "xtask: all checks passed in {}",
        fmt_duration(started.elapsed())
    );
    Ok(ExitCode::SUCCESS)
}

/// Tests at once in each test binary, unless `RUST_TEST_THREADS` says.
const TEST_THREADS: &str = "4";

/// Runs `cargo ARGS` in the workspace with `env` added; `Some(code)` when
/// it failed.
fn cargo_step(
    cargo: &std::ffi::OsStr,
    target: &std::path::Path,
    name: &str,
    args: &[&str],
    env: &[(&str, std::ffi::OsString)],
) -> Result<Option<ExitCode>> {
    eprintln!("xtask: [{name}] start");
    let t = Instant::now();
    let mut cmd = Command::new(cargo);
    cmd.args(args)
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target);
    for (var, value) in env {
        cmd.env(var, value);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(&cmd)))?;
    let took = fmt_duration(t.elapsed());
    if !status.success() {
        eprintln!("xtask: [{name}] FAILED ({took}): {status}");
        eprintln!("xtask: command: {}", describe(&cmd));
        let code = status.code().unwrap_or(1).clamp(1, 255);
        return Ok(Some(ExitCode::from(code as u8)));
    }
    eprintln!("xtask: [{name}] ok ({took})");
    Ok(None)
}
