//! One node booted by `kraken-agent run` until `READY=1`: moto as EC2 and
//! SSM, the project's IMDS, real Consul and Nomad started through the
//! `systemctl` shim, the notify protocol read off a real socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_fake_imds::{FakeImds, FakeImdsHandle};
use kraken_testkit::{LoopbackAddrs, Moto, TestDir, consul_bin, nomad_bin};

use super::*;

/// Kills whatever the shim started, whatever happens to the test.
pub struct Units(std::path::PathBuf);

impl Drop for Units {
    fn drop(&mut self) {
        for unit in ["consul.service", "nomad.service"] {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(format!("{unit}.pid"))) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

/// Settings that put one node's services on its own loopback address, its
/// files under `dir`, and its units behind the systemctl shim.
pub fn settings(ip: std::net::Ipv4Addr, dir: &Path) -> String {
    format!(
        r#"
[paths]
consul_config_dir = "{d}/consul.d"
nomad_config_dir = "{d}/nomad.d"
docker_daemon_json = "{d}/docker/daemon.json"
consul_data_dir = "{d}/consul-data"
nomad_data_dir = "{d}/nomad-data"
status_dir = "{d}/run"
operator_env = "{d}/kraken-env.sh"

[consul]
http_addr = "https://{ip}:8501"
client_addr = "{ip}"
user = "root"
group = "root"

[nomad]
http_addr = "https://{ip}:4646"
bind_addr = "{ip}"
raw_exec = true
network_interface = "lo"

[discovery]
refresh_secs = 2
retry_min_secs = 1
retry_max_secs = 2

[start]
systemctl = "{shim}"
answer_timeout_secs = 60
leader_timeout_secs = 120
"#,
        d = dir.display(),
        shim = shim_path().display()
    )
}

pub struct Node {
    /// Shared by the nodes of one cluster ([`boot_beside`]).
    pub moto: std::sync::Arc<Moto>,
    pub imds: FakeImdsHandle,
    pub ip: std::net::Ipv4Addr,
    pub id: String,
    pub config: PathBuf,
    pub child: tokio::process::Child,
    pub messages: Vec<String>,
    pub ready_after: Duration,
    _units: Units,
    // Last: removed after the processes above are gone.
    pub dir: TestDir,
}

impl Node {
    pub fn env(&self) -> AwsEnv {
        AwsEnv::new(&self.moto.endpoint(), &self.imds.endpoint())
    }

    /// `kraken-agent ARGS` as this node's systemd would run it.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(agent_bin());
        self.env().apply(&mut cmd);
        let d = self.dir.path();
        cmd.env("KRAKEN_CONFIG", &self.config)
            .env("KRAKEN_SHIM_DIR", d)
            .env(
                "KRAKEN_SHIM_consul_service",
                format!(
                    "{} agent -config-dir={}/consul.d",
                    consul_bin().display(),
                    d.display()
                ),
            )
            .env(
                "KRAKEN_SHIM_nomad_service",
                format!(
                    "env -u AWS_CA_BUNDLE {} agent -config={}/nomad.d",
                    nomad_bin().display(),
                    d.display()
                ),
            )
            .args(args);
        cmd
    }

    /// The node's TLS files for `service` ("consul" or "nomad"): what the
    /// agent and the operator environment use.
    pub fn tls(&self, service: &str) -> kraken_hashi::ClientTls {
        node_tls(self.dir.path(), service)
    }

    pub fn consul(&self, token: Option<kraken_hashi::Token>) -> kraken_hashi::Consul {
        kraken_hashi::Consul::with_tls(
            &format!("https://{}:8501", self.ip),
            token,
            Some(&self.tls("consul")),
        )
        .unwrap()
    }

    pub fn nomad(&self, token: Option<kraken_hashi::Token>) -> kraken_hashi::Nomad {
        kraken_hashi::Nomad::with_tls(
            &format!("https://{}:4646", self.ip),
            token,
            Some(&self.tls("nomad")),
        )
        .unwrap()
    }

    pub fn log(&self) -> String {
        agent_log(self.dir.path())
    }

    /// For a test that stops this Consul server's agent but boots clients
    /// after: the same node-token task its agent runs
    /// (`steps::node_tokens`), in the test process, with the node's
    /// settings, TLS files and secrets. Booting clients wait for their own
    /// Consul token, which only the Consul leader's agent makes.
    pub async fn node_tokens_in_test(&self) -> tokio::task::JoinHandle<()> {
        use kraken_secrets::SecretStore;
        let settings =
            kraken_settings::Settings::parse(&std::fs::read_to_string(&self.config).unwrap())
                .unwrap();
        let t = tags(&[
            ("kraken:cluster", CLUSTER),
            ("kraken:roles", "consul-server"),
        ]);
        let spec = kraken_intent::NodeSpec::from_tags(&t, &settings.intent).unwrap();
        let store = self.store().await;
        let management = store
            .get(kraken_secrets::names::CONSUL_INITIAL_MANAGEMENT)
            .await
            .unwrap()
            .unwrap();
        let watch = kraken_agent::steps::node_tokens::Watch {
            settings,
            spec,
            node: self.id.clone(),
            own_ip: self.ip,
            store,
            management,
        };
        tokio::spawn(watch.run())
    }

    /// The node's secret store: moto's SSM, as the agent uses it.
    pub async fn store(&self) -> kraken_secrets::Store {
        moto_store(&self.moto.endpoint(), CLUSTER, TEST_KEY).await
    }

    /// Stops this node's agent (SIGTERM, as systemd would) and starts a new
    /// one with the same configuration, as `systemctl restart kraken-agent`
    /// would; returns once it reports `READY=1`, or panics with its log.
    pub async fn restart_agent(&mut self, ready_within: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let notify_path = self.dir.path().join("notify-again.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.path().join(name))
                .unwrap()
        };
        let mut cmd = self.command(&["run"]);
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .stdout(log("agent.log"))
            .stderr(log("agent.err"));
        self.child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let ready = tokio::time::timeout(ready_within, async {
            loop {
                let n = notify.recv(&mut buf).await.unwrap();
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    break;
                }
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "no READY=1 after the restart\n{}",
            self.log()
        );
    }

    pub fn shim(&self, args: &[&str]) {
        let ok = std::process::Command::new(shim_path())
            .env("KRAKEN_SHIM_DIR", self.dir.path())
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success() || args[0] == "stop", "shim {args:?}");
    }
}

/// What the agent of the node in `dir` has logged so far.
pub fn agent_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.err")).unwrap_or_default()
}

