use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Lines of a peer's log printed when a test panics.
const PANIC_TAIL_LINES: usize = 60;

/// Path of the consul binary from `CONSUL_BIN`; panics when it is unusable.
pub fn consul_bin() -> PathBuf {
    peer_bin("CONSUL_BIN")
}

/// Path of the nomad binary from `NOMAD_BIN`; panics when it is unusable.
pub fn nomad_bin() -> PathBuf {
    peer_bin("NOMAD_BIN")
}

/// Path of moto's `moto_server` from `MOTO_SERVER`; panics when it is unusable.
pub fn moto_server() -> PathBuf {
    peer_bin("MOTO_SERVER")
}

fn peer_bin(var: &str) -> PathBuf {
    resolve_bin(var, std::env::var_os(var))
}

fn resolve_bin(var: &str, value: Option<OsString>) -> PathBuf {
    const HOW: &str =
        "run `eval \"$(cargo xtask deps)\"` first, or run the tests with `cargo xtask test`";
    match value {
        Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
        Some(path) => panic!("{var}={} is not a file: {HOW}", Path::new(&path).display()),
        None => panic!("{var} is not set, and this test needs that real peer: {HOW}"),
    }
}

/// How to start a [`Peer`]: program, arguments, environment and working dir.
#[derive(Debug, Clone)]
pub struct PeerCommand {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    cwd: PathBuf,
}

impl PeerCommand {
    /// `name` labels the peer in messages and names its log, `<cwd>/<name>.log`.
    pub fn new(name: &str, program: impl AsRef<OsStr>, cwd: &Path) -> PeerCommand {
        PeerCommand {
            name: name.to_string(),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            cwd: cwd.to_path_buf(),
        }
    }

    /// `consul` from `CONSUL_BIN`.
    pub fn consul(name: &str, cwd: &Path) -> PeerCommand {
        PeerCommand::new(name, consul_bin(), cwd)
    }

    /// `nomad` from `NOMAD_BIN`, without `AWS_CA_BUNDLE` in its environment:
    /// with it set, a Nomad client dies at start while setting up its IMDS
    /// fingerprinter ("unable to add custom RootCAs HTTPClient").
    pub fn nomad(name: &str, cwd: &Path) -> PeerCommand {
        PeerCommand::new(name, nomad_bin(), cwd).env_remove("AWS_CA_BUNDLE")
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(key.as_ref().to_owned());
        self
    }

    pub fn log_path(&self) -> PathBuf {
        self.cwd.join(format!("{}.log", self.name))
    }

    /// Starts the process in a process group of its own, stdout and stderr
    /// appended to its log. Panics if it cannot be started.
    pub fn spawn(&self) -> Peer {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(clone(&log, &log_path))
            .stderr(clone(&log, &log_path))
            // Its own group, so the whole group can be signalled without
            // touching the test process.
            .process_group(0);
        for key in &self.env_remove {
            cmd.env_remove(key);
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        // A restarted peer appends to the same log: mark where each run begins.
        let _ = writeln!(
            log,
            "=== kraken-testkit: starting {} {}",
            self.program.to_string_lossy(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({}): {e}",
                self.name,
                Path::new(&self.program).display()
            )
        });
        Peer {
            name: self.name.clone(),
            log: log_path,
            child: Some(child),
            status: None,
        }
    }
}

fn clone(log: &File, path: &Path) -> File {
    log.try_clone()
        .unwrap_or_else(|e| panic!("cannot reopen {}: {e}", path.display()))
}

/// A running peer process. Dropping it kills the process, its process group
/// and every process it started, including those that moved to a session of
/// their own (Nomad's executors and the tasks under them do).
#[derive(Debug)]
pub struct Peer {
    name: String,
    log: PathBuf,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Peer {
    /// Shorthand for [`PeerCommand`]: `Peer::spawn("consul", consul_bin(),
    /// ["agent", "-config-file", "consul.hcl"], &[], dir)`.
    pub fn spawn<I, S>(
        name: &str,
        program: impl AsRef<OsStr>,
        args: I,
        env: &[(&str, &str)],
        cwd: &Path,
    ) -> Peer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = PeerCommand::new(name, program, cwd).args(args);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        cmd.spawn()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, which is also its process group id; `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the peer's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole log, for tests that assert on what the peer said.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The exit status, if the process has exited (or was stopped).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_status().is_none()
    }

    /// An error carrying the exit status and the log's tail if the process
    /// has exited; waits use it to fail at once instead of timing out.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            anyhow::bail!("{} was stopped", self.name);
        }
        match self.try_status() {
            None => Ok(()),
            Some(status) => anyhow::bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(PANIC_TAIL_LINES)
            ),
        }
    }

    /// Waits for the process to exit by itself, e.g. a command expected to fail.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("{} still running after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to the group, then SIGKILL to everything left after `grace`:
    /// a clean shutdown, for tests of what a peer does when it leaves.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let pid = self.pid()?;
        if self.try_status().is_none() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let _ = self.wait_exit(grace).await;
        }
        self.kill()
    }

    /// Kills the process, its group and all its descendants (a crash, as far
    /// as the peer's cluster can tell) and reaps it. Idempotent.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        kill_tree(child.id() as i32);
        let status = self.status.or_else(|| child.wait().ok());
        self.status = status;
        status
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- kraken-testkit: last {PANIC_TAIL_LINES} lines of {} ({}) -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(PANIC_TAIL_LINES),
                self.name
            );
        }
    }
}

/// Stops the whole tree first so nothing forks or reparents while it is
/// collected, then kills it. The group signal covers the common case; the
/// /proc walk catches processes that left the group (setsid).
fn kill_tree(root: i32) {
    let _ = killpg(Pid::from_raw(root), Signal::SIGSTOP);
    let mut stopped: HashSet<i32> = HashSet::from([root]);
    for _ in 0..10 {
        let new: Vec<i32> = descendants(root)
            .into_iter()
            .filter(|pid| !stopped.contains(pid))
            .collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            stopped.insert(pid);
        }
    }
    let _ = killpg(Pid::from_raw(root), Signal::SIGKILL);
    for pid in stopped {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may contain spaces and ')'.
            let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            out.push(child);
            queue.push(child);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(
        expected = "CONSUL_BIN is not set, and this test needs that real peer: run `eval \"$(cargo xtask deps)\"`"
    )]
    fn a_missing_peer_fails_the_test() {
        resolve_bin("CONSUL_BIN", None);
    }

    #[test]
    #[should_panic(expected = "NOMAD_BIN=/nonexistent/nomad is not a file")]
    fn a_wrong_peer_path_fails_the_test() {
        resolve_bin("NOMAD_BIN", Some("/nonexistent/nomad".into()));
    }
}
