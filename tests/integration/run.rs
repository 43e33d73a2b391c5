//! `kraken-agent run` end to end on one node (see `common::node`). Also
//! measures the agent's peak RSS and EC2 calls (printed; not asserted as
//! benchmarks).

use std::time::Duration;

use crate::common::node::{agent_log, boot};
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_converges_reports_ready_and_stops_on_sigterm() {
    // IMDS answers nothing for the first seconds of boot: run must wait it
    // out and converge, not exit.
    let mut node = boot(Duration::from_secs(4)).await;
    let (id, dir, messages) = (
        node.id.clone(),
        node.dir.path().to_owned(),
        node.messages.clone(),
    );
    let ready_after = node.ready_after;
    let pid = node.child.id().unwrap();
    let log = || agent_log(&dir);
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
    let consul = node.consul(None);
    let nomad = node.nomad(None);
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
    // The test node's Consul runs as root:root: no group read (private_mode).
    assert_eq!(mode & 0o777, 0o600);

    // Keep running a few watch rounds, then read the peak RSS.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = proc_status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .to_owned();
    // The Consul leader's agent (this one) published the servers for
    // booting clients, from what Consul knows.
    let ssm = aws_sdk_ssm::Client::new(&sdk_for(&node.moto.endpoint(), TEST_KEY).await);
    let list = ssm
        .get_parameter()
        .name("/kraken/solo/servers")
        .with_decryption(true)
        .send()
        .await
        .expect("the server list is published");
    let list: kraken_agent::steps::published::Published =
        serde_json::from_str(list.parameter().unwrap().value().unwrap()).unwrap();
    assert!(list.consul_servers.contains(&node.ip), "{list:?}");
    assert!(list.instances.contains(&node.id), "{list:?}");
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
        secrets.len() >= 12,
        "2 gossip keys, 4 Consul tokens, Nomad's, the CA and 4 intermediates: {}",
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
        // A CA bundle's key on its own, too.
        if let Some(at) = secret.find("-----BEGIN PRIVATE KEY-----") {
            assert!(
                !everything.contains(&secret[at..]),
                "a CA key reached the logs"
            );
        }
    }

    // ACLs are enforced, and the bootstrap tokens work.
    let anonymous = consul
        .kv_get("kraken/solo/bootstrap/state", None)
        .await
        .unwrap_err();
    assert_eq!(
        anonymous.status(),
        Some(403),
        "anonymous KV read must be denied"
    );
    let consul_hcl = std::fs::read_to_string(dir.join("consul.d/consul.hcl")).unwrap();
    assert!(
        consul_hcl.contains("    agent = \""),
        "agent token installed"
    );
    assert!(consul_hcl.contains("encrypt = \""), "gossip encryption on");
    let nomad_hcl = std::fs::read_to_string(dir.join("nomad.d/nomad.hcl")).unwrap();
    assert!(
        nomad_hcl.contains("  encrypt = \""),
        "Nomad gossip encryption on"
    );
    assert!(
        nomad_hcl.contains("verify_https_client    = true"),
        "Nomad mTLS on"
    );
    assert!(
        nomad_hcl.contains("  token   = \""),
        "Nomad's Consul token installed"
    );
    assert_eq!(nomad.nodes().await.unwrap_err().status(), Some(403));
    // Each service started once: Consul took its agent token by reload,
    // Nomad started only once its Consul token existed.
    let calls = std::fs::read_to_string(dir.join("calls.log")).unwrap();
    assert!(!calls.contains("restart"), "{calls}");
    assert_eq!(
        calls.matches("start --no-block consul.service").count(),
        1,
        "{calls}"
    );
    assert_eq!(
        calls.matches("start --no-block nomad.service").count(),
        1,
        "{calls}"
    );
    assert!(calls.contains("reload consul.service"), "{calls}");
}

/// Every parameter value moto's SSM holds, decrypted.
async fn all_secrets(endpoint: &str) -> Vec<String> {
    let ssm = aws_sdk_ssm::Client::new(&sdk_for(endpoint, TEST_KEY).await);
    let mut values = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let out = ssm
            .get_parameters_by_path()
            .path("/kraken")
            .recursive(true)
            .with_decryption(true)
            .set_next_token(next)
            .send()
            .await
            .unwrap();
        // The published server list is not a secret.
        values.extend(
            out.parameters()
                .iter()
                .filter(|p| !p.name().is_some_and(|n| n.ends_with("/servers")))
                .filter_map(|p| p.value().map(str::to_owned)),
        );
        next = out.next_token().map(str::to_owned);
        if next.is_none() {
            return values;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_failed_once_is_made_by_the_next_converge() {
    let mut node = boot(Duration::ZERO).await;
    let dir = node.dir.path().to_owned();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let consul_pid = read("consul.service.pid");

    // A change only a restart applies (a template override with another
    // log level), and a systemctl that fails that restart once.
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let embedded = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../render/templates/consul.hcl.hbs"),
    )
    .unwrap();
    assert!(embedded.contains("log_level      = \"INFO\""));
    std::fs::write(
        templates.join("consul.hcl.hbs"),
        embedded.replace("log_level      = \"INFO\"", "log_level      = \"DEBUG\""),
    )
    .unwrap();
    let config = read("agent.toml").replacen(
        "[paths]\n",
        &format!("[paths]\ntemplates_dir = \"{}\"\n", templates.display()),
        1,
    );
    std::fs::write(dir.join("agent.toml"), config).unwrap();
    std::fs::write(dir.join("fail-once-restart-consul.service"), "").unwrap();
    let calls_before = read("calls.log").len();

    // The first converge writes the config and fails to restart; the file
    // is current from then on, and the next converge still restarts.
    node.restart_agent(Duration::from_secs(240)).await;
    assert!(!dir.join("fail-once-restart-consul.service").exists());
    let calls = read("calls.log")[calls_before..].to_owned();
    assert_eq!(
        calls.matches("restart --no-block consul.service").count(),
        2,
        "{calls}"
    );
    assert!(read("consul.d/consul.hcl").contains("log_level      = \"DEBUG\""));
    assert_ne!(read("consul.service.pid"), consul_pid, "Consul restarted");
    assert!(
        read("consul.service.log").contains("[DEBUG]"),
        "the running Consul has the new config"
    );
    assert!(node.log().contains("fail-once"), "{}", node.log());
    // A second restart of the agent, with nothing changed, touches nothing.
    let calls_before = read("calls.log").len();
    let consul_pid = read("consul.service.pid");
    node.restart_agent(Duration::from_secs(120)).await;
    let calls = read("calls.log")[calls_before..].to_owned();
    assert!(!calls.contains("restart"), "{calls}");
    assert!(!calls.contains("reload"), "{calls}");
    assert_eq!(read("consul.service.pid"), consul_pid);
}
