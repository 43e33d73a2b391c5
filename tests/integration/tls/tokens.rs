//! Role tokens on a running node: a revoked one stays revoked, a rotated
//! one reaches its holders by reload.

use std::time::{Duration, Instant};

use super::node_files::{pid, read};
use crate::common::node::boot_with;
use kraken_secrets::{SecretStore, names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_role_token_stays_revoked_and_a_rotated_one_reaches_its_holders() {
    let node = boot_with(Duration::ZERO, "\n[bootstrap]\ntoken_check_secs = 2\n").await;
    let store = node.store().await;
    let management = store
        .get(names::CONSUL_INITIAL_MANAGEMENT)
        .await
        .unwrap()
        .unwrap();
    let admin = node.consul(Some(kraken_hashi::Token::new(management.expose())));
    let as_token =
        |s: &kraken_secrets::Secret| node.consul(Some(kraken_hashi::Token::new(s.expose())));
    let agent = store.get(names::CONSUL_AGENT).await.unwrap().unwrap();
    let before = as_token(&agent).acl_token_self().await.unwrap().unwrap();
    assert_eq!(before.expiration_time, None, "role tokens do not expire");
    let consul_pid = pid(&node, "consul.service");
    let config = || read(&node, "consul.d/consul.hcl");
    assert!(config().contains(agent.expose()));

    // Someone deletes the agent token in Consul on purpose: it stays
    // deleted, however many checks pass, and the agent says so.
    admin.acl_token_delete(&before.accessor_id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(as_token(&agent).acl_token_self().await.unwrap(), None);
    assert!(
        node.log().contains("was deleted and stays deleted"),
        "{}",
        node.log()
    );

    // The documented way to replace it: delete the stored secret. A Consul
    // server makes a new one and its token; every holder picks it up and
    // reloads (no restart).
    let started = Instant::now();
    store.delete(names::CONSUL_AGENT).await.unwrap();
    let rotated = kraken_testkit::wait_for(
        "a new agent secret, known to Consul and in the node's config",
        Duration::from_secs(60),
        || async {
            let Ok(Some(new)) = store.get(names::CONSUL_AGENT).await else {
                return None;
            };
            let known = matches!(as_token(&new).acl_token_self().await, Ok(Some(_)));
            (known && config().contains(new.expose())).then_some(new)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert_ne!(rotated, agent);
    assert!(!config().contains(agent.expose()));
    eprintln!(
        "benchmark: rotated agent token in the config {:?} after its secret was deleted",
        started.elapsed()
    );

    // A rotation by overwrite while the old token still works: the new one
    // is made, and the old one deleted once every holder had time (two
    // check periods) to read the new secret.
    let old = as_token(&rotated).acl_token_self().await.unwrap().unwrap();
    let newest = kraken_secrets::Secret::random_token();
    store.put(names::CONSUL_AGENT, &newest).await.unwrap();
    kraken_testkit::wait_until(
        "the overwritten secret's token to exist and the old one to be gone",
        Duration::from_secs(60),
        || async {
            matches!(as_token(&newest).acl_token_self().await, Ok(Some(_)))
                && config().contains(newest.expose())
                && matches!(as_token(&rotated).acl_token_self().await, Ok(None))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert!(matches!(
        admin.acl_token_read(&old.accessor_id).await,
        Err(e) if e.status() == Some(403) || e.status() == Some(404)
    ));
    // Consul took every new token by reload: same process.
    assert_eq!(pid(&node, "consul.service"), consul_pid);
}
