//! The role tokens after the bootstrap: brought back when Consul loses its
//! data, left alone when a person revokes one.

use std::time::Duration;

use super::cluster::{captured, cluster, lease, store};
use kraken_bootstrap::{Bootstrap, ROLE_TOKENS};
use kraken_hashi::{Consul, Token};
use kraken_secrets::{SecretStore, names};
use kraken_testkit::PeerCommand;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_lost_with_consuls_data_come_back_and_a_revoked_one_stays_revoked() {
    captured();
    let mut c = cluster("lost").await;
    let store = store(&c.moto, &c.cluster).await;
    c.participant(0, None).await.unwrap();
    let server_token = Token::new(
        store
            .get(names::CONSUL_SERVER)
            .await
            .unwrap()
            .unwrap()
            .expose(),
    );

    // Every Consul server replaced at once, their data gone: a new,
    // empty Consul (its initial-management token from the config again).
    for (peer, dir) in c.consul_peers.iter_mut() {
        peer.kill();
        std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    }
    for (i, (peer, dir)) in c.consul_peers.iter_mut().enumerate() {
        *peer = PeerCommand::consul(&format!("consul-again-{i}"), dir.path())
            .arg("agent")
            .arg(format!(
                "-config-file={}",
                dir.path().join("consul.hcl").display()
            ))
            .spawn();
    }
    let upkeep = |reader: Consul| {
        let (store, management, cluster) = (&store, c.management.clone(), c.cluster.clone());
        let admin = c.consul(0, Some(management));
        async move {
            let b = Bootstrap {
                consul: admin,
                nomad: None,
                store,
                cluster,
                node: "node-0".into(),
                lease: lease(),
                crash_after: None,
            };
            b.upkeep(&reader, Duration::from_secs(2)).await.unwrap()
        }
    };
    let stored = |name: &'static str| {
        let store = &store;
        async move { Token::new(store.get(name).await.unwrap().unwrap().expose()) }
    };
    let known = |token: Token| {
        let consul = c.consul(1, Some(token));
        async move { consul.acl_token_self().await.unwrap().is_some() }
    };

    let admin = c.consul(0, Some(c.management.clone()));
    kraken_testkit::wait_until("a new Consul leader", Duration::from_secs(120), || async {
        admin.acl_policies().await.is_ok()
    })
    .await
    .unwrap();
    for (name, _, _) in ROLE_TOKENS {
        assert!(
            !known(stored(name).await).await,
            "{name} is gone with the data"
        );
    }
    // The upkeep sees the state gone and the tokens stored: the Consul
    // phase runs again with the same SecretIDs, and every node's token
    // works again without a new config.
    let done = upkeep(c.consul(0, Some(server_token.clone()))).await;
    assert!(done.rebootstrapped, "{done:?}");
    for (name, _, _) in ROLE_TOKENS {
        assert!(known(stored(name).await).await, "{name} is back");
    }
    assert_eq!(
        stored(names::CONSUL_SERVER).await.expose(),
        server_token.expose(),
        "the same secret"
    );

    // A person deletes the agent token on purpose: no upkeep recreates it.
    let agent = stored(names::CONSUL_AGENT).await;
    let accessor = c
        .consul(0, Some(agent.clone()))
        .acl_token_self()
        .await
        .unwrap()
        .unwrap()
        .accessor_id;
    admin.acl_token_delete(&accessor).await.unwrap();
    for _ in 0..3 {
        let done = upkeep(c.consul(0, Some(server_token.clone()))).await;
        assert_eq!(done.revoked, [names::CONSUL_AGENT], "{done:?}");
        assert!(
            done.recreated.is_empty() && done.rotated.is_empty(),
            "{done:?}"
        );
        assert!(!known(agent.clone()).await);
    }
    // No log line carries a secret.
    let secrets = c.all_secret_values().await;
    let capture = captured();
    for line in capture.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        for s in &secrets {
            assert!(
                !line.contains(s.as_str()),
                "a secret reached the log: {line:.40}…"
            );
        }
    }
}
