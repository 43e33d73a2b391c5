//! A client booting into a running cluster takes its servers from the list
//! the Consul leader's agent published (no `DescribeInstances`), and a
//! stale list (servers replaced since) costs it a bounded wait and one EC2
//! call, never the boot (docs/architecture.md, "Decisions").

use std::time::{Duration, Instant};

use kraken_agent::steps::published::{Published, now_unix};
use kraken_secrets::{Secret, SecretStore, names};

use crate::common::node::{Node, boot_as, boot_beside};

const NO_DOCKER: &str = "\n[docker]\nenabled = false\n";

fn status(node: &Node) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(node.dir.path().join("run/status.json")).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_boots_from_the_published_list_and_past_a_stale_one() {
    let server = boot_as("consul-server,nomad-server", Duration::ZERO, NO_DOCKER).await;
    let store = server.store().await;
    let started = Instant::now();
    // Written when Consul's servers are known, again once the Nomad server
    // passes its checks in the catalog (the set changed).
    let published = loop {
        if let Some(v) = store.get(names::SERVERS).await.unwrap()
            && let Some(list) = Published::parse(&v)
            && !list.nomad_servers.is_empty()
        {
            break list;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server published no list\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(published.consul_servers, [server.ip].into());
    assert_eq!(published.nomad_servers, [server.ip].into());
    assert_eq!(published.instances, [server.id.clone()].into());

    // The right list, as the server's agent wrote it: no EC2 call at all.
    // Its Consul agent token is its own, made by the server's agent (the
    // Consul leader's) once the client's Consul joined.
    let t = Instant::now();
    let client = boot_beside(&server, "nomad-client", NO_DOCKER).await;
    let client_after = t.elapsed();
    assert_eq!(status(&client)["ec2_api_calls"], 0, "{}", client.log());
    assert!(
        client.log().contains("from the published list"),
        "{}",
        client.log()
    );
    let key = store
        .get(names::NODE_TOKEN_KEY)
        .await
        .unwrap()
        .expect("the server created the node-token key");
    let own = kraken_secrets::Secret::derived_token(&key, &client.id);
    let config = std::fs::read_to_string(client.dir.path().join("consul.d/consul.hcl")).unwrap();
    assert!(
        config.contains(own.expose()),
        "its config carries its own token"
    );
    let me = client
        .consul(Some(kraken_hashi::Token::new(own.expose())))
        .acl_token_self()
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = me
        .node_identities
        .iter()
        .map(|n| n.node_name.as_str())
        .collect();
    assert_eq!(ids, [client.id.as_str()], "its own node identity");
    assert!(
        store.get(names::CONSUL_AGENT).await.unwrap().is_some(),
        "the servers' shared token is still there"
    );

    // Every server replaced since the list was written: its address leads
    // nowhere. The server's agent is stopped first (its Consul and Nomad
    // keep running): as the leader's, it would repair the list.
    let pid = server.child.id().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // What the stopped agent did for booting clients: their own Consul
    // tokens.
    let node_tokens = server.node_tokens_in_test().await;
    let [a, b, c, _] = server.ip.octets();
    let stale = Published {
        consul_servers: [std::net::Ipv4Addr::new(a, b, c, 200)].into(),
        nomad_servers: [std::net::Ipv4Addr::new(a, b, c, 200)].into(),
        instances: ["i-gone".to_owned()].into(),
        written_unix: now_unix(),
    };
    let put = |p: &Published| Secret::new(serde_json::to_string(p).unwrap());
    store.put(names::SERVERS, &put(&stale)).await.unwrap();
    let t = Instant::now();
    let misled = boot_beside(&server, "nomad-client", NO_DOCKER).await;
    let misled_after = t.elapsed();
    assert!(
        misled
            .log()
            .contains("none of the published Consul servers"),
        "{}",
        misled.log()
    );
    assert_eq!(status(&misled)["ec2_api_calls"], 1, "it asked EC2 once");

    eprintln!(
        "published: a client READY {client_after:?} after its start with the list (0 \
         DescribeInstances), {misled_after:?} with a stale one (1)"
    );
    node_tokens.abort();
}
