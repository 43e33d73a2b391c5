use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::dir::TestDir;
use crate::net::LoopbackAddrs;
use crate::peer::{Peer, PeerCommand};
use crate::wait::{START_TIMEOUT, get_json, http_client, poll};

/// Consul's default HTTP port; every starter here uses the defaults, on an
/// address of its own.
pub const CONSUL_HTTP_PORT: u16 = 8500;

/// Settings every test agent gets: no phoning home (there is no network),
/// and Raft timing as production recommends rather than the lax default,
/// which only makes elections slower.
const COMMON_HCL: [&str; 4] = [
    "-hcl",
    "disable_update_check = true",
    "-hcl",
    "performance { raft_multiplier = 1 }",
];

/// `consul agent -dev` on a loopback address of its own: a single server
/// that is its own leader, state in memory, ACLs off.
#[derive(Debug)]
pub struct ConsulDev {
    peer: Peer,
    ip: Ipv4Addr,
    dir: TestDir,
}

impl ConsulDev {
    pub async fn start() -> ConsulDev {
        ConsulDev::start_with_args(&[]).await
    }

    /// With extra `consul agent` arguments, e.g. `["-hcl", "acl { enabled = true }"]`.
    pub async fn start_with_args(extra: &[&str]) -> ConsulDev {
        let ip = LoopbackAddrs::allocate(1)[0];
        let dir = TestDir::new("consul-dev");
        let mut peer = PeerCommand::consul("consul-dev", dir.path())
            .args(["agent", "-dev", "-log-level", "info", "-node"])
            .arg(format!("dev-{ip}"))
            .args(bind_args(ip))
            .args(COMMON_HCL)
            .args(extra)
            .spawn();
        let url = url(ip);
        if let Err(e) = wait_leader(&mut peer, &url).await {
            panic!("consul -dev on {ip} did not elect itself: {e:#}");
        }
        ConsulDev { peer, ip, dir }
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `IP:8500`, the form `CONSUL_HTTP_ADDR` and Nomad's `consul.address` take.
    pub fn http_addr(&self) -> SocketAddr {
        (self.ip, CONSUL_HTTP_PORT).into()
    }

    /// `http://IP:8500`.
    pub fn http_url(&self) -> String {
        url(self.ip)
    }

    pub fn peer(&mut self) -> &mut Peer {
        &mut self.peer
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `n` Consul servers (`-server -bootstrap-expect n`), each on its own
/// loopback address with Consul's default ports, joined to each other, with
/// data dirs on disk so a stopped server can come back as itself.
#[derive(Debug)]
pub struct ConsulCluster {
    servers: Vec<Option<Peer>>,
    ips: Vec<Ipv4Addr>,
    dir: TestDir,
}

impl ConsulCluster {
    /// Starts the servers and waits until they agree on a leader and all `n`
    /// are Raft voters.
    pub async fn start(n: usize) -> ConsulCluster {
        assert!(n >= 1, "a cluster needs a server");
        let ips = LoopbackAddrs::allocate(n);
        let dir = TestDir::new("consul-cluster");
        let mut cluster = ConsulCluster {
            servers: (0..n).map(|_| None).collect(),
            ips,
            dir,
        };
        for i in 0..n {
            cluster.servers[i] = Some(cluster.command(i).spawn());
        }
        if let Err(e) = cluster.wait_converged(START_TIMEOUT).await {
            panic!("consul cluster of {n} did not form: {e:#}");
        }
        cluster
    }

    fn command(&self, i: usize) -> PeerCommand {
        let ip = self.ips[i];
        let data = self.server_dir(i).join("data");
        std::fs::create_dir_all(&data).expect("consul data dir");
        let mut cmd = PeerCommand::consul(&format!("server-{i}"), self.dir.path())
            .args(["agent", "-server", "-log-level", "info"])
            .args(["-bootstrap-expect", &self.ips.len().to_string()])
            .args(["-node", &format!("server-{i}")])
            .arg("-data-dir")
            .arg(&data)
            .args(bind_args(ip))
            // The default 30 s between join attempts would stall formation
            // whenever a peer is slower to listen than the first attempt.
            .args(["-retry-interval", "1s"])
            .args(COMMON_HCL);
        for (j, other) in self.ips.iter().enumerate() {
            if j != i {
                cmd = cmd.args(["-retry-join", &other.to_string()]);
            }
        }
        cmd
    }

    /// The dir holding server `i`'s data dir.
    pub fn server_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("server-{i}"))
    }

    pub fn len(&self) -> usize {
        self.ips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.ips[i]
    }

    pub fn http_addr(&self, i: usize) -> SocketAddr {
        (self.ips[i], CONSUL_HTTP_PORT).into()
    }

    pub fn http_url(&self, i: usize) -> String {
        url(self.ips[i])
    }

    /// Server `i`'s process, if it is running.
    pub fn server(&mut self, i: usize) -> Option<&mut Peer> {
        self.servers[i].as_mut()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].is_some()
    }

