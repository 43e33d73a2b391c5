//! Consul and Nomad, built from their Go modules with the local Go
//! toolchain; a build stamp skips the build when nothing changed.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::xtask_dir;
use crate::process::{capture, run_logged};

const CONSUL_VERSION: &str = "1.22.5";
const NOMAD_VERSION: &str = "1.11.1";
const REGISTRY_VERSION: &str = "0.22.1";

pub struct GoPeer {
    pub name: &'static str,
    module: &'static str,
    pub version: &'static str,
    /// Nomad needs cgo: runc's libcontainer (nsenter, user-namespace maps),
    /// which its exec driver links, has no pure-Go build. Consul is pure Go,
    /// and a static binary is one less thing to break on another machine.
    cgo: bool,
    /// What a build from an empty Go cache took in a cold `.ci/run`
    /// (2 cores, shared with cargo), for the log.
    cold_build: &'static str,
}

pub const GO_PEERS: [GoPeer; 3] = [
    GoPeer {
        name: "consul",
        module: "github.com/hashicorp/consul",
        version: CONSUL_VERSION,
        cgo: false,
        cold_build: "about 10 minutes beside the Rust build",
    },
    GoPeer {
        name: "nomad",
        module: "github.com/hashicorp/nomad",
        version: NOMAD_VERSION,
        cgo: true,
        cold_build: "about 8 minutes beside the Rust build",
    },
    // The VM cluster's container registry (a warm pool's image pulls):
    // go-containerregistry's registry behind TLS, see peers/registry/main.go.
    GoPeer {
        name: "registry",
        module: "github.com/google/go-containerregistry",
        version: REGISTRY_VERSION,
        cgo: false,
        cold_build: "under a minute",
    },
];

pub fn version(cache: &Path) -> Result<String> {
    let mut cmd = Command::new("go");
    cmd.args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .current_dir(cache);
    let version = capture(&mut cmd)?;
    eprintln!("xtask: using {version}");
    Ok(version)
}

pub fn build(cache: &Path, go_version: &str, peer: &GoPeer) -> Result<PathBuf> {
    let src = xtask_dir().join("peers").join(peer.name);
    check_pin(&src, peer)?;
    let file_name = format!("{}-{}", peer.name, peer.version);
    let out = cache.join("bin").join(&file_name);
    let stamp_path = cache.join("bin").join(format!("{file_name}.stamp"));
    let stamp = build_stamp(&src, go_version, peer)?;
    if out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        eprintln!("xtask: {} is up to date", out.display());
        return Ok(out);
    }

    let dir = cache.join("build").join(peer.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    for file in wrapper_files(&src)? {
        fs::copy(&file, dir.join(file.file_name().unwrap()))?;
    }

    let logs = cache.join("logs");
    let tidy = |dir: &Path| -> Result<()> {
        eprintln!(
            "xtask: {}: go mod tidy -e (resolves and hashes every dependency)",
            peer.name
        );
        run_logged(
            go_cmd(cache, peer, dir).args(["mod", "tidy", "-e"]),
            &logs.join(format!("{}-tidy.log", peer.name)),
        )
    };
    let tmp = cache.join("bin").join(format!(".{file_name}.tmp"));
    let build_log = logs.join(format!("{}-build.log", peer.name));
    let build = |dir: &Path| -> Result<()> {
        eprintln!("xtask: {}: go build (cold: {})", peer.name, peer.cold_build);
        run_logged(
            go_cmd(cache, peer, dir)
                .args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
                .arg(&tmp)
                .arg("."),
            &build_log,
        )
    };

    // No tidy up front, even without a go.sum: `go build -mod=mod` settles
    // the module graph from go.mod alone (minimal version selection, the
    // same result every time) and records exactly the hashes it used. `go mod
    // tidy -e` is not reproducible here: it resolves a test-only import deep
    // in Nomad's dependencies at whatever is latest that day, which upgrades
    // dozens of modules. It stays as the fallback for a go.sum the build
    // cannot work with.
    if let Err(e) = build(&dir) {
        let log = fs::read_to_string(&build_log).unwrap_or_default();
        let sum_problem = [
            "missing go.sum entry",
            "go mod tidy",
            "updates to go.mod needed",
        ]
        .iter()
        .any(|needle| log.contains(needle));
        if !sum_problem {
            return Err(e);
        }
        eprintln!(
            "xtask: {}: go.sum is incomplete; tidying and building again",
            peer.name
        );
        tidy(&dir)?;
        build(&dir)?;
    }

    let built_sum = fs::read(dir.join("go.sum")).unwrap_or_default();
    let repo_sum_path = src.join("go.sum");
    if !built_sum.is_empty() && fs::read(&repo_sum_path).ok() != Some(built_sum.clone()) {
        fs::write(&repo_sum_path, &built_sum)?;
        eprintln!(
            "xtask: wrote {} — commit it: it pins and verifies the peer's dependencies",
            repo_sum_path.display()
        );
    }
    fs::rename(&tmp, &out)?;
    // After the go.sum copy-back, so the next run sees the same inputs.
    fs::write(&stamp_path, build_stamp(&src, go_version, peer)?)?;
    Ok(out)
}

fn go_cmd(cache: &Path, peer: &GoPeer, dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(dir)
        .env("GOMODCACHE", cache.join("go/mod"))
        .env("GOCACHE", cache.join("go/build"))
        // -modcacherw: Go makes the module cache read-only by default, which
        // turns `rm -rf ~/.cache/kraken` into a chmod puzzle.
        .env("GOFLAGS", "-mod=mod -modcacherw -buildvcs=false")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", if peer.cgo { "1" } else { "0" });
    cmd
}

/// The constants here are what tests and docs quote; the go.mod is what gets
/// built. Refuse to let them drift apart silently.
fn check_pin(src: &Path, peer: &GoPeer) -> Result<()> {
    let go_mod = fs::read_to_string(src.join("go.mod"))
        .with_context(|| format!("cannot read {}/go.mod", src.display()))?;
    let pin = format!("{} v{}", peer.module, peer.version);
    if !go_mod.lines().any(|l| l.trim() == pin) {
        bail!(
            "{}/go.mod does not require `{pin}`: update the version constant in xtask or the go.mod",
            src.display()
        );
    }
    Ok(())
}

fn wrapper_files(src: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn build_stamp(src: &Path, go_version: &str, peer: &GoPeer) -> Result<String> {
    let mut hash = Fnv::default();
    for file in wrapper_files(src)? {
        hash.write(file.file_name().unwrap().as_encoded_bytes());
        hash.write(&[0]);
        hash.write(&fs::read(&file)?);
        hash.write(&[0]);
    }
    Ok(format!(
        "wrapper={:016x} {go_version} cgo={} ldflags=-s-w\n",
        hash.0, peer.cgo as u8
    ))
}

/// FNV-1a: enough to notice a changed input, and stable across Rust releases
/// (std's DefaultHasher is not).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
