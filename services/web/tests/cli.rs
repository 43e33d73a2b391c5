//! The `kraken-web` binary as Nomad runs it: settings from the environment,
//! refusal without an allocation id, a clean exit on SIGINT and SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The binary with none of Nomad's variables inherited from whoever runs
/// the tests.
fn web() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kraken-web"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NOMAD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// Its stderr: the lines read so far, and the rest as the process writes them.
struct Stderr {
    seen: Vec<String>,
    rest: mpsc::Receiver<String>,
}

impl Stderr {
    /// Every line, once the process has exited and closed its stderr.
    fn all(self) -> Vec<String> {
        self.seen.into_iter().chain(self.rest.iter()).collect()
    }
}

/// A started kraken-web, killed and reaped on drop: a failed assertion
/// leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and returns it with the address it logged it listens on.
/// Its stderr keeps being drained in the background, so it never blocks.
fn start(mut cmd: Command) -> (Running, SocketAddr, Stderr) {
    let mut child = Running(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kraken-web"),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let addr = line
                    .split_once("listening on ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .map(|a| a.parse::<SocketAddr>().unwrap());
                seen.push(line);
                if let Some(addr) = addr {
                    return (child, addr, Stderr { seen, rest: rx });
                }
            }
            Err(_) => {
                panic!("kraken-web did not say where it listens; stderr:\n{seen:#?}");
            }
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
}

fn wait_exit(child: &mut Running) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            panic!("kraken-web still running 10 s after the stop signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn refuses_to_start_without_an_alloc_id() {
    let out = web()
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run kraken-web");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("NOMAD_ALLOC_ID is not set") && stderr.contains("--alloc-id"),
        "stderr: {stderr}"
    );
}

#[test]
fn refuses_to_start_without_an_address() {
    let out = web()
        .env("NOMAD_ALLOC_ID", "a")
        .output()
        .expect("run kraken-web");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("NOMAD_PORT_http"), "stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_nomads_address_and_stops_on_sigint() {
    let mut cmd = web();
    // Port 0: the kernel picks, the log says which. A `--listen` is given
    // too, to show Nomad's variables win over it.
    cmd.env("NOMAD_ALLOC_ID", "9d3c2b1a-aaaa-4bbb-8ccc-000000000042")
        .env("NOMAD_IP_http", "127.0.0.1")
        .env("NOMAD_PORT_http", "0")
        .args(["--listen", "127.0.0.2:1"]);
    let (mut child, addr, log) = start(cmd);
    assert_eq!(addr.ip().to_string(), "127.0.0.1");

    let resp = get(addr, "/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"alloc_id": "9d3c2b1a-aaaa-4bbb-8ccc-000000000042", "status": "ok"})
    );
    assert_eq!(get(addr, "/health").await.status(), 200);

    // Nomad's raw_exec stops a task with SIGINT.
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGINT).unwrap();
    let status = wait_exit(&mut child);
    let lines = log.all();
    assert!(status.success(), "{status}; stderr: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("--listen ignored")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("SIGINT: stopping")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_by_hand_and_stops_on_sigterm() {
    let mut cmd = web();
    cmd.args(["--listen", "127.0.0.1:0", "--alloc-id", "by-hand"]);
    let (mut child, addr, log) = start(cmd);

    let body: serde_json::Value = get(addr, "/").await.json().await.unwrap();
    assert_eq!(body["alloc_id"], "by-hand");

    // Docker stops a container with SIGTERM.
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child);
    let lines = log.all();
    assert!(status.success(), "{status}; stderr: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM: stopping")),
        "{lines:#?}"
    );
}