    /// Kills server `i` outright, as a crash would: it does not leave the
    /// cluster, and its data dir stays for [`ConsulCluster::start_server`].
    pub fn stop_server(&mut self, i: usize) {
        if let Some(mut peer) = self.servers[i].take() {
            peer.kill();
        }
    }

    /// Starts server `i` again with its old data dir and address, and waits
    /// until the cluster has a leader and all servers are voters again.
    pub async fn start_server(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "server {i} is already running");
        self.servers[i] = Some(self.command(i).spawn());
        if let Err(e) = self.wait_converged(START_TIMEOUT).await {
            panic!("consul server {i} did not rejoin: {e:#}");
        }
    }

    /// Index of the leader, as every running server sees it; waits for the
    /// running servers to agree on one (e.g. after the old one was stopped).
    pub async fn wait_leader(&mut self, timeout: Duration) -> Result<usize> {
        let client = http_client();
        let ips = self.ips.clone();
        poll("the consul servers to agree on a leader", timeout, || {
            let alive = self.check_running();
            let running: Vec<usize> = (0..ips.len()).filter(|&i| self.is_running(i)).collect();
            let (client, ips) = (client.clone(), ips.clone());
            async move {
                alive?;
                let mut agreed = None;
                for &i in &running {
                    let leader = match leader(&client, &url(ips[i])).await {
                        Ok(leader) => leader,
                        Err(e) => return Ok(Err(format!("server-{i}: {e}"))),
                    };
                    let index = ips
                        .iter()
                        .position(|ip| leader == format!("{ip}:8300"))
                        .ok_or_else(|| format!("server-{i} sees leader {leader:?}"));
                    let index = match index {
                        Ok(index) => index,
                        Err(e) => return Ok(Err(e)),
                    };
                    // Followers keep naming a killed leader until their
                    // leader lease runs out.
                    if !running.contains(&index) {
                        return Ok(Err(format!(
                            "server-{i} still follows stopped server-{index}"
                        )));
                    }
                    if agreed.is_some_and(|a| a != index) {
                        return Ok(Err("servers disagree on the leader".into()));
                    }
                    agreed = Some(index);
                }
                Ok(agreed.ok_or_else(|| "no server is running".to_string()))
            }
        })
        .await
    }

    /// Waits until every running server sees the same leader and all the
    /// cluster's servers as voters.
    pub async fn wait_converged(&mut self, timeout: Duration) -> Result<()> {
        self.wait_leader(timeout).await?;
        let client = http_client();
        let n = self.len();
        let urls: Vec<String> = (0..n)
            .filter(|&i| self.is_running(i))
            .map(|i| self.http_url(i))
            .collect();
        poll(&format!("{n} consul voters"), timeout, || {
            let alive = self.check_running();
            let (client, urls) = (client.clone(), urls.clone());
            async move {
                alive?;
                for url in &urls {
                    let peers = match get_json(&client, &format!("{url}/v1/status/peers")).await {
                        Ok(Value::Array(peers)) => peers.len(),
                        Ok(other) => return Ok(Err(format!("{url}: peers {other}"))),
                        Err(e) => return Ok(Err(e)),
                    };
                    if peers != n {
                        return Ok(Err(format!("{url} sees {peers} voters")));
                    }
                }
                Ok(Ok(()))
            }
        })
        .await
    }

    /// Fails if a server that should run has exited (a bad flag, a port
    /// taken): waiting for it would only end in a timeout.
    fn check_running(&mut self) -> Result<()> {
        for peer in self.servers.iter_mut().flatten() {
            peer.check_running()?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn bind_args(ip: Ipv4Addr) -> Vec<String> {
    vec![
        "-bind".into(),
        ip.to_string(),
        "-client".into(),
        ip.to_string(),
    ]
}

fn url(ip: Ipv4Addr) -> String {
    format!("http://{ip}:{CONSUL_HTTP_PORT}")
}

/// The leader's `IP:port`, or an error text when there is none yet.
async fn leader(client: &reqwest::Client, url: &str) -> std::result::Result<String, String> {
    match get_json(client, &format!("{url}/v1/status/leader")).await? {
        Value::String(leader) if !leader.is_empty() => Ok(leader),
        other => Err(format!("no leader yet ({other})")),
    }
}

async fn wait_leader(peer: &mut Peer, url: &str) -> Result<String> {
    let client = http_client();
    poll(&format!("a leader at {url}"), START_TIMEOUT, || {
        let alive = peer.check_running();
        let client = client.clone();
        async move {
            alive?;
            Ok(leader(&client, url).await)
        }
    })
    .await
}
