//! Step 8 of the boot flow: tell systemd and people what this node did.
//!
//! `READY=1` once the node has converged, `STATUS=` lines while it works,
//! watchdog pings while it runs (when the unit sets `WatchdogSec=`), and a
//! JSON status file under `/run/kraken/` that `doctor` reads.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sd_notify::NotifyState;
use serde::{Deserialize, Serialize};

/// Talks to systemd's notify socket; a no-op when not run by systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    quiet: bool,
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier {
            quiet: std::env::var_os("NOTIFY_SOCKET").is_none(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.quiet {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            log::warn!("cannot notify systemd: {e}");
        }
    }

    pub fn status(&self, text: &str) {
        log::info!("{text}");
        self.send(&[NotifyState::Status(text)]);
    }

    pub fn ready(&self, text: &str) {
        log::info!("ready: {text}");
        self.send(&[NotifyState::Ready, NotifyState::Status(text)]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Pings the watchdog at half its period for as long as the returned
    /// task lives. `None` when the unit has no watchdog.
    pub fn spawn_watchdog(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.quiet {
            return None;
        }
        let period = sd_notify::watchdog_enabled().filter(|d| !d.is_zero())? / 2;
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                me.send(&[NotifyState::Watchdog]);
                tokio::time::sleep(period).await;
            }
        }))
    }
}

/// What `run` has done, as `doctor` and people read it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub agent_version: String,
    pub pid: u32,
    /// "starting", "waiting", "converged", "failed".
    pub phase: String,
    pub message: String,
    pub updated_unix: u64,
    pub converged_unix: Option<u64>,
    /// Free-form detail of each step: identity, intent, discovery, render,
    /// start.
    #[serde(default)]
    pub steps: serde_json::Map<String, serde_json::Value>,
    pub ec2_api_calls: u64,
    pub last_error: Option<String>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The status file, rewritten atomically on every change.
#[derive(Debug, Clone)]
pub struct StatusFile {
    path: PathBuf,
}

impl StatusFile {
    pub const NAME: &'static str = "status.json";

    pub fn new(dir: &Path) -> StatusFile {
        StatusFile {
            path: dir.join(Self::NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the status; a failure is logged, never fatal: the node's
    /// services matter more than its report.
    pub fn write(&self, status: &mut Status) {
        status.updated_unix = now_unix();
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("json.tmp");
            let body = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, body)?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            log::warn!("cannot write status file {}: {e}", self.path.display());
        }
    }

    pub fn read(&self) -> std::io::Result<Status> {
        let text = std::fs::read(&self.path)?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }
}
