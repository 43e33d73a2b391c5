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

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    use super::*;

    /// Set in a child process that runs one notifier test alone: the
    /// notifier reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the process
    /// environment, which a test must not change in the shared test process.
    const CHILD: &str = "KRAKEN_READY_TEST_CHILD";

    /// Runs `test` of this binary alone in a child process whose environment
    /// has `set` and lacks `unset`; fails with its output if it fails.
    fn run_in_child(test: &str, set: &[(&str, &OsStr)], unset: &[&str]) {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([test, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD, "1");
        for key in unset {
            cmd.env_remove(key);
        }
        for (key, value) in set {
            cmd.env(key, value);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{test} in a child process: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn block_on(f: impl Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f);
    }

    #[test]
    fn the_notifier_speaks_to_the_notify_socket() {
        if std::env::var_os(CHILD).is_some() {
            // As run by systemd, with WatchdogSec= on the unit.
            block_on(async {
                let notifier = Notifier::new();
                notifier.status("discovering the servers");
                let watchdog = notifier.spawn_watchdog().expect("a watchdog");
                tokio::time::sleep(Duration::from_millis(250)).await;
                notifier.ready("converged");
                notifier.stopping();
                watchdog.abort();
            });
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // Read as they come: the socket's queue is short.
        let reader = std::thread::spawn(move || {
            let mut messages = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
                let last = msg == "STOPPING=1";
                messages.push(msg);
                if last {
                    break;
                }
            }
            messages
        });
        run_in_child(
            "tests::the_notifier_speaks_to_the_notify_socket",
            &[
                ("NOTIFY_SOCKET", path.as_os_str()),
                // 200 ms: pinged every 100 ms.
                ("WATCHDOG_USEC", OsStr::new("200000")),
            ],
            &["WATCHDOG_PID"],
        );
        let messages = reader.join().unwrap();
        let n = messages.len();
        assert!(n >= 4, "{messages:?}");
        assert_eq!(messages[0], "STATUS=discovering the servers");
        let pings = messages[1..n - 2]
            .iter()
            .filter(|m| *m == "WATCHDOG=1")
            .count();
        assert!(
            pings >= 2 && pings == n - 3,
            "pings while it runs: {messages:?}"
        );
        assert_eq!(
            messages[n - 2..],
            ["READY=1\nSTATUS=converged", "STOPPING=1"]
        );
    }

    #[test]
    fn the_notifier_is_quiet_and_keeps_no_watchdog_without_a_notify_socket() {
        if std::env::var_os(CHILD).is_some() {
            block_on(async {
                let notifier = Notifier::new();
                assert!(notifier.spawn_watchdog().is_none());
                notifier.status("discovering the servers");
                notifier.ready("converged");
                notifier.stopping();
            });
            return;
        }
        // WATCHDOG_USEC alone, as when run by hand from a unit's shell.
        run_in_child(
            "tests::the_notifier_is_quiet_and_keeps_no_watchdog_without_a_notify_socket",
            &[("WATCHDOG_USEC", OsStr::new("200000"))],
            &["NOTIFY_SOCKET", "WATCHDOG_PID"],
        );
    }

    fn status(phase: &str) -> Status {
        Status {
            agent_version: "0.1.0".into(),
            pid: 4242,
            phase: phase.into(),
            message: format!("{phase}: 3 Consul servers"),
            steps: [(
                "identity".to_owned(),
                serde_json::json!({"instance_id": "i-0abc"}),
            )]
            .into_iter()
            .collect(),
            ec2_api_calls: 2,
            ..Status::default()
        }
    }

    #[test]
    fn the_status_file_reads_back_what_was_written_in_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = StatusFile::new(&dir.path().join("run/kraken"));
        assert_eq!(file.path(), dir.path().join("run/kraken/status.json"));
        let mut written = status("converged");
        let before = now_unix();
        file.write(&mut written);
        assert!(
            (before..=now_unix()).contains(&written.updated_unix),
            "write stamps the time: {}",
            written.updated_unix
        );
        assert_eq!(file.read().unwrap(), written);
    }

    #[test]
    fn the_status_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = StatusFile::new(dir.path());
        file.write(&mut status("waiting"));
        let before = std::fs::metadata(file.path()).unwrap().ino();
        // A reader that opened the old file keeps reading all of it.
        let mut opened = std::fs::File::open(file.path()).unwrap();
        file.write(&mut status("converged"));
        let old: Status = serde_json::from_reader(&mut opened).unwrap();
        assert_eq!(old.phase, "waiting");
        assert_eq!(file.read().unwrap().phase, "converged");
        assert_ne!(
            std::fs::metadata(file.path()).unwrap().ino(),
            before,
            "renamed into place, not rewritten"
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["status.json"], "no temporary file left");
    }

    #[test]
    fn a_status_file_that_cannot_be_written_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("run");
        std::fs::write(&not_a_dir, "a file where the directory should be").unwrap();
        let file = StatusFile::new(&not_a_dir);
        file.write(&mut status("converged"));
        assert!(file.read().is_err());
        assert_eq!(
            std::fs::read_to_string(&not_a_dir).unwrap(),
            "a file where the directory should be"
        );
    }

    #[test]
    fn a_missing_or_broken_status_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = StatusFile::new(dir.path());
        assert_eq!(
            file.read().unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        std::fs::write(file.path(), "{\"phase\": ").unwrap();
        assert!(file.read().is_err());
    }

    #[test]
    fn a_status_without_steps_reads() {
        let file: Status = serde_json::from_str(
            r#"{"agent_version":"0.1.0","pid":1,"phase":"starting","message":"",
                "updated_unix":1700000000,"converged_unix":null,"ec2_api_calls":0,
                "last_error":null}"#,
        )
        .unwrap();
        assert!(file.steps.is_empty());
        assert_eq!(file.phase, "starting");
    }
}
