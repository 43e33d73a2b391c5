//! The one-time bootstrap against three real Consul servers (configured by
//! the agent's own renderer, ACLs default-deny, gossip encrypted), a real
//! Nomad server with ACLs on, and moto's SSM as the secret store.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::common::*;
use kraken_agent::steps::secrets::{self, SecretsMode};
use kraken_bootstrap::{
    Bootstrap, BootstrapError, LeaseSettings, POLICIES, Phase, ROLE_TOKENS, Report, Step,
};
use kraken_discovery::Peers;
use kraken_hashi::{Consul, Nomad, Token};
use kraken_identity::Identity;
use kraken_intent::NodeSpec;
use kraken_render::Renderer;
use kraken_secrets::{SecretStore, Store, names};
use kraken_settings::Settings;
use kraken_testkit::{LoopbackAddrs, Moto, NomadServer, Peer, PeerCommand, TestDir};

/// Every log line of this test process (of every module, once installed),
/// to look for secrets in.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {}", record.target(), record.args());
        eprintln!("{line}");
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
    fn flush(&self) {}
}

/// Installs the agent's own log filter over a capture, at debug level (the
/// most a person can turn on).
fn captured() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_boxed_logger(Box::new(kraken_agent::logging::AgentLog {
            inner: c,
            max: log::LevelFilter::Debug,
        }))
        .unwrap();
        log::set_max_level(log::LevelFilter::Debug);
        c
    })
}

struct Cluster {
    moto: Moto,
    cluster: String,
    consul_ips: Vec<Ipv4Addr>,
    consul_peers: Vec<(Peer, TestDir)>,
    nomad: NomadServer,
    management: Token,
    healthy_at: Instant,
}

/// Plain HTTP: these tests are about the bootstrap protocol, on Consul
/// servers rendered without certificates; `tls.rs` and `run.rs` cover the
/// same bootstrap with TLS on.
fn settings() -> Settings {
    Settings::parse(
        "[secrets]\nbackend = \"ssm\"\n\n[tls]\nenabled = false\n\n\
         [consul]\nhttp_addr = \"http://127.0.0.1:8500\"\n\n\
         [nomad]\nhttp_addr = \"http://127.0.0.1:4646\"\n",
    )
    .unwrap()
}

async fn store(moto: &Moto, cluster: &str) -> Store {
    moto_store(&moto.endpoint(), cluster, TEST_KEY).await
}

/// Three Consul servers rendered and started as `run` would, each with the
/// secrets it got from step 3; and a Nomad server with ACLs on.
async fn cluster(name: &str) -> Cluster {
    let moto = Moto::start().await;
    let ips = LoopbackAddrs::allocate(3);
    let mut consul = Vec::new();
    let mut management = None;
    for ip in &ips {
        let dir = TestDir::new("bootstrap-consul");
        let identity = Identity {
            instance_id: format!("i-{:08x}", u32::from(*ip)),
            region: REGION.into(),
            availability_zone: format!("{REGION}a"),
            private_ipv4: *ip,
            tags: tags(&[("kraken:cluster", name), ("kraken:roles", "consul-server")]),
            tags_source: Default::default(),
        };
        let mut s = settings();
        s.consul.client_addr = ip.to_string();
        s.paths.consul_data_dir = dir.path().join("data");
        let spec = NodeSpec::from_tags(&identity.tags, &s.intent).unwrap();
        let store = store(&moto, name).await;
        let secrets = secrets::secrets(&store, &spec, &s, SecretsMode::Boot)
            .await
            .unwrap();
        management = secrets.initial_management.clone();
        let peers = Peers {
            consul_servers: ips.iter().copied().collect(),
            nomad_servers: Default::default(),
        };
        let file = Renderer::new(None)
            .unwrap()
            .render(&identity, &spec, &peers, &s, &secrets)
            .unwrap()
            .remove(0);
        let path = dir.path().join("consul.hcl");
        std::fs::write(&path, &file.contents).unwrap();
        let peer = PeerCommand::consul("consul", dir.path())
            .arg("agent")
            .arg(format!("-config-file={}", path.display()))
            .spawn();
        consul.push((peer, dir));
    }
    let c = Consul::new(&format!("http://{}:8500", ips[0]), None).unwrap();
    kraken_testkit::wait_for("a Consul leader", Duration::from_secs(120), || async {
        c.leader().await.ok().flatten()
    })
    .await
    .unwrap();
    let healthy_at = Instant::now();
    let nomad = NomadServer::start_with_config("acl {\n  enabled = true\n}\n").await;
    Cluster {
        moto,
        cluster: name.into(),
        consul_ips: ips,
        consul_peers: consul,
        nomad,
        management: Token::new(management.unwrap().expose()),
        healthy_at,
    }
}

