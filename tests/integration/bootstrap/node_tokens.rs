//! Each node's own Consul agent token (`steps::node_tokens`): on three
//! Consul servers bootstrapped by the agent's code, two client Consul
//! agents join without a token; the leader's watch, running as `run` runs
//! it but with its full rounds an hour apart, gives each a token with its
//! own node identity from a quick round (its membership clock moved),
//! which the client takes as `run` does (derive it from the node-token
//! key, wait for Consul to know it, render, reload). A client's token
//! cannot register the other client's node; a deleted token comes back
//! with the same secret; a rotated key replaces every node's token and
//! each node takes its new one; a client that leaves loses its token; a
//! round with nothing new makes nothing.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::cluster::{Cluster, cluster, store};
use crate::common::*;
use kraken_agent::steps::node_tokens::{Reader, Watch};
use kraken_agent::steps::secrets::{self, SecretsMode};
use kraken_agent::steps::tokens;
use kraken_bootstrap::Ledger;
use kraken_discovery::Peers;
use kraken_hashi::{Consul, Token};
use kraken_identity::Identity;
use kraken_intent::NodeSpec;
use kraken_render::{RenderSecrets, Renderer, Service};
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;
use kraken_testkit::{LoopbackAddrs, Peer, PeerCommand, TestDir};

fn settings(http: Ipv4Addr, grace_secs: u64) -> Settings {
    Settings::parse(&format!(
        "[secrets]\nbackend = \"ssm\"\n\n[tls]\nenabled = false\n\n\
         [docker]\nenabled = false\n\n\
         [consul]\nhttp_addr = \"http://{http}:8500\"\nclient_addr = \"{http}\"\n\n\
         [nomad]\nhttp_addr = \"http://127.0.0.1:4646\"\n\n\
         [bootstrap]\ntoken_wait_secs = 60\nnode_token_grace_secs = {grace_secs}\n"
    ))
    .unwrap()
}

struct Client {
    name: String,
    ip: Ipv4Addr,
    identity: Identity,
    spec: NodeSpec,
    settings: Settings,
    dir: TestDir,
    peer: Option<Peer>,
    /// When its Consul was started.
    started: std::time::Instant,
}

impl Client {
    fn consul(&self, token: Option<Token>) -> Consul {
        Consul::new(&format!("http://{}:8500", self.ip), token).unwrap()
    }

    /// Renders and writes its consul.hcl with `secrets`.
    fn write_config(&self, servers: &[Ipv4Addr], secrets: &RenderSecrets) {
        let peers = Peers {
            consul_servers: servers.iter().copied().collect(),
            nomad_servers: Default::default(),
        };
        let files = Renderer::new(None)
            .unwrap()
            .render(&self.identity, &self.spec, &peers, &self.settings, secrets)
            .unwrap();
        let file = files
            .into_iter()
            .find(|f| f.service == Service::Consul)
            .unwrap();
        std::fs::write(self.dir.path().join("consul.hcl"), &file.contents).unwrap();
    }

    /// Its secrets as the store has them, with `agent` as the Consul agent
    /// token it runs with.
    async fn secrets_holding(&self, store: &Store, agent: Option<Secret>) -> RenderSecrets {
        let mode = SecretsMode::ReadOnly;
        let mut held = secrets::secrets(store, &self.spec, &self.name, &self.settings, mode)
            .await
            .unwrap();
        held.consul_agent = agent;
        held
    }

    /// Consul's record of the token in its config, once the reloaded
    /// agent runs with it.
    async fn running_token(&self) -> kraken_hashi::AclToken {
        let token = self.configured_token();
        let me = || async {
            let c = self.consul(Some(token.clone()));
            c.acl_token_self().await.ok().flatten()
        };
        kraken_testkit::wait_for("the reloaded agent token", Duration::from_secs(30), me)
            .await
            .unwrap()
    }

    /// The agent token its Consul config carries, as the running agent
    /// loaded it.
    fn configured_token(&self) -> Token {
        let hcl = std::fs::read_to_string(self.dir.path().join("consul.hcl")).unwrap();
        let line = hcl
            .lines()
            .find(|l| l.trim_start().starts_with("agent ="))
            .expect("an agent token in consul.hcl");
        Token::new(line.split('"').nth(1).unwrap())
    }
}