pub fn shim_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/integration/systemctl-shim.sh")
}

/// The cluster of a [`boot`]ed node.
pub const CLUSTER: &str = "solo";

/// Boots a Consul+Nomad server node of cluster "solo" (1 expected server
/// of each) and waits for `READY=1`. IMDS does not answer for the first
/// `imds_outage`.
pub async fn boot(imds_outage: Duration) -> Node {
    boot_with(imds_outage, "").await
}

/// [`boot`] with more agent.toml sections (`extra`) after the usual ones.
pub async fn boot_with(imds_outage: Duration, extra: &str) -> Node {
    boot_as("consul-server,nomad-server", imds_outage, extra).await
}

/// [`boot_with`] for a node of `roles` (the `kraken:roles` tag).
pub async fn boot_as(roles: &str, imds_outage: Duration, extra: &str) -> Node {
    let moto = std::sync::Arc::new(Moto::start().await);
    boot_on(moto, roles, imds_outage, extra).await
}

/// [`boot_as`] on an existing moto (its S3 buckets and SSM secrets), in a
/// subnet of its own: a new cluster of the same name once the instances
/// of the one before are terminated.
pub async fn boot_on(
    moto: std::sync::Arc<Moto>,
    roles: &str,
    imds_outage: Duration,
    extra: &str,
) -> Node {
    let ip = LoopbackAddrs::allocate(1)[0];
    let [_, b, c, _] = ip.octets();
    let ec2 = ec2(&moto.endpoint()).await;
    let subnet = loopback_subnet(&ec2, b, c).await;
    boot_in(moto, &subnet, ip, roles, imds_outage, extra).await
}