/// What a complete bootstrap leaves, each made once: every policy, every
/// role token, Nomad's management token and the agent's Nomad token.
const EVERYTHING_ONCE: (usize, usize, usize, usize) = (POLICIES.len(), ROLE_TOKENS.len(), 1, 1);

fn lease() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(10),
        lock_delay: Duration::from_secs(1),
        wait: Duration::from_secs(5),
        ..LeaseSettings::default()
    }
}

impl Cluster {
    fn consul(&self, i: usize, token: Option<Token>) -> Consul {
        Consul::new(
            &format!("http://{}:8500", self.consul_ips[i % self.consul_ips.len()]),
            token,
        )
        .unwrap()
    }

    /// One participant: the Consul phase as a Consul server would run it,
    /// then the Nomad phase as a Nomad server would.
    async fn participant(
        &self,
        i: usize,
        crash_after: Option<Step>,
    ) -> Result<Vec<Report>, BootstrapError> {
        let store = store(&self.moto, &self.cluster).await;
        self.participant_with(i, crash_after, &store).await
    }

    async fn participant_with(
        &self,
        i: usize,
        crash_after: Option<Step>,
        store: &Store,
    ) -> Result<Vec<Report>, BootstrapError> {
        let node = format!("node-{i}");
        let consul_phase = Bootstrap {
            consul: self.consul(i, Some(self.management.clone())),
            nomad: None,
            store,
            cluster: self.cluster.clone(),
            node: node.clone(),
            lease: lease(),
            crash_after,
        };
        let mut reports = vec![consul_phase.run(Phase::Consul).await?];
        let token = loop {
            if let Some(t) = store.get(names::CONSUL_NOMAD_SERVER).await.unwrap() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let nomad_phase = Bootstrap {
            consul: self.consul(i, Some(Token::new(token.expose()))),
            nomad: Some(Nomad::new(&self.nomad.http_url(), None).unwrap()),
            store,
            cluster: self.cluster.clone(),
            node,
            lease: lease(),
            crash_after,
        };
        reports.push(nomad_phase.run(Phase::Nomad).await?);
        Ok(reports)
    }

    /// Consul's and Nomad's own view: what exists, counted.
    async fn census(&self) -> (usize, usize, usize, usize) {
        let admin = self.consul(0, Some(self.management.clone()));
        let policies = admin
            .acl_policies()
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.name.starts_with("kraken-"))
            .count();
        let tokens = admin
            .acl_tokens()
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.description.starts_with("kraken:"))
            .count();
        let store = store(&self.moto, &self.cluster).await;
        let nomad_mgmt = store.get(names::NOMAD_MANAGEMENT).await.unwrap().unwrap();
        let nomad_tokens: Vec<serde_json::Value> = kraken_testkit::http_client()
            .get(format!("{}/v1/acl/tokens", self.nomad.http_url()))
            .header("X-Nomad-Token", nomad_mgmt.expose())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let management = nomad_tokens
            .iter()
            .filter(|t| t["Type"] == "management")
            .count();
        let agent = nomad_tokens
            .iter()
            .filter(|t| t["Type"] == "client" && t["Name"] == "kraken-agent")
            .count();
        (policies, tokens, management, agent)
    }

    /// Every stored token authenticates where it is meant to.
    async fn tokens_work(&self) {
        let store = store(&self.moto, &self.cluster).await;
        for name in [
            names::CONSUL_AGENT,
            names::CONSUL_NOMAD_SERVER,
            names::CONSUL_NOMAD_CLIENT,
        ] {
            let secret = store.get(name).await.unwrap().expect(name);
            let me = self
                .consul(1, Some(Token::new(secret.expose())))
                .acl_token_self()
                .await
                .unwrap();
            assert!(me.is_some(), "{name} is not a token Consul knows");
        }
        let nomad_mgmt = store.get(names::NOMAD_MANAGEMENT).await.unwrap().unwrap();
        let nomad = Nomad::new(
            &self.nomad.http_url(),
            Some(Token::new(nomad_mgmt.expose())),
        )
        .unwrap();
        assert!(nomad.acl_token_self().await.unwrap().is_some());
        // Anonymous: KV denied, and Nomad denies too.
        let anonymous = kraken_testkit::http_client()
            .get(format!(
                "http://{}:8500/v1/kv/kraken/{}/bootstrap/state",
                self.consul_ips[2], self.cluster
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 403);
        let anonymous_nomad = Nomad::new(&self.nomad.http_url(), None).unwrap();
        assert_eq!(
            anonymous_nomad.nodes().await.unwrap_err().status(),
            Some(403)
        );
    }

    async fn all_secret_values(&self) -> Vec<String> {
        let store = store(&self.moto, &self.cluster).await;
        let mut v = Vec::new();
        for name in [
            names::GOSSIP_KEY,
            names::CONSUL_INITIAL_MANAGEMENT,
            names::CONSUL_AGENT,
            names::CONSUL_NOMAD_SERVER,
            names::CONSUL_NOMAD_CLIENT,
            names::NOMAD_MANAGEMENT,
        ] {
            v.push(store.get(name).await.unwrap().unwrap().expose().to_owned());
        }
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_racing_nodes_perform_every_step_exactly_once() {
    let capture = captured();
    let c = cluster("race").await;
    let started = Instant::now();
    let results = {
        let mut set = Vec::new();
        for i in 0..10 {
            set.push(c.participant(i, None));
        }
        let mut out = Vec::new();
        // All ten at once, on one task each.
        let handles: Vec<_> = set.into_iter().map(Box::pin).collect();
        for r in join_all(handles).await {
            out.push(r);
        }
        out
    };
    let took = started.elapsed();
    let mut performed: BTreeMap<String, usize> = BTreeMap::new();
    let (mut holder_calls, mut waiter_calls) = (Vec::new(), Vec::new());
    for r in results {
        for report in r.expect("every participant succeeds") {
            for step in &report.performed {
                *performed.entry(step.clone()).or_default() += 1;
            }
            if report.performed.is_empty() {
                waiter_calls.push(report.consul_calls);
            } else {
                holder_calls.push(report.consul_calls);
            }
        }
    }
    let want: BTreeMap<String, usize> =
        Step::ALL.iter().map(|s| (s.name().to_owned(), 1)).collect();
    assert_eq!(performed, want, "each step exactly once");
    assert_eq!(
        c.census().await,
        EVERYTHING_ONCE,
        "policies, role tokens, Nomad bootstraps, Nomad agent tokens"
    );
    c.tokens_work().await;
    eprintln!(
        "benchmark: 3 Consul servers healthy -> 10 nodes done: {:?} (bootstrap itself {took:?}); \
         Consul calls per lease holder {holder_calls:?}, per waiter {waiter_calls:?}",
        c.healthy_at.elapsed()
    );

    let secrets = c.all_secret_values().await;
    let lines = capture.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(!lines.is_empty());
    for line in lines.iter() {
        for s in &secrets {
            assert!(
                !line.contains(s.as_str()),
                "a secret reached the log: {line:.40}…"
            );
        }
    }
}

async fn join_all<F: std::future::Future>(futs: Vec<std::pin::Pin<Box<F>>>) -> Vec<F::Output> {
    let mut slots: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<std::pin::Pin<Box<F>>>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        slots[i] = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    slots.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_killed_after_any_step_is_replaced_and_nothing_is_lost() {
    captured();
    let c = cluster("crash").await;
    for (i, step) in Step::ALL.iter().enumerate() {
        let err = c.participant(i, Some(*step)).await.unwrap_err();
        assert!(
            matches!(err, BootstrapError::CrashPoint { .. }),
            "crash point after {}: {err}",
            step.name()
        );
        let admin = c.consul(0, Some(c.management.clone()));
        let (pair, _) = admin
            .kv_get("kraken/crash/bootstrap/state", None)
            .await
            .unwrap();
        let state: kraken_bootstrap::State = serde_json::from_slice(&pair.unwrap().value).unwrap();
        assert_eq!(state.done.len(), i + 1, "{:?}", state.done);
    }
    // Everything is done: a further node does nothing, not even take the
    // lease.
    let reports = c.participant(99, None).await.unwrap();
    assert!(
        reports
            .iter()
            .all(|r| r.performed.is_empty() && !r.held_lease),
        "{reports:?}"
    );
    assert_eq!(c.census().await, EVERYTHING_ONCE);
    c.tokens_work().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nomad_bootstrapped_by_hand_is_a_loud_specific_error() {
    let c = cluster("byhand").await;
    // Someone ran `nomad acl bootstrap` before the agent got there.
    let by_hand: serde_json::Value = kraken_testkit::http_client()
        .put(format!("{}/v1/acl/bootstrap", c.nomad.http_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(by_hand["SecretID"].is_string());
    let err = c.participant(0, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, BootstrapError::NomadBootstrappedByHand { .. }),
        "{text}"
    );
    assert!(
        text.contains("/kraken/byhand/nomad/tokens/management"),
        "{text}"
    );
    assert!(!err.is_transient());
    // The Consul half is untouched by the failure.
    let (policies, tokens, _) = {
        let admin = c.consul(0, Some(c.management.clone()));
        (
            admin
                .acl_policies()
                .await
                .unwrap()
                .iter()
                .filter(|p| p.name.starts_with("kraken-"))
                .count(),
            admin
                .acl_tokens()
                .await
                .unwrap()
                .iter()
                .filter(|t| t.description.starts_with("kraken:"))
                .count(),
            0,
        )
    };
    assert_eq!((policies, tokens), (POLICIES.len(), ROLE_TOKENS.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_lock_key_stops_the_holder_before_its_next_step() {
    let c = cluster("dellock").await;
    let store = store(&c.moto, &c.cluster).await;
    let admin = c.consul(0, Some(c.management.clone()));
    let mut lease = kraken_bootstrap::Lease::acquire(
        &admin,
        "kraken/dellock/bootstrap/lock",
        "node-a",
        &lease(),
        || async { Ok(false) },
        &Default::default(),
    )
    .await
    .unwrap()
    .unwrap();
    lease.check().await.unwrap();
    admin
        .kv_delete("kraken/dellock/bootstrap/lock")
        .await
        .unwrap();
    assert!(matches!(
        lease.check().await.unwrap_err(),
        BootstrapError::LeaseLost { .. }
    ));
    drop(lease);
    drop(store);
    // Another node then completes the whole bootstrap.
    c.participant(1, None).await.unwrap();
    assert_eq!(c.census().await, EVERYTHING_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consul_leader_change_mid_bootstrap_is_ridden_out() {
    captured();
    let mut c = cluster("leaderchange").await;
    let admin = c.consul(0, Some(c.management.clone()));
    let leader = admin.leader().await.unwrap().unwrap();
    let leader_index = c
        .consul_ips
        .iter()
        .position(|ip| leader.starts_with(&format!("{ip}:")))
        .unwrap();
    // The participants talk to the two other servers, as nodes talk to
    // their own agents; the leader dies while they work.
    let others: Vec<usize> = (0..3).filter(|i| *i != leader_index).collect();
    let run = async {
        let a = c.participant(others[0], None);
        let b = c.participant(others[1] + 3, None);
        join_all(vec![Box::pin(a), Box::pin(b)]).await
    };
    let leader_pid = c.consul_peers[leader_index].0.pid().unwrap();
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(leader_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    };
    let (results, ()) = tokio::join!(run, kill);
    for r in results {
        r.expect("both participants finish despite the election");
    }
    let survivor = c.consul(others[0], Some(c.management.clone()));
    let new_leader = survivor.leader().await.unwrap().unwrap();
    assert_ne!(new_leader, leader);
    let state: kraken_bootstrap::State = serde_json::from_slice(
        &survivor
            .kv_get("kraken/leaderchange/bootstrap/state", None)
            .await
            .unwrap()
            .0
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(state.done.len(), Step::ALL.len());
    c.consul_ips.remove(leader_index);
    c.consul_peers.remove(leader_index);
    assert_eq!(c.census().await, EVERYTHING_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttled_ssm_is_retried_and_the_bootstrap_completes() {
    captured();
    let c = cluster("throttled").await;
    let (proxy, seen) = throttling_proxy(c.moto.endpoint(), 4, &SSM_THROTTLED).await;
    let throttled = moto_store(
        &format!("http://{proxy}"),
        &c.cluster,
        ("testing", "testing"),
    )
    .await;
    c.participant_with(0, None, &throttled).await.unwrap();
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) > 4);
    assert_eq!(c.census().await, EVERYTHING_ONCE);
    c.tokens_work().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssm_access_denied_is_named_and_does_no_damage() {
    captured();
    let c = cluster("denied").await;
    // A second moto that enforces IAM from its 4th request: a node whose
    // role may not write the secret store.
    let strict = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]).await;
    let (key_id, key_secret) = restricted_user(&strict.endpoint(), "ssm:GetParameter").await;
    let denied = moto_store(&strict.endpoint(), &c.cluster, (&key_id, &key_secret)).await;
    let err = c.participant_with(0, None, &denied).await.unwrap_err();
    let text = err.to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(text.contains("ssm:PutParameter"), "{text}");
    assert!(
        text.contains("/kraken/denied/consul/tokens/agent"),
        "{text}"
    );
    // No token was created without its secret stored first.
    let admin = c.consul(0, Some(c.management.clone()));
    let tokens = admin.acl_tokens().await.unwrap();
    assert!(
        tokens.iter().all(|t| !t.description.starts_with("kraken:")),
        "{tokens:?}"
    );
    // A node that may write then finishes the job.
    c.participant(1, None).await.unwrap();
    assert_eq!(c.census().await, EVERYTHING_ONCE);
    c.tokens_work().await;
}

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
