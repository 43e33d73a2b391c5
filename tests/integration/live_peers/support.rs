//! The service manager that runs the real binaries, and a node's configs
//! rendered by the agent binary.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::node::settings;
use crate::common::*;
use kraken_start::{Deadlines, ServiceManager, StartError};
use kraken_testkit::{Peer, PeerCommand};

/// Runs each unit as a child process from the configs the agent rendered.
pub(super) struct Processes {
    commands: HashMap<String, PeerCommand>,
    pub(super) running: Mutex<HashMap<String, Peer>>,
}

impl Processes {
    pub(super) fn new(commands: Vec<(&str, PeerCommand)>) -> Processes {
        Processes {
            commands: commands
                .into_iter()
                .map(|(u, c)| (u.to_owned(), c))
                .collect(),
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl ServiceManager for Processes {
    async fn needs_daemon_reload(&self, _unit: &str) -> Result<bool, StartError> {
        Ok(false)
    }
    async fn daemon_reload(&self) -> Result<(), StartError> {
        Ok(())
    }
    async fn enable(&self, _unit: &str) -> Result<(), StartError> {
        Ok(())
    }
    async fn start(&self, unit: &str) -> Result<(), StartError> {
        let peer = self.commands[unit].spawn();
        self.running.lock().unwrap().insert(unit.to_owned(), peer);
        Ok(())
    }
    async fn restart(&self, unit: &str) -> Result<(), StartError> {
        if let Some(mut p) = self.running.lock().unwrap().remove(unit) {
            p.kill();
        }
        self.start(unit).await
    }
    async fn reload(&self, unit: &str) -> Result<(), StartError> {
        if let Some(pid) = self.running.lock().unwrap().get(unit).and_then(|p| p.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
        Ok(())
    }
    async fn main_pid(&self, unit: &str) -> Result<Option<u32>, StartError> {
        Ok(self.running.lock().unwrap().get(unit).and_then(|p| p.pid()))
    }
    async fn describe(&self, unit: &str) -> Result<kraken_start::UnitState, StartError> {
        Ok(kraken_start::UnitState {
            enabled: "enabled".into(),
            active: if self.is_active(unit).await? {
                "active"
            } else {
                "inactive"
            }
            .into(),
            recent_log: Vec::new(),
        })
    }
    async fn is_active(&self, unit: &str) -> Result<bool, StartError> {
        Ok(self
            .running
            .lock()
            .unwrap()
            .get_mut(unit)
            .is_some_and(|p| p.is_running()))
    }
}

fn node_file(
    dir: &Path,
    ip: Ipv4Addr,
    tags: &[(&str, &str)],
    consul: &[Ipv4Addr],
    nomad: &[Ipv4Addr],
) -> PathBuf {
    let list = |v: &[Ipv4Addr]| {
        v.iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tags: String = tags
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}\n"))
        .collect();
    let text = format!(
        "[identity]\ninstance_id = \"i-{:08x}\"\nregion = \"us-east-1\"\navailability_zone = \"us-east-1a\"\nprivate_ipv4 = \"{ip}\"\n\n[identity.tags]\n{tags}\n[peers]\nconsul_servers = [{}]\nnomad_servers = [{}]\n",
        u32::from(ip),
        list(consul),
        list(nomad)
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Renders one node's configs with the agent binary into their real
/// (temp) paths via `--out`, and issues its certificates from `pki` as
/// `run` would; returns the directory of the configs.
pub(super) fn render(
    dir: &Path,
    ip: Ipv4Addr,
    tags: &[(&str, &str)],
    consul: &[Ipv4Addr],
    nomad: &[Ipv4Addr],
    pki: &TestPki,
) -> PathBuf {
    let node = node_file(dir, ip, tags, consul, nomad);
    let out = dir.join("rendered");
    let result = agent(
        &AwsEnv::default(),
        &settings(ip, dir),
        &[
            "render",
            "--node",
            node.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
    );
    assert!(result.status.success(), "{}", text(&result));
    pki.issue(&node, &settings(ip, dir));
    out
}

pub(super) fn deadlines() -> Deadlines {
    Deadlines {
        answer: Duration::from_secs(60),
        leader: Duration::from_secs(120),
        poll: Duration::from_millis(250),
    }
}