/// A client Consul agent rendered by the agent's renderer (no token yet)
/// and started: it joins the servers' gossip with none.
async fn client(c: &Cluster, i: u8, ip: Ipv4Addr) -> Client {
    let name = format!("i-0c11e47{i:010}");
    let s = settings(ip, 0);
    let identity = Identity {
        instance_id: name.clone(),
        region: REGION.into(),
        availability_zone: format!("{REGION}a"),
        private_ipv4: ip,
        tags: tags(&[
            ("kraken:cluster", &c.cluster),
            ("kraken:roles", "nomad-client"),
        ]),
        vpc_id: None,
        tags_source: Default::default(),
    };
    let spec = NodeSpec::from_tags(&identity.tags, &s.intent).unwrap();
    let store = store(&c.moto, &c.cluster).await;
    // As `run`'s step 3: its own token is derivable, but Consul (not
    // running) does not know it, so the first config carries none.
    let held = secrets::secrets(&store, &spec, &name, &s, SecretsMode::Boot)
        .await
        .unwrap();
    assert!(held.consul_agent.is_none(), "no token before it joined");
    let dir = TestDir::new("node-token-client");
    let mut s2 = s.clone();
    s2.paths.consul_data_dir = dir.path().join("data");
    let mut client = Client {
        name,
        ip,
        identity,
        spec,
        settings: s2,
        peer: None,
        dir,
        started: std::time::Instant::now(),
    };
    client.write_config(&c.consul_ips, &held);
    client.started = std::time::Instant::now();
    client.peer = Some(
        PeerCommand::consul("consul-client", client.dir.path())
            .arg("agent")
            .arg(format!(
                "-config-file={}",
                client.dir.path().join("consul.hcl").display()
            ))
            .spawn(),
    );
    client
}

