//! The agent's configs and its start-and-wait logic against real Consul and
//! Nomad on loopback, and its HTTP clients against live servers.
//!
//! Services are started by a `ServiceManager` that runs the real binaries
//! as processes of the test (systemd itself is exercised in the VM tests);
//! everything the agent waits on is the real server answering.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::node::settings;
use crate::common::*;
use kraken_hashi::{Consul, Nomad, SessionBehavior, Token};
use kraken_start::{
    Action, Deadlines, ServiceManager, ServiceStep, StartError, StartPlan, start_services,
};
use kraken_testkit::{ConsulDev, LoopbackAddrs, Peer, PeerCommand, TestDir};

/// Runs each unit as a child process from the configs the agent rendered.
struct Processes {
    commands: HashMap<String, PeerCommand>,
    running: Mutex<HashMap<String, Peer>>,
}

impl Processes {
    fn new(commands: Vec<(&str, PeerCommand)>) -> Processes {
        Processes {
            commands: commands
                .into_iter()
                .map(|(u, c)| (u.to_owned(), c))
                .collect(),
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl ServiceManager for Processes {
    async fn needs_daemon_reload(&self, _unit: &str) -> Result<bool, StartError> {
        Ok(false)
    }
    async fn daemon_reload(&self) -> Result<(), StartError> {
        Ok(())
    }
    async fn enable(&self, _unit: &str) -> Result<(), StartError> {
        Ok(())
    }
    async fn start(&self, unit: &str) -> Result<(), StartError> {
        let peer = self.commands[unit].spawn();
        self.running.lock().unwrap().insert(unit.to_owned(), peer);
        Ok(())
    }
    async fn restart(&self, unit: &str) -> Result<(), StartError> {
        if let Some(mut p) = self.running.lock().unwrap().remove(unit) {
            p.kill();
        }
        self.start(unit).await
    }
    async fn reload(&self, unit: &str) -> Result<(), StartError> {
        if let Some(pid) = self.running.lock().unwrap().get(unit).and_then(|p| p.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
        Ok(())
    }
    async fn main_pid(&self, unit: &str) -> Result<Option<u32>, StartError> {
        Ok(self.running.lock().unwrap().get(unit).and_then(|p| p.pid()))
    }
    async fn describe(&self, unit: &str) -> Result<kraken_start::UnitState, StartError> {
        Ok(kraken_start::UnitState {
            enabled: "enabled".into(),
            active: if self.is_active(unit).await? {
                "active"
            } else {
                "inactive"
            }
            .into(),
            recent_log: Vec::new(),
        })
    }
    async fn is_active(&self, unit: &str) -> Result<bool, StartError> {
        Ok(self
            .running
            .lock()
            .unwrap()
            .get_mut(unit)
            .is_some_and(|p| p.is_running()))
    }
}

fn node_file(
    dir: &Path,
    ip: Ipv4Addr,
    tags: &[(&str, &str)],
    consul: &[Ipv4Addr],
    nomad: &[Ipv4Addr],
) -> PathBuf {
    let list = |v: &[Ipv4Addr]| {
        v.iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tags: String = tags
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}\n"))
        .collect();
    let text = format!(
        "[identity]\ninstance_id = \"i-{:08x}\"\nregion = \"us-east-1\"\navailability_zone = \"us-east-1a\"\nprivate_ipv4 = \"{ip}\"\n\n[identity.tags]\n{tags}\n[peers]\nconsul_servers = [{}]\nnomad_servers = [{}]\n",
        u32::from(ip),
        list(consul),
        list(nomad)
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Renders one node's configs with the agent binary into their real
/// (temp) paths via `--out`, and issues its certificates from `pki` as
/// `run` would; returns the directory of the configs.
fn render(
    dir: &Path,
    ip: Ipv4Addr,
    tags: &[(&str, &str)],
    consul: &[Ipv4Addr],
    nomad: &[Ipv4Addr],
    pki: &TestPki,
) -> PathBuf {
    let node = node_file(dir, ip, tags, consul, nomad);
    let out = dir.join("rendered");
    let result = agent(
        &AwsEnv::default(),
        &settings(ip, dir),
        &[
            "render",
            "--node",
            node.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
    );
    assert!(result.status.success(), "{}", text(&result));
    pki.issue(&node, &settings(ip, dir));
    out
}

fn consul_api(ip: Ipv4Addr, dir: &Path) -> Consul {
    Consul::with_tls(
        &format!("https://{ip}:8501"),
        None,
        Some(&node_tls(dir, "consul")),
    )
    .unwrap()
}

fn deadlines() -> Deadlines {
    Deadlines {
        answer: Duration::from_secs(60),
        leader: Duration::from_secs(120),
        poll: Duration::from_millis(250),
    }
}

fn consul_plan() -> StartPlan {
    StartPlan {
        consul: ServiceStep {
            unit: "consul.service".into(),
            action: Action::Restart,
        },
        consul_server: true,
        docker: None,
        nomad: None,
        nomad_server: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_configs_form_a_three_server_consul_cluster() {
    // With TLS as rendered: HTTPS only, every RPC caller presents a
    // certificate, servers must prove they are server.dc1.consul.
    let pki = TestPki::new("live");
    let ips = LoopbackAddrs::allocate(3);
    let dirs: Vec<TestDir> = (0..3).map(|_| TestDir::new("consul-node")).collect();
    let tags = [
        ("kraken:cluster", "live"),
        ("kraken:roles", "consul-server"),
    ];
    let mut managers = Vec::new();
    for (ip, dir) in ips.iter().zip(&dirs) {
        let out = render(dir.path(), *ip, &tags, &ips, &[], &pki);
        let cmd = PeerCommand::consul("consul", dir.path())
            .arg("agent")
            .arg(format!("-config-file={}", out.join("consul.hcl").display()));
        managers.push(Processes::new(vec![("consul.service", cmd)]));
    }
    let clients: Vec<Consul> = ips
        .iter()
        .zip(&dirs)
        .map(|(ip, dir)| consul_api(*ip, dir.path()))
        .collect();
    let nomad = Nomad::new("http://127.0.0.1:1", None).unwrap();
    // All three boot at once, as an autoscaling group does; each waits for
    // the leader the three of them elect.
    let (plan, deadlines) = (consul_plan(), deadlines());
    let start = |i: usize| {
        start_services(
            &managers[i],
            &plan,
            &clients[i],
            &nomad,
            &deadlines,
            &|_| {},
        )
    };
    let (r0, r1, r2) = tokio::join!(start(0), start(1), start(2));
    let results = [r0, r1, r2];
    let mut leaders = Vec::new();
    for r in results {
        let report = r.expect("start_services");
        assert_eq!(
            report.restarted,
            vec!["consul.service".to_owned()],
            "a new config (re)starts"
        );
        leaders.push(report.consul_leader.expect("leader"));
    }
    let peers = clients[0].raft_peers().await.unwrap();
    assert_eq!(peers.len(), 3, "{peers:?}");
    // Members need a token under default-deny ACLs; the Raft view above
    // and the leader every node agrees on do not.
    let leader = clients[0].leader().await.unwrap().unwrap();
    assert!(
        leaders.iter().all(|l| *l == leader),
        "{leaders:?} vs {leader}"
    );
    assert!(
        ips.iter().any(|ip| leader.starts_with(&ip.to_string())),
        "{leader}"
    );

    // A second run over a converged node starts nothing again.
    let mut plan = consul_plan();
    plan.consul.action = Action::Nothing;
    let again = start_services(
        &managers[0],
        &plan,
        &clients[0],
        &nomad,
        &deadlines,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(again.already_running, vec!["consul.service".to_owned()]);
    assert!(again.started.is_empty() && again.restarted.is_empty());

    // A Consul client (a Nomad client node's Consul) joins over TLS with
    // its consul-client certificate and reaches the leader through RPC.
    let cip = LoopbackAddrs::allocate(1)[0];
    let cdir = TestDir::new("consul-client-node");
    let out = render(
        cdir.path(),
        cip,
        &[("kraken:cluster", "live"), ("kraken:roles", "nomad-client")],
        &ips,
        &[],
        &pki,
    );
    let client_node = Processes::new(vec![(
        "consul.service",
        PeerCommand::consul("consul", cdir.path())
            .arg("agent")
            .arg(format!("-config-file={}", out.join("consul.hcl").display())),
    )]);
    let mut plan = consul_plan();
    plan.consul_server = false;
    let client_api = consul_api(cip, cdir.path());
    start_services(
        &client_node,
        &plan,
        &client_api,
        &nomad,
        &deadlines,
        &|_| {},
    )
    .await
    .unwrap();
    let seen = kraken_testkit::wait_for(
        "the client to see the leader",
        Duration::from_secs(60),
        || async { client_api.leader().await.ok().flatten() },
    )
    .await
    .unwrap();
    assert_eq!(seen, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_server_times_out_with_what_it_saw() {
    let ips = LoopbackAddrs::allocate(3);
    let dir = TestDir::new("lonely");
    // Expects three servers; only this one ever starts.
    let out = render(
        dir.path(),
        ips[0],
        &[
            ("kraken:cluster", "live"),
            ("kraken:roles", "consul-server"),
        ],
        &ips,
        &[],
        &TestPki::new("live"),
    );
    let cmd = PeerCommand::consul("consul", dir.path())
        .arg("agent")
        .arg(format!("-config-file={}", out.join("consul.hcl").display()));
    let m = Processes::new(vec![("consul.service", cmd)]);
    let consul = consul_api(ips[0], dir.path());
    let nomad = Nomad::new("http://127.0.0.1:1", None).unwrap();
    let mut d = deadlines();
    d.leader = Duration::from_secs(5);
    let err = start_services(&m, &consul_plan(), &consul, &nomad, &d, &|_| {})
        .await
        .unwrap_err();
    let t = err.to_string();
    assert!(
        t.contains("a Consul Raft leader did not happen within 5s"),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_nomad_server_and_client_register_with_class_and_meta() {
    // Nomad with TLS as rendered (mTLS on HTTP and RPC, servers proving
    // server.global.nomad); the test's Consul is a plain dev agent.
    let pki = TestPki::new("live");
    let consul = ConsulDev::start().await;
    let ips = LoopbackAddrs::allocate(2);
    let (server_ip, client_ip) = (ips[0], ips[1]);
    let sdir = TestDir::new("nomad-server-node");
    let cdir = TestDir::new("nomad-client-node");
    let server_tags = [
        ("kraken:cluster", "live"),
        ("kraken:roles", "nomad-server"),
        ("kraken:nomad-servers", "1"),
    ];
    let hostile = "a \"quoted\" ${value} %{x} \\ end";
    let client_tags = [
        ("kraken:cluster", "live"),
        ("kraken:roles", "nomad-client"),
        ("kraken:node-class", "edge"),
        ("kraken:meta:note", hostile),
    ];
    let s_out = render(
        sdir.path(),
        server_ip,
        &server_tags,
        &[consul.ip()],
        &[server_ip],
        &pki,
    );
    let c_out = render(
        cdir.path(),
        client_ip,
        &client_tags,
        &[consul.ip()],
        &[server_ip],
        &pki,
    );
    for (out, d) in [(&s_out, &sdir), (&c_out, &cdir)] {
        // The Consul integration points at the dev agent of this test.
        let path = out.join("nomad.hcl");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                &format!("{}:8501", path_ip(d.path())),
                &consul.http_addr().to_string(),
            )
            .replace("ssl          = true", "ssl          = false");
        std::fs::write(&path, text).unwrap();
    }
    let server = Processes::new(vec![(
        "nomad.service",
        PeerCommand::nomad("nomad", sdir.path())
            .arg("agent")
            .arg(format!("-config={}", s_out.join("nomad.hcl").display())),
    )]);
    let client = Processes::new(vec![(
        "nomad.service",
        PeerCommand::nomad("nomad", cdir.path())
            .arg("agent")
            .arg(format!("-config={}", c_out.join("nomad.hcl").display())),
    )]);
    let consul_api = Consul::new(&consul.http_url(), None).unwrap();
    let nomad_api = |ip: Ipv4Addr, dir: &Path, token: Option<Token>| {
        Nomad::with_tls(
            &format!("https://{ip}:4646"),
            token,
            Some(&node_tls(dir, "nomad")),
        )
        .unwrap()
    };
    let server_api = nomad_api(server_ip, sdir.path(), None);
    let client_api = nomad_api(client_ip, cdir.path(), None);
    let plan = |server: bool| StartPlan {
        consul: ServiceStep {
            unit: "consul.service".into(),
            action: Action::Nothing,
        },
        consul_server: false,
        docker: None,
        nomad: Some(ServiceStep {
            unit: "nomad.service".into(),
            action: Action::Restart,
        }),
        nomad_server: server,
    };
    // Consul is the test's dev agent: "consul.service" is not ours to start.
    let with_consul = |p: &Processes| {
        p.running.lock().unwrap().insert(
            "consul.service".into(),
            PeerCommand::new("consul-placeholder", "sleep", Path::new("/tmp"))
                .arg("3600")
                .spawn(),
        );
    };
    with_consul(&server);
    with_consul(&client);
    let report = start_services(
        &server,
        &plan(true),
        &consul_api,
        &server_api,
        &deadlines(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(report.nomad_leader.is_some());
    start_services(
        &client,
        &plan(false),
        &consul_api,
        &client_api,
        &deadlines(),
        &|_| {},
    )
    .await
    .unwrap();

    // ACLs are on in what we render: bootstrap this test cluster to look.
    let http = node_http(sdir.path(), "nomad");
    let boot: serde_json::Value = http
        .put(format!("https://{server_ip}:4646/v1/acl/bootstrap"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = Token::new(boot["SecretID"].as_str().unwrap());
    let anonymous = server_api.nodes().await.unwrap_err();
    assert_eq!(anonymous.status(), Some(403), "{anonymous}");
    let admin = nomad_api(server_ip, sdir.path(), Some(token.clone()));
    let node = kraken_testkit::wait_for("client node ready", Duration::from_secs(90), || async {
        let nodes = admin.nodes().await.ok()?;
        nodes.into_iter().find(|n| n.status == "ready")
    })
    .await
    .unwrap();
    assert_eq!(node.node_class, "edge");
    let detail: serde_json::Value = http
        .get(format!("https://{server_ip}:4646/v1/node/{}", node.id))
        .header("X-Nomad-Token", token.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["Meta"]["note"], hostile,
        "the tag value arrives verbatim"
    );
    assert_eq!(detail["Meta"]["kraken.cluster"], "live");
    let members = admin.members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].status, "alive");
}

fn path_ip(dir: &Path) -> String {
    let node = std::fs::read_to_string(dir.join("agent.toml")).unwrap();
    node.lines()
        .find_map(|l| l.strip_prefix("client_addr = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned()
}

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
    joiner.kill();
}