/// Boots another node of `first`'s cluster, in its subnet (the next free
/// address of its /24) and on its moto, as a node of `roles`; waits for
/// `READY=1`.
pub async fn boot_beside(first: &Node, roles: &str, extra: &str) -> Node {
    let ec2 = ec2(&first.moto.endpoint()).await;
    let [a, b, c, _] = first.ip.octets();
    let subnets = ec2
        .describe_subnets()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("cidr-block")
                .values(format!("{a}.{b}.{c}.0/24"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let subnet = subnets.subnets()[0].subnet_id().unwrap().to_owned();
    // The /24 is this process's (LoopbackAddrs claims it whole); the first
    // node has .1.
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);
    let z = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ip = std::net::Ipv4Addr::new(a, b, c, z);
    boot_in(
        first.moto.clone(),
        &subnet,
        ip,
        roles,
        Duration::ZERO,
        extra,
    )
    .await
}

async fn boot_in(
    moto: std::sync::Arc<Moto>,
    subnet: &str,
    ip: std::net::Ipv4Addr,
    roles: &str,
    imds_outage: Duration,
    extra: &str,
) -> Node {
    let ec2 = ec2(&moto.endpoint()).await;
    let node_tags = tags(&[
        ("kraken:cluster", CLUSTER),
        ("kraken:roles", roles),
        ("kraken:consul-servers", "1"),
        ("kraken:nomad-servers", "1"),
    ]);
    let (id, launched_ip) = launch(&ec2, &node_tags, Some((subnet, ip))).await;
    assert_eq!(launched_ip, ip);
    let data = kraken_fake_imds::InstanceData {
        vpc_id: vpc_of(&ec2, &id).await,
        ..instance_data(&id, ip, node_tags)
    };
    let imds = FakeImds::start("127.0.0.1:0".parse().unwrap(), data)
        .await
        .unwrap();

    let dir = TestDir::new("node");
    let units = Units(dir.path().to_owned());
    let config = dir.path().join("agent.toml");
    // Short IMDS timeouts so an outage costs seconds, not minutes.
    std::fs::write(
        &config,
        format!(
            "{}\n[imds]\nconnect_timeout_ms = 300\nread_timeout_ms = 500\nattempts = 1\n{extra}",
            settings(ip, dir.path())
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();

    let mut node = Node {
        moto,
        imds,
        ip,
        id,
        config,
        child: tokio::process::Command::new("true").spawn().unwrap(),
        messages: Vec::new(),
        ready_after: Duration::ZERO,
        _units: units,
        dir,
    };
    let mut cmd = node.command(&["run"]);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .stdout(std::fs::File::create(node.dir.path().join("agent.log")).unwrap())
        .stderr(std::fs::File::create(node.dir.path().join("agent.err")).unwrap());
    let started = Instant::now();
    if !imds_outage.is_zero() {
        node.imds.set_hang(true);
    }
    node.child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(imds_outage).await;
    node.imds.set_hang(false);

    let mut buf = vec![0u8; 4096];
    let messages = &mut node.messages;
    let ready = tokio::time::timeout(Duration::from_secs(240), async {
        loop {
            let n = notify.recv(&mut buf).await.unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == "READY=1");
            messages.push(msg);
            if done {
                break;
            }
        }
    })
    .await;
    assert!(
        ready.is_ok(),
        "no READY=1; messages {:?}\n{}",
        node.messages,
        node.log()
    );
    node.ready_after = started.elapsed();
    node
}
