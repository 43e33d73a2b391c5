use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde_json::Value;

use crate::dir::TestDir;
use crate::net::LoopbackAddrs;
use crate::peer::{Peer, PeerCommand};
use crate::wait::{START_TIMEOUT, get_json, http_client, poll};

pub const NOMAD_HTTP_PORT: u16 = 4646;
pub const NOMAD_RPC_PORT: u16 = 4647;

/// Settings shared by the test servers and clients. Nomad talks to a Consul
/// agent at 127.0.0.1:8500 unless told otherwise; a developer's own Consul
/// there would get the test's services, so each agent is pointed at its own
/// address, where no Consul listens, and told not to use it.
fn common_hcl(name: &str, ip: Ipv4Addr, data_dir: &Path) -> String {
    format!(
        r#"name = "{name}"
data_dir = "{data}"
bind_addr = "{ip}"
log_level = "INFO"
disable_update_check = true
advertise {{
  http = "{ip}"
  rpc  = "{ip}"
  serf = "{ip}"
}}
consul {{
  address          = "{ip}:8500"
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}}
"#,
        data = data_dir.display()
    )
}

/// A Nomad server (`bootstrap_expect = 1`) on a loopback address of its own.
#[derive(Debug)]
pub struct NomadServer {
    peer: Peer,
    ip: Ipv4Addr,
    dir: TestDir,
}

impl NomadServer {
    pub async fn start() -> NomadServer {
        NomadServer::start_with_config("").await
    }

    /// With `extra_hcl` appended to the generated config (e.g. `acl { enabled = true }`).
    pub async fn start_with_config(extra_hcl: &str) -> NomadServer {
        let ip = LoopbackAddrs::allocate(1)[0];
        let dir = TestDir::new("nomad-server");
        let config = format!(
            "{}server {{\n  enabled = true\n  bootstrap_expect = 1\n}}\n{extra_hcl}\n",
            common_hcl(&format!("server-{ip}"), ip, &dir.path().join("data"))
        );
        let mut peer = spawn_agent("nomad-server", dir.path(), &config);
        wait_for_leader(&mut peer, ip).await;
        NomadServer { peer, ip, dir }
    }

