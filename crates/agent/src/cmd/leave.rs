//! `kraken-agent leave`: the node leaves the cluster now, the way it does
//! when its group terminates it (`steps::lifecycle::leave`). A person runs
//! it, or `kraken-leave.service` at power-off (`--at-shutdown`): that unit
//! is stopped before Consul, Nomad and the agent (systemd stops in the
//! reverse of start order), so they still run while the node drains.
//!
//! When `run` is alive it does the leaving itself, asked by SIGUSR1: it
//! owns the services, and a second process stopping them would race its
//! watch loop starting them again. Without a live `run`, this process
//! leaves on its own.

use std::time::Duration;

use kraken_ready::StatusFile;
use kraken_settings::Settings;
use kraken_start::{Shutdown, Systemctl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::BootError;
use crate::steps::lifecycle::{self, Departure};

/// The phase `run` reports once it has left.
pub const LEFT: &str = "left";

pub async fn leave(settings: &Settings, at_shutdown: bool) -> Result<(), BootError> {
    let manager = Systemctl::new(&settings.start.systemctl);
    if at_shutdown {
        match manager.shutdown().await {
            None => {
                // The unit was stopped by hand or restarted: not a departure.
                log::info!("leave --at-shutdown: the machine is not shutting down; staying");
                return Ok(());
            }
            Some(Shutdown::Reboot) => {
                // A reboot comes back with its data and identity; leaving
                // would cost a server its Raft seat for a minute's absence.
                log::info!("leave --at-shutdown: a reboot; staying a member");
                return Ok(());
            }
            Some(Shutdown::PowerOff) => {
                log::warn!("leave --at-shutdown: the machine is powering off; leaving");
            }
        }
    }
    let status_file = StatusFile::new(&settings.paths.status_dir);
    if let Some(pid) = live_daemon(&status_file) {
        return through_daemon(&status_file, pid).await;
    }
    let ctx = lifecycle::Context::load(settings).await?;
    let departure = if at_shutdown {
        Departure::PowerOff
    } else {
        Departure::Requested
    };
    let report =
        lifecycle::leave::leave(&ctx, &manager, &departure, &|s: &str| log::info!("{s}")).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("serialises")
    );
    Ok(())
}

/// `run`'s pid from its status file, when that process is alive and is
/// this program (a stale file's pid may be reused by anything).
fn live_daemon(status_file: &StatusFile) -> Option<i32> {
    let status = status_file.read().ok()?;
    let pid = i32::try_from(status.pid).ok()?;
    if pid == std::process::id() as i32 || status.phase == "failed" {
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let me = std::env::current_exe().ok()?;
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_owned());
    (name(&exe) == name(&me)).then_some(pid)
}

async fn through_daemon(status_file: &StatusFile, pid: i32) -> Result<(), BootError> {
    log::info!("leave: asking the running agent (pid {pid}) to leave");
    kill(Pid::from_raw(pid), Signal::SIGUSR1).map_err(|e| {
        BootError::Leave(format!(
            "cannot signal the running agent (pid {pid}): {e}; run this as root"
        ))
    })?;
    let mut said = String::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        match status_file.read() {
            Ok(s) if s.phase == LEFT => {
                let report = s.steps.get("left").cloned().unwrap_or_default();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serialises")
                );
                return Ok(());
            }
            Ok(s) if s.message != said => {
                log::info!("agent: {}", s.message);
                said = s.message;
            }
            _ => {}
        }
        if !alive {
            return Err(BootError::Leave(format!(
                "the running agent (pid {pid}) ended before it had left; see \
                 `journalctl -u kraken-agent`, then run `kraken-agent leave` again"
            )));
        }
    }
}
