//! The cluster every bootstrap test runs against, its participants, and
//! what they count and check afterwards.

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
pub(super) struct Capture(pub(super) Mutex<Vec<String>>);

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
pub(super) fn captured() -> &'static Capture {
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

pub(super) struct Cluster {
    pub(super) moto: Moto,
    pub(super) cluster: String,
    pub(super) consul_ips: Vec<Ipv4Addr>,
    pub(super) consul_peers: Vec<(Peer, TestDir)>,
    pub(super) nomad: NomadServer,
    pub(super) management: Token,
    pub(super) healthy_at: Instant,
}

/// Plain HTTP: these tests are about the bootstrap protocol, on Consul
/// servers rendered without certificates; `tls/` and `run.rs` cover the
/// same bootstrap with TLS on.
fn settings() -> Settings {
    Settings::parse(
        "[secrets]\nbackend = \"ssm\"\n\n[tls]\nenabled = false\n\n\
         [consul]\nhttp_addr = \"http://127.0.0.1:8500\"\n\n\
         [nomad]\nhttp_addr = \"http://127.0.0.1:4646\"\n",
    )
    .unwrap()
}

pub(super) async fn store(moto: &Moto, cluster: &str) -> Store {
    moto_store(&moto.endpoint(), cluster, TEST_KEY).await
}

/// Three Consul servers rendered and started as `run` would, each with the
/// secrets it got from step 3; and a Nomad server with ACLs on.
pub(super) async fn cluster(name: &str) -> Cluster {
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
            vpc_id: None,
            tags_source: Default::default(),
        };
        let mut s = settings();
        s.consul.client_addr = ip.to_string();
        s.paths.consul_data_dir = dir.path().join("data");
        let spec = NodeSpec::from_tags(&identity.tags, &s.intent).unwrap();
        let store = store(&moto, name).await;
        let secrets = secrets::secrets(&store, &spec, &identity.instance_id, &s, SecretsMode::Boot)
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
pub(super) const EVERYTHING_ONCE: (usize, usize, usize, usize) =
    (POLICIES.len(), ROLE_TOKENS.len(), 1, 1);

pub(super) fn lease() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(10),
        lock_delay: Duration::from_secs(1),
        wait: Duration::from_secs(5),
        ..LeaseSettings::default()
    }
}

impl Cluster {
    pub(super) fn consul(&self, i: usize, token: Option<Token>) -> Consul {
        Consul::new(
            &format!("http://{}:8500", self.consul_ips[i % self.consul_ips.len()]),
            token,
        )
        .unwrap()
    }

    /// One participant: the Consul phase as a Consul server would run it,
    /// then the Nomad phase as a Nomad server would.
    pub(super) async fn participant(
        &self,
        i: usize,
        crash_after: Option<Step>,
    ) -> Result<Vec<Report>, BootstrapError> {
        let store = store(&self.moto, &self.cluster).await;
        self.participant_with(i, crash_after, &store).await
    }

    pub(super) async fn participant_with(
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
    pub(super) async fn census(&self) -> (usize, usize, usize, usize) {
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
    pub(super) async fn tokens_work(&self) {
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

    pub(super) async fn all_secret_values(&self) -> Vec<String> {
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