    /// The server killed, its data removed and a new one started at the
    /// same address with the same config: an instance replaced with its
    /// disk lost (Nomad's ACLs, jobs and keyring gone).
    pub async fn replace_losing_data(&mut self) {
        self.peer.kill();
        let data = self.dir.path().join("data");
        std::fs::remove_dir_all(&data)
            .unwrap_or_else(|e| panic!("removing {}: {e}", data.display()));
        let config = std::fs::read_to_string(self.dir.path().join("nomad-server.hcl"))
            .expect("the server's config");
        self.peer = spawn_agent("nomad-server-replaced", self.dir.path(), &config);
        wait_for_leader(&mut self.peer, self.ip).await;
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `IP:4646`.
    pub fn http_addr(&self) -> SocketAddr {
        (self.ip, NOMAD_HTTP_PORT).into()
    }

    /// `http://IP:4646`, the form `NOMAD_ADDR` takes.
    pub fn http_url(&self) -> String {
        url(self.ip)
    }

    /// `IP:4647`, what a client's `servers` list takes.
    pub fn rpc_addr(&self) -> SocketAddr {
        (self.ip, NOMAD_RPC_PORT).into()
    }

    pub fn peer(&mut self) -> &mut Peer {
        &mut self.peer
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A Nomad client with raw_exec enabled, registered with the given servers.
///
/// Clients on one machine share Nomad's cgroup (`/nomad`, or `nomad.slice`
/// on cgroups v2): Nomad 1.11 ignores `client.cgroup_parent` there. Tasks get
/// a cgroup per allocation under it, so concurrent test clients coexist.
#[derive(Debug)]
pub struct NomadClient {
    peer: Peer,
    ip: Ipv4Addr,
    node_id: String,
    dir: TestDir,
}

impl NomadClient {
    /// Starts a client of `servers` (their RPC addresses) and waits until its
    /// node is `ready` with raw_exec healthy.
    pub async fn start(servers: &[SocketAddr]) -> NomadClient {
        NomadClient::start_with_config(servers, "").await
    }

    pub async fn start_with_config(servers: &[SocketAddr], extra_hcl: &str) -> NomadClient {
        NomadClient::start_with_client_config(servers, "", extra_hcl).await
    }

    /// With `client_hcl` inside the `client` block (e.g. `chroot_env {...}`:
    /// Nomad reads one `client` block) and `extra_hcl` after the config.
    pub async fn start_with_client_config(
        servers: &[SocketAddr],
        client_hcl: &str,
        extra_hcl: &str,
    ) -> NomadClient {
        let ip = LoopbackAddrs::allocate(1)[0];
        let dir = TestDir::new("nomad-client");
        // Made here, 0711 as an image's /opt/nomad: Nomad would make it 0700,
        // and a task run as `nobody` could not reach its allocation.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("create the client's data dir");
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .expect("chmod the client's data dir");
        let name = format!("client-{ip}");
        let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        let config = format!(
            r#"{common}client {{
  enabled           = true
  servers           = [{servers}]
  network_interface = "lo"
  # A shared test machine's disk is often past Nomad's 80 % default: the
  # client would then collect a finished allocation (and its logs) before
  # a test reads them.
  gc_disk_usage_threshold  = 99
  gc_inode_usage_threshold = 99
{client_hcl}
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}
{extra_hcl}
"#,
            common = common_hcl(&name, ip, &dir.path().join("data")),
            servers = servers.join(", "),
        );
        let mut peer = spawn_agent("nomad-client", dir.path(), &config);
        let url = url(ip);
        let client = http_client();
        let node_id = poll(
            &format!("node {name} to be ready with raw_exec"),
            START_TIMEOUT,
            || {
                let alive = peer.check_running();
                let (client, url, name) = (client.clone(), url.clone(), name.clone());
                async move {
                    alive?;
                    // Asked of the client's own API, which forwards to a
                    // server: this also proves the client reaches one.
                    let nodes = match get_json(&client, &format!("{url}/v1/nodes")).await {
                        Ok(Value::Array(nodes)) => nodes,
                        Ok(other) => return Ok(Err(format!("nodes: {other}"))),
                        Err(e) => return Ok(Err(e)),
                    };
                    let Some(node) = nodes.iter().find(|n| n["Name"] == name.as_str()) else {
                        return Ok(Err("not registered yet".into()));
                    };
                    let raw_exec = &node["Drivers"]["raw_exec"];
                    Ok(
                        if node["Status"] == "ready" && raw_exec["Healthy"] == true {
                            Ok(node["ID"].as_str().unwrap_or_default().to_string())
                        } else {
                            Err(format!("status {}, raw_exec {raw_exec}", node["Status"]))
                        },
                    )
                }
            },
        )
        .await;
        let node_id = node_id.unwrap_or_else(|e| panic!("nomad client on {ip} not ready: {e:#}"));
        NomadClient {
            peer,
            ip,
            node_id,
            dir,
        }
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The client's own HTTP API, `http://IP:4646`.
    pub fn http_url(&self) -> String {
        url(self.ip)
    }

    pub fn http_addr(&self) -> SocketAddr {
        (self.ip, NOMAD_HTTP_PORT).into()
    }

    pub fn peer(&mut self) -> &mut Peer {
        &mut self.peer
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A Nomad server and one client registered with it: the smallest cluster
/// that runs jobs. Talk to it through [`NomadDev::http_url`].
#[derive(Debug)]
pub struct NomadDev {
    // The client first: dropped before the server, it does not spend its
    // last moments retrying a server that is gone.
    pub client: NomadClient,
    pub server: NomadServer,
}

impl NomadDev {
    pub async fn start() -> NomadDev {
        let server = NomadServer::start().await;
        let client = NomadClient::start(&[server.rpc_addr()]).await;
        NomadDev { client, server }
    }

    /// The server's HTTP API.
    pub fn http_url(&self) -> String {
        self.server.http_url()
    }
}

fn spawn_agent(name: &str, dir: &Path, config: &str) -> Peer {
    let path = dir.join(format!("{name}.hcl"));
    std::fs::write(&path, config).expect("write nomad config");
    PeerCommand::nomad(name, dir)
        .args(["agent", "-config"])
        .arg(&path)
        .spawn()
}

/// Until the server at `ip` has elected itself; panics with why not.
async fn wait_for_leader(peer: &mut Peer, ip: Ipv4Addr) {
    let url = url(ip);
    let client = http_client();
    let leader = poll(&format!("a leader at {url}"), START_TIMEOUT, || {
        let alive = peer.check_running();
        let (client, url) = (client.clone(), url.clone());
        async move {
            alive?;
            Ok(
                match get_json(&client, &format!("{url}/v1/status/leader")).await {
                    Ok(Value::String(l)) if !l.is_empty() => Ok(()),
                    Ok(other) => Err(format!("no leader yet ({other})")),
                    Err(e) => Err(e),
                },
            )
        }
    })
    .await;
    if let Err(e) = leader {
        panic!("nomad server on {ip} did not elect itself: {e:#}");
    }
}

fn url(ip: Ipv4Addr) -> String {
    format!("http://{ip}:{NOMAD_HTTP_PORT}")
}
