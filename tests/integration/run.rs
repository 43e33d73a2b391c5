//! `kraken-agent run` end to end on one node: IMDS (the project's), EC2
//! (moto), real Consul and Nomad started through the `systemctl` seam, and
//! the systemd notify protocol read off a real socket. Also measures the
//! agent's peak RSS and EC2 calls (printed; not asserted as benchmarks).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use kraken_fake_imds::FakeImds;
use kraken_hashi::{Consul, Nomad};
use kraken_testkit::{LoopbackAddrs, Moto, TestDir, consul_bin, nomad_bin};

/// Kills whatever the shim started, whatever happens to the test.
struct Units(std::path::PathBuf);

impl Drop for Units {
    fn drop(&mut self) {
        for unit in ["consul.service", "nomad.service"] {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(format!("{unit}.pid"))) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .status();
            }
        }
    }
}

fn settings(ip: std::net::Ipv4Addr, dir: &Path) -> String {
    format!(
        r#"
[paths]
consul_config_dir = "{d}/consul.d"
nomad_config_dir = "{d}/nomad.d"
docker_daemon_json = "{d}/docker/daemon.json"
consul_data_dir = "{d}/consul-data"
nomad_data_dir = "{d}/nomad-data"
status_dir = "{d}/run"

[consul]
http_addr = "http://{ip}:8500"
client_addr = "{ip}"
user = "root"
group = "root"

[nomad]
http_addr = "http://{ip}:4646"
bind_addr = "{ip}"

[discovery]
refresh_secs = 2
retry_min_secs = 1
retry_max_secs = 2

[start]
systemctl = "{shim}"
answer_timeout_secs = 60
leader_timeout_secs = 120
"#,
        d = dir.display(),
        shim = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/integration/systemctl-shim.sh")
            .display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_converges_reports_ready_and_stops_on_sigterm() {
    let ip = LoopbackAddrs::allocate(1)[0];
    let [_, b, c, _] = ip.octets();
    let moto = Moto::start().await;
    let ec2 = ec2(&moto.endpoint()).await;
    let subnet = loopback_subnet(&ec2, b, c).await;
    let node_tags = tags(&[
        ("kraken:cluster", "solo"),
        ("kraken:roles", "consul-server,nomad-server"),
        ("kraken:consul-servers", "1"),
        ("kraken:nomad-servers", "1"),
    ]);
    let (id, launched_ip) = launch(&ec2, &node_tags, Some((&subnet, ip))).await;
    assert_eq!(launched_ip, ip);
    let imds = FakeImds::start(
        "127.0.0.1:0".parse().unwrap(),
        instance_data(&id, ip, node_tags),
    )
    .await
    .unwrap();

    let dir = TestDir::new("run");
    let _units = Units(dir.path().to_owned());
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, settings(ip, dir.path())).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();

    // Short IMDS timeouts so the outage below costs seconds, not minutes.
    std::fs::write(
        &config,
        format!(
            "{}\n[imds]\nconnect_timeout_ms = 300\nread_timeout_ms = 500\nattempts = 1\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(agent_bin());
    AwsEnv::new(&moto.endpoint(), &imds.endpoint()).apply(&mut cmd);
    cmd.env("KRAKEN_CONFIG", &config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("KRAKEN_SHIM_DIR", dir.path())
        .env(
            "KRAKEN_SHIM_consul_service",
            format!(
                "{} agent -config-dir={}/consul.d",
                consul_bin().display(),
                dir.path().display()
            ),
        )
        .env(
            "KRAKEN_SHIM_nomad_service",
            format!(
                "env -u AWS_CA_BUNDLE {} agent -config={}/nomad.d",
                nomad_bin().display(),
                dir.path().display()
            ),
        )
        .arg("run")
        .stdout(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("agent.err")).unwrap());
    let started = Instant::now();
    // IMDS answers nothing for the first seconds of boot: run must wait
    // it out and converge, not exit.
    imds.set_hang(true);
    let mut child = tokio::process::Command::from(cmd).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    imds.set_hang(false);
    let pid = child.id().unwrap();

    let mut messages = Vec::new();
    let mut buf = vec![0u8; 4096];
    let ready = tokio::time::timeout(Duration::from_secs(240), async {
        loop {
            let n = notify.recv(&mut buf).await.unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == "READY=1");
            messages.push(msg);
            if done {
                break;
            }
        }
    })
    .await;
    let log = || std::fs::read_to_string(dir.path().join("agent.err")).unwrap_or_default();
    assert!(
        ready.is_ok(),
        "no READY=1; messages {messages:?}\n{}",
        log()
    );
    let ready_after = started.elapsed();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("STATUS=discovering the servers")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("instance metadata service unreachable") && m.contains("retrying")),
        "the IMDS outage was reported and retried: {messages:?}"
    );

    // What READY=1 promises: both services have a leader.
    let consul = Consul::new(&format!("http://{ip}:8500"), None).unwrap();
    let nomad = Nomad::new(&format!("http://{ip}:4646"), None).unwrap();
    assert!(consul.leader().await.unwrap().is_some());
    assert!(nomad.leader().await.unwrap().is_some());

    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/status.json")).unwrap())
            .unwrap();
    assert_eq!(status["phase"], "converged", "{status}");
    assert_eq!(status["ec2_api_calls"], 1, "{status}");
    assert_eq!(status["steps"]["identity"]["instance_id"], id.as_str());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("consul.d/consul.hcl"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o640);

    // Keep running a few watch rounds, then read the peak RSS.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = proc_status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .to_owned();
    let calls_after_watch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/status.json")).unwrap())
            .unwrap();
    eprintln!(
        "benchmark: run READY=1 after {ready_after:?}; peak RSS {hwm}; EC2 calls at ready 1, after watch {}",
        calls_after_watch["ec2_api_calls"]
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{}", log());
    // Every secret the cluster has, straight from the store, appears in
    // no log line and no status message.
    let secrets = all_secrets(&moto.endpoint()).await;
    assert!(
        secrets.len() >= 6,
        "gossip key, 4 Consul tokens, Nomad's: {}",
        secrets.len()
    );
    let everything = format!(
        "{}{}{messages:?}",
        log(),
        std::fs::read_to_string(dir.path().join("run/status.json")).unwrap()
    );
    for secret in &secrets {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret reached the logs"
        );
    }

    // ACLs are enforced, and the bootstrap tokens work.
    let http = kraken_testkit::http_client();
    let anonymous = http
        .get(format!(
            "http://{ip}:8500/v1/kv/kraken/solo/bootstrap/state"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403, "anonymous KV read must be denied");
    let consul_hcl = std::fs::read_to_string(dir.path().join("consul.d/consul.hcl")).unwrap();
    assert!(
        consul_hcl.contains("    agent = \""),
        "agent token installed"
    );
    assert!(consul_hcl.contains("encrypt = \""), "gossip encryption on");
    let nomad_hcl = std::fs::read_to_string(dir.path().join("nomad.d/nomad.hcl")).unwrap();
    assert!(
        nomad_hcl.contains("  token   = \""),
        "Nomad's Consul token installed"
    );
    assert_eq!(nomad.nodes().await.unwrap_err().status(), Some(403));
    let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    assert!(
        calls.contains("restart --no-block consul.service"),
        "{calls}"
    );
    assert!(
        calls.contains("restart --no-block nomad.service"),
        "{calls}"
    );
}

/// Every parameter value moto's SSM holds, decrypted.
async fn all_secrets(endpoint: &str) -> Vec<String> {
    let conf = aws_sdk_ssm::config::Builder::new()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    let ssm = aws_sdk_ssm::Client::from_conf(conf);
    let out = ssm
        .get_parameters_by_path()
        .path("/kraken")
        .recursive(true)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    out.parameters()
        .iter()
        .filter_map(|p| p.value().map(str::to_owned))
        .collect()
}