/// What `systemctl reload consul` does: SIGHUP, and Consul reads its
/// config again (the agent token among it).
fn reload(cl: &Client) {
    let pid = cl.peer.as_ref().and_then(|p| p.pid()).unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "SIGHUP to Consul {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_a_token_of_its_own_node_and_loses_it_when_it_leaves() {
    let c = cluster("nodetokens").await;
    c.participant(0, None).await.unwrap();
    let store = store(&c.moto, &c.cluster).await;

    // The leader's watch, as a Consul server's `run` starts it.
    let leader: std::net::SocketAddr = c
        .consul(0, None)
        .leader()
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    let std::net::IpAddr::V4(leader_ip) = leader.ip() else {
        unreachable!()
    };
    let server_tags = tags(&[
        ("kraken:cluster", &c.cluster),
        ("kraken:roles", "consul-server"),
    ]);
    let watch = Watch {
        settings: settings(leader_ip, 0),
        spec: NodeSpec::from_tags(&server_tags, &Settings::default().intent).unwrap(),
        node: "leader".into(),
        own_ip: leader_ip,
        store: store.clone(),
        management: Secret::new(c.management.expose()),
    };
    let server_token = store.get(names::CONSUL_SERVER).await.unwrap().unwrap();
    // The node-token key, as a Consul server's step 3 creates it.
    let key = store
        .get_or_create(names::NODE_TOKEN_KEY, Secret::gossip_key)
        .await
        .unwrap();
    let mut reader = Reader {
        consul: Consul::new(
            &format!("http://{leader_ip}:8500"),
            Some(Token::new(server_token.expose())),
        )
        .unwrap(),
        key: key.clone(),
    };
    let mut ledger = Ledger::default();

    // A follower's agent does nothing: one writer, the leader's.
    let follower = c
        .consul_ips
        .iter()
        .find(|ip| **ip != leader_ip)
        .copied()
        .unwrap();
    let not_leading = Watch {
        own_ip: follower,
        ..watch_clone(&watch)
    };
    assert_eq!(
        not_leading
            .round(&reader, &mut Ledger::default())
            .await
            .unwrap(),
        None
    );
    // The leader's first full round: no client yet, nothing to make.
    let first = watch.round(&reader, &mut ledger).await.unwrap().unwrap();
    assert!(!first.changed(), "{first:?}");

    // The watch as a Consul server's `run` starts it, its full rounds an
    // hour apart: the tokens of the clients that join now come from quick
    // rounds, or not at all.
    let mut quick = watch_clone(&watch);
    quick.settings.bootstrap.node_token_secs = 3600;
    let running = tokio::spawn(quick.run());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ips = LoopbackAddrs::allocate(2);
    let mut clients = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        clients.push(client(&c, i as u8, *ip).await);
    }

    // Each client takes its own, as `run` does: the secret, Consul knowing
    // it, the rendered config, a reload.
    for cl in &clients {
        let mut held = cl.secrets_holding(&store, None).await;
        let agent = cl.consul(None);
        let fetched = tokens::fetch(&store, &cl.spec, &cl.name, &cl.settings, &agent, &mut held);
        // The Nomad client's role token is made by the bootstrap already.
        assert!(fetched.await.unwrap());
        eprintln!(
            "node tokens: {} holds its token {:.1}s after its Consul started",
            cl.name,
            cl.started.elapsed().as_secs_f64()
        );
        cl.write_config(&c.consul_ips, &held);
        reload(cl);
    }
    let boot_cost = clients[0].started.elapsed();
    running.abort();
    assert_eq!(
        node_token_count(&c).await,
        2,
        "one token for each client, none for servers"
    );

    for cl in &clients {
        // The token the agent actually runs with is its own node identity.
        let me = cl.running_token().await;
        let ids: Vec<(String, String)> = me
            .node_identities
            .iter()
            .map(|n| (n.node_name.clone(), n.datacenter.clone()))
            .collect();
        assert_eq!(ids, [(cl.name.clone(), cl.spec.datacenter.clone())]);
        assert_eq!(
            me.policies
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["kraken-node"]
        );
        eprintln!(
            "node tokens: {} runs with {} {:?}",
            cl.name, me.accessor_id, ids
        );

        // Its node is in the catalog (the agent's anti-entropy with its
        // token), and a service registered on it (as Nomad does, with the
        // Nomad client's token) too.
        let nomad_client = store
            .get(names::CONSUL_NOMAD_CLIENT)
            .await
            .unwrap()
            .unwrap();
        register_service(cl, &nomad_client).await;
        let catalog = cl.consul(Some(cl.configured_token()));
        kraken_testkit::wait_for(
            "the node and its service in the catalog",
            Duration::from_secs(60),
            || async {
                catalog
                    .node_service_names(&cl.name)
                    .await
                    .ok()
                    .filter(|s| s.iter().any(|s| s == "web"))
            },
        )
        .await
        .unwrap();
    }

    // A's token is refused as B's node, and accepted as its own.
    let (a, b) = (&clients[0], &clients[1]);
    let as_node = |node: &str| serde_json::json!({ "Node": node, "Address": a.ip.to_string(), "Datacenter": a.spec.datacenter });
    let status = catalog_register(a, &a.configured_token(), &as_node(&b.name)).await;
    assert_eq!(status, 403, "A's token registering as B");
    let status = catalog_register(a, &a.configured_token(), &as_node(&a.name)).await;
    assert_eq!(status, 200, "A's token registering as A");
    eprintln!("node tokens: A as B -> {}, A as A -> 200", 403);

    // A rerun makes nothing new.
    let again = watch.round(&reader, &mut ledger).await.unwrap().unwrap();
    assert!(!again.changed(), "{again:?}");
    let tokens_before = node_token_count(&c).await;
    assert_eq!(tokens_before, 2);

    // A's token deleted in Consul (by hand, or lost): the next round makes
    // it again with the same derived secret, so the token in A's config
    // works again with no change on A.
    let management = a.consul(Some(Token::new(watch.management.expose())));
    let a_token = a.configured_token();
    let accessor = a
        .consul(Some(a_token.clone()))
        .acl_token_self()
        .await
        .unwrap()
        .expect("A's token is known")
        .accessor_id;
    management.acl_token_delete(&accessor).await.unwrap();
    assert!(
        matches!(
            a.consul(Some(a_token.clone())).acl_token_self().await,
            Ok(None)
        ),
        "A's deleted token is not found"
    );
    let remade = watch.round(&reader, &mut ledger).await.unwrap().unwrap();
    assert_eq!(remade.made, std::slice::from_ref(&a.name), "{remade:?}");
    let me = a
        .consul(Some(a_token))
        .acl_token_self()
        .await
        .unwrap()
        .expect("A's configured token is known again");
    assert_ne!(
        me.accessor_id, accessor,
        "a new token, with the same derived secret"
    );
    assert_eq!(node_token_count(&c).await, 2);

    // The key rotated (`docs/operations.md`): the next full round, with the
    // new key, replaces every node's token; each node takes its new one at
    // its token check (`tokens::refresh`: Consul no longer knows the one it
    // holds), and runs with it.
    let rotated = Secret::gossip_key();
    store.put(names::NODE_TOKEN_KEY, &rotated).await.unwrap();
    reader.key = rotated;
    let done = watch.round(&reader, &mut ledger).await.unwrap().unwrap();
    let mut remade = done.made.clone();
    remade.sort();
    let mut both: Vec<String> = clients.iter().map(|c| c.name.clone()).collect();
    both.sort();
    assert_eq!(remade, both, "{done:?}");
    for cl in &clients {
        let old = cl.configured_token();
        assert!(
            matches!(
                cl.consul(Some(old.clone())).acl_token_self().await,
                Ok(None)
            ),
            "{}: the token of the old key is gone",
            cl.name
        );
        let mut held = cl
            .secrets_holding(&store, Some(Secret::new(old.expose())))
            .await;
        let agent = cl.consul(None);
        let changed = tokens::refresh(&store, &cl.spec, &cl.name, Some(&agent), &mut held, None);
        assert!(changed.await.unwrap(), "{}: takes the new token", cl.name);
        cl.write_config(&c.consul_ips, &held);
        reload(cl);
        assert_ne!(cl.configured_token().expose(), old.expose());
        cl.running_token().await;
    }
    assert_eq!(node_token_count(&c).await, 2, "the old key's are deleted");
    eprintln!("node tokens: key rotated, both nodes run with their new tokens");

    // B leaves: past the grace (zero here), its token is gone.
    let b_token = b.configured_token();
    b.consul(Some(b_token.clone())).leave().await.unwrap();
    let started = std::time::Instant::now();
    let deleted = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "B's token never deleted"
        );
        let done = watch.round(&reader, &mut ledger).await.unwrap().unwrap();
        assert!(done.made.is_empty(), "{done:?}");
        if !done.deleted.is_empty() {
            break done.deleted;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(deleted, std::slice::from_ref(&b.name));
    assert_eq!(
        c.consul(0, Some(b_token)).acl_token_self().await.unwrap(),
        None,
        "B's token is gone from Consul"
    );
    assert_eq!(node_token_count(&c).await, 1, "A keeps its own");
    eprintln!(
        "node tokens: both clients held their tokens {:.1}s after the first started",
        boot_cost.as_secs_f64()
    );
    drop(clients);
}

fn watch_clone(w: &Watch) -> Watch {
    Watch {
        settings: w.settings.clone(),
        spec: w.spec.clone(),
        node: w.node.clone(),
        own_ip: w.own_ip,
        store: w.store.clone(),
        management: w.management.clone(),
    }
}

async fn node_token_count(c: &Cluster) -> usize {
    c.consul(0, Some(c.management.clone()))
        .acl_tokens()
        .await
        .unwrap()
        .iter()
        .filter(|t| kraken_bootstrap::node_of(t).is_some())
        .count()
}

async fn register_service(cl: &Client, token: &Secret) {
    let r = kraken_testkit::http_client()
        .put(format!("http://{}:8500/v1/agent/service/register", cl.ip))
        .header("X-Consul-Token", token.expose())
        .json(&serde_json::json!({ "Name": "web", "Port": 8080 }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

async fn catalog_register(cl: &Client, token: &Token, body: &serde_json::Value) -> u16 {
    kraken_testkit::http_client()
        .put(format!("http://{}:8500/v1/catalog/register", cl.ip))
        .header("X-Consul-Token", token.expose())
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
