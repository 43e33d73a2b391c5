//! The agent's Consul client against a live agent: KV, CAS, blocking
//! queries, sessions, locks, join.

use std::time::Duration;

use kraken_hashi::{Consul, SessionBehavior};
use kraken_testkit::{ConsulDev, LoopbackAddrs, PeerCommand, TestDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_client_calls_work_against_a_live_agent() {
    let dev = ConsulDev::start().await;
    let c = Consul::new(&dev.http_url(), None).unwrap();
    assert!(c.leader().await.unwrap().is_some());
    assert_eq!(c.raft_peers().await.unwrap().len(), 1);
    let members = c.members().await.unwrap();
    assert!(
        members[0].is_alive() && members[0].is_server(),
        "{members:?}"
    );
    assert!(c.agent_self().await.unwrap()["Config"].is_object());

    // KV with check-and-set.
    assert_eq!(c.kv_get("k/a", None).await.unwrap().0, None);
    assert!(c.kv_cas("k/a", b"one", 0).await.unwrap());
    assert!(
        !c.kv_cas("k/a", b"two", 0).await.unwrap(),
        "cas 0 only creates"
    );
    let (pair, index) = c.kv_get("k/a", None).await.unwrap();
    let pair = pair.unwrap();
    assert_eq!(pair.value, b"one");
    assert!(index >= pair.modify_index);
    assert!(c.kv_cas("k/a", b"two", pair.modify_index).await.unwrap());

    // A blocking query returns when the key changes.
    let waiter = c.clone();
    let idx = c.kv_get("k/a", None).await.unwrap().1;
    let blocked = tokio::spawn(async move {
        waiter
            .kv_get("k/a", Some((idx, Duration::from_secs(20))))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kv_put("k/a", b"three").await.unwrap();
    let (changed, _) = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("blocking query returned on change")
        .unwrap()
        .unwrap();
    assert_eq!(changed.unwrap().value, b"three");

    // Sessions and locks.
    let s1 = c
        .session_create(
            "t1",
            Duration::from_secs(15),
            Duration::from_secs(0),
            SessionBehavior::Release,
            true,
        )
        .await
        .unwrap();
    let s2 = c
        .session_create(
            "t2",
            Duration::from_secs(15),
            Duration::from_secs(0),
            SessionBehavior::Release,
            true,
        )
        .await
        .unwrap();
    assert!(c.kv_acquire("k/lock", &s1, b"holder-1").await.unwrap());
    assert!(!c.kv_acquire("k/lock", &s2, b"holder-2").await.unwrap());
    assert_eq!(
        c.kv_get("k/lock", None)
            .await
            .unwrap()
            .0
            .unwrap()
            .session
            .as_deref(),
        Some(s1.as_str())
    );
    assert!(c.session_renew(&s1).await.unwrap());
    c.session_destroy(&s1).await.unwrap();
    assert!(
        !c.session_renew(&s1).await.unwrap(),
        "a destroyed session is gone"
    );
    assert!(c.kv_acquire("k/lock", &s2, b"holder-2").await.unwrap());
    assert!(c.kv_release("k/lock", &s2).await.unwrap());
    c.kv_delete("k/a").await.unwrap();
    assert_eq!(c.kv_get("k/a", None).await.unwrap().0, None);

    // Errors name the endpoint.
    let err = Consul::new("http://127.0.0.1:1", None)
        .unwrap()
        .leader()
        .await
        .unwrap_err();
    assert!(
        err.is_unreachable() && err.to_string().contains("127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_through_the_agent_api() {
    let a = ConsulDev::start().await;
    let ips = LoopbackAddrs::allocate(1);
    let dir = TestDir::new("joiner");
    let mut joiner = PeerCommand::consul("consul", dir.path())
        .args([
            "agent",
            "-server=false",
            &format!("-bind={}", ips[0]),
            &format!("-client={}", ips[0]),
            &format!("-data-dir={}", dir.path().join("data").display()),
        ])
        .spawn();
    let c = Consul::new(&format!("http://{}:8500", ips[0]), None).unwrap();
    kraken_testkit::wait_for("joiner answers", Duration::from_secs(60), || async {
        c.agent_self().await.ok()
    })
    .await
    .unwrap();
    assert_eq!(c.leader().await.ok().flatten(), None, "not joined yet");
    c.join(&a.ip().to_string()).await.unwrap();
    let leader = kraken_testkit::wait_for("leader via join", Duration::from_secs(30), || async {
        c.leader().await.ok().flatten()
    })
    .await
    .unwrap();
    assert!(leader.starts_with(&a.ip().to_string()), "{leader}");
    assert_eq!(c.members().await.unwrap().len(), 2);
    // The agent filters its pool down to the servers: the dev agent, not
    // the client itself.
    let servers = c.server_members().await.unwrap();
    let addrs: Vec<&str> = servers.iter().map(|m| m.addr.as_str()).collect();
    assert_eq!(addrs, [a.ip().to_string()], "{servers:?}");
    joiner.kill();
}
