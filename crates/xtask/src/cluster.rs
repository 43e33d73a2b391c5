//! `cargo xtask cluster`: the host tools the VM cluster needs, the
//! binaries it runs and the local image it boots, then the `kraken-cluster`
//! harness (tests/cluster) with their paths.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::paths::{cache_dir, target_dir, workspace_root};
use crate::peers::{Deps, deps};
use crate::process::{capture, describe, run_logged, step};
use crate::usage::USAGE;

/// The host tools the VM cluster needs (.ci/run installs them).
const CLUSTER_TOOLS: [(&str, &str); 6] = [
    ("systemd-nspawn", "systemd-container"),
    ("debootstrap", "debootstrap"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("journalctl", "systemd"),
    ("mount", "mount"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

/// The Debian packages of missing cluster tools, installed when possible
/// (root with apt-get: the machine kind this runs on), so that `cluster up`
/// works on a fresh machine; otherwise an error naming them.
fn install_cluster_tools() -> Result<()> {
    let mut missing: Vec<&str> = CLUSTER_TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let root = capture(Command::new("id").arg("-u")).is_ok_and(|uid| uid == "0");
    if !root || !on_path("apt-get") {
        bail!(
            "the VM cluster needs root and these packages: apt-get install {}",
            missing.join(" ")
        );
    }
    step(&format!("apt-get install {}", missing.join(" ")), || {
        run_logged(
            Command::new("apt-get").args(["update", "-qq"]),
            &cache_dir()?.join("logs/apt-update.log"),
        )?;
        run_logged(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &cache_dir()?.join("logs/apt-install.log"),
        )
    })
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let target = target_dir()?;
    let deps = deps()?;
    run_with(&deps, &target, args)
}

/// Builds what the VMs run (the agent, the fake IMDS, the web service, the
/// harness) and the image, then runs the harness (tests/cluster).
pub fn run_with(deps: &Deps, target: &Path, args: &[String]) -> Result<ExitCode> {
    if args.is_empty() {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    }
    install_cluster_tools()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = cache_dir()?.join("cluster");
    fs::create_dir_all(&root)?;
    let bin = target.join("debug");
    // Only these boot VMs: `status`, `down`, `upgrade` and `exec` work with
    // what is running, even if the sources changed since.
    let boots = matches!(args[0].as_str(), "up" | "test" | "bench" | "soak");
    // The same set for every verb: `-p kraken-cluster` alone unifies its
    // dependencies' features differently and rebuilds them (27 s at each
    // switch between a booting verb and another).
    let packages = [
        "kraken-cluster",
        "kraken-agent",
        "kraken-fake-imds",
        "kraken-web",
    ];
    step("build the cluster's binaries", || {
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "--quiet"])
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", target);
        for p in &packages {
            cmd.args(["-p", p]);
        }
        let status = cmd.status()?;
        if !status.success() {
            bail!("{} failed: {status}", describe(&cmd));
        }
        Ok(())
    })?;
    let image = root.join("image");
    if boots {
        step("the local image", || {
            // The running VMs' lower layer must not change under them.
            run_logged(
                Command::new(bin.join("kraken-cluster"))
                    .args(harness_paths(deps, &root, &image, &bin))
                    .arg("down"),
                &root.join("down.log"),
            )?;
            let mut cmd = Command::new("bash");
            cmd.arg(workspace_root().join("packer/build-local-image.sh"))
                .arg(&image)
                .env("KRAKEN_AGENT_BIN", bin.join("kraken-agent"))
                .env("KRAKEN_CONSUL_BIN", &deps.consul)
                .env("KRAKEN_NOMAD_BIN", &deps.nomad)
                // Nomad clients run Docker, as on AWS (Debian's docker.io
                // here, Docker CE in the AMI): doctor checks it on real nodes.
                .env("KRAKEN_INSTALL_DOCKER", "1");
            capture(&mut cmd).map(drop)
        })?;
    }
    let status = Command::new(bin.join("kraken-cluster"))
        .args(harness_paths(deps, &root, &image, &bin))
        .args(args)
        .status()
        .context("cannot start kraken-cluster")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    })
}

fn harness_paths(deps: &Deps, root: &Path, image: &Path, bin: &Path) -> Vec<std::ffi::OsString> {
    let path = |p: &Path| p.as_os_str().to_owned();
    vec![
        "--root".into(),
        path(root),
        "--image".into(),
        path(image),
        "--imds-bin".into(),
        path(&bin.join("kraken-fake-imds")),
        "--web-bin".into(),
        path(&bin.join("kraken-web")),
        "--moto-server".into(),
        path(&deps.moto_server),
        "--registry-bin".into(),
        path(&deps.registry),
        "--web-job".into(),
        path(&workspace_root().join("jobs/web.nomad.hcl")),
    ]
}
