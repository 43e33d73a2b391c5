//! `kraken-agent run` end to end on one node (see `common::node`). Also
//! measures the agent's peak RSS and EC2 calls (printed; not asserted as
//! benchmarks).

mod common;

use std::time::Duration;

use common::node::boot;
use common::*;
use kraken_hashi::{Consul, Nomad};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_converges_reports_ready_and_stops_on_sigterm() {
    // IMDS answers nothing for the first seconds of boot: run must wait it
    // out and converge, not exit.
    let mut node = boot(Duration::from_secs(4)).await;
    let (ip, id, dir, messages) = (
        node.ip,
        node.id.clone(),
        node.dir.path().to_owned(),
        node.messages.clone(),
    );
    let ready_after = node.ready_after;
    let pid = node.child.id().unwrap();
    let log = || node_log(&dir);
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
        serde_json::from_slice(&std::fs::read(dir.join("run/status.json")).unwrap()).unwrap();
    assert_eq!(status["phase"], "converged", "{status}");
    assert_eq!(status["ec2_api_calls"], 1, "{status}");
    assert_eq!(status["steps"]["identity"]["instance_id"], id.as_str());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("consul.d/consul.hcl"))
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
        serde_json::from_slice(&std::fs::read(dir.join("run/status.json")).unwrap()).unwrap();
    eprintln!(
        "benchmark: run READY=1 after {ready_after:?}; peak RSS {hwm}; EC2 calls at ready 1, after watch {}",
        calls_after_watch["ec2_api_calls"]
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), node.child.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{}", log());
    // Every secret the cluster has, straight from the store, appears in
    // no log line and no status message.
    let secrets = all_secrets(&node.moto.endpoint()).await;
    assert!(
        secrets.len() >= 6,
        "gossip key, 4 Consul tokens, Nomad's: {}",
        secrets.len()
    );
    let everything = format!(
        "{}{}{messages:?}",
        log(),
        std::fs::read_to_string(dir.join("run/status.json")).unwrap()
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
    let consul_hcl = std::fs::read_to_string(dir.join("consul.d/consul.hcl")).unwrap();
    assert!(
        consul_hcl.contains("    agent = \""),
        "agent token installed"
    );
    assert!(consul_hcl.contains("encrypt = \""), "gossip encryption on");
    let nomad_hcl = std::fs::read_to_string(dir.join("nomad.d/nomad.hcl")).unwrap();
    assert!(
        nomad_hcl.contains("  token   = \""),
        "Nomad's Consul token installed"
    );
    assert_eq!(nomad.nodes().await.unwrap_err().status(), Some(403));
    let calls = std::fs::read_to_string(dir.join("calls.log")).unwrap();
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
    let ssm = aws_sdk_ssm::Client::new(&sdk_for(endpoint, TEST_KEY).await);
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

fn node_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("agent.err")).unwrap_or_default()
}
