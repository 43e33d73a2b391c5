//! The real test peers: Consul, Nomad and a container registry built from
//! their published Go modules (through the wrapper modules in
//! `crates/xtask/peers`), moto installed from PyPI in a virtualenv, all in
//! the cache outside the repository. `cargo xtask deps` is this module.

mod go;
mod moto;

use anyhow::Result;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::paths::cache_dir;
use crate::process::{fmt_duration, step};

pub struct Deps {
    pub consul: PathBuf,
    pub nomad: PathBuf,
    /// The VM cluster's container registry (`peers/registry`).
    pub registry: PathBuf,
    pub moto_server: PathBuf,
}

impl Deps {
    /// The variables `deps` exports and `test` sets, in that order.
    pub fn vars(&self) -> [(&'static str, &Path); 3] {
        [
            ("CONSUL_BIN", &self.consul),
            ("NOMAD_BIN", &self.nomad),
            ("MOTO_SERVER", &self.moto_server),
        ]
    }
}

pub fn deps() -> Result<Deps> {
    let started = Instant::now();
    let cache = cache_dir()?;
    // Two shells (or a shell and CI) running deps at once would share build
    // dirs and half-written binaries.
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join(".deps.lock"))?;
    if lock.try_lock().is_err() {
        eprintln!("xtask: waiting for another `cargo xtask deps` to finish");
        lock.lock()?;
    }
    eprintln!("xtask: cache {}", cache.display());
    for sub in ["bin", "build", "logs"] {
        fs::create_dir_all(cache.join(sub))?;
    }

    // moto's install is network-bound and the Go builds CPU-bound: overlap them.
    let (go_result, moto_result) = std::thread::scope(|s| {
        let moto = s.spawn(|| step("moto: install", || moto::install(&cache)));
        let go = (|| -> Result<Vec<PathBuf>> {
            let go_version = step("go: version", || go::version(&cache))?;
            go::GO_PEERS
                .iter()
                .map(|peer| {
                    step(&format!("{}: build {}", peer.name, peer.version), || {
                        go::build(&cache, &go_version, peer)
                    })
                })
                .collect()
        })();
        let moto = moto
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("moto install thread panicked")));
        (go, moto)
    });
    let bins = go_result?;
    let moto_server = moto_result?;
    eprintln!("xtask: deps ready in {}", fmt_duration(started.elapsed()));
    Ok(Deps {
        consul: bins[0].clone(),
        nomad: bins[1].clone(),
        registry: bins[2].clone(),
        moto_server,
    })
}
