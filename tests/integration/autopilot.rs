//! Autopilot's settings in Raft, kept at the topology's by the running
//! agent: a cluster first bootstrapped by an older agent (whose configs had
//! no `autopilot` block), or changed by a person, gets `CleanupDeadServers`
//! and `MinQuorum` back through the operator API, on Consul and on Nomad.

use std::time::Duration;

use crate::common::node::boot_as;
use kraken_hashi::Token;
use kraken_secrets::{SecretStore, names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_settings_changed_in_raft_are_brought_back_by_the_running_agent() {
    let node = boot_as(
        "consul-server,nomad-server",
        Duration::ZERO,
        "\n[bootstrap]\ntoken_check_secs = 2\n\n[docker]\nenabled = false\n",
    )
    .await;
    let store = node.store().await;
    let secret = |name: &'static str| {
        let store = &store;
        async move { Token::new(store.get(name).await.unwrap().expect(name).expose()) }
    };
    let consul = node.consul(Some(secret(names::CONSUL_INITIAL_MANAGEMENT).await));
    let nomad = node.nomad(Some(secret(names::NOMAD_MANAGEMENT).await));

    // As rendered at the first bootstrap (one expected server here).
    let consul_now = consul.autopilot_config().await.unwrap();
    let nomad_now = nomad.autopilot_config().await.unwrap();
    for (system, c) in [("Consul", &consul_now), ("Nomad", &nomad_now)] {
        assert_eq!(c["CleanupDeadServers"], true, "{system}: {c}");
        assert_eq!(c["MinQuorum"], 1, "{system}: {c}");
    }

    // What an older agent's cluster has.
    let older = |c: &serde_json::Value| {
        let mut c = c.clone();
        c["CleanupDeadServers"] = false.into();
        c["MinQuorum"] = 0.into();
        c
    };
    consul
        .set_autopilot_config(&older(&consul_now))
        .await
        .unwrap();
    nomad
        .set_autopilot_config(&older(&nomad_now))
        .await
        .unwrap();
    let consul_old = consul.autopilot_config().await.unwrap();
    assert_eq!(consul_old["CleanupDeadServers"], false, "{consul_old}");

    let restored = |c: &serde_json::Value| c["CleanupDeadServers"] == true && c["MinQuorum"] == 1;
    kraken_testkit::wait_until(
        "the agent to restore both autopilot configurations",
        Duration::from_secs(60),
        || async {
            let (c, n) = (consul.autopilot_config(), nomad.autopilot_config());
            matches!((c.await, n.await), (Ok(c), Ok(n)) if restored(&c) && restored(&n))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    // The rest of each configuration is kept.
    let consul_after = consul.autopilot_config().await.unwrap();
    assert_eq!(
        consul_after["LastContactThreshold"], consul_now["LastContactThreshold"],
        "{consul_after}"
    );
    let log = node.log();
    assert!(
        log.contains("Consul's autopilot configuration set for 1 servers")
            && log.contains("Nomad's autopilot configuration set for 1 servers"),
        "{log}"
    );
}
