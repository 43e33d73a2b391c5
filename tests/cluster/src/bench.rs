//! `cluster bench`: the same VMs booted twice, once joined by the agent's
//! own discovery, once by Consul's and Nomad's cloud auto-join pointed at
//! moto, everything else equal. EC2 calls are counted by a proxy in front
//! of moto, per VM address and action, so both variants are counted the same
//! way (go-discover's calls included).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cluster::{self, Cluster, MOTO_PORT, Paths};
use crate::host;
use crate::topology::Topology;

const PROXY_PORT: u16 = 5002;

/// go-discover v1.1.0 (Consul's and Nomad's auto-join) forces EC2's
/// dual-stack endpoint and refuses a custom endpoint with it ("Dualstack and
/// custom endpoint are not supported"), so in the auto-join run the VMs
/// resolve this name to the proxy, which serves it over TLS with a
/// certificate from a CA the VMs trust; nothing else changes.
const DUALSTACK_EC2: &str = "ec2.us-east-1.api.aws";

/// A test CA and a certificate for [`DUALSTACK_EC2`]: (CA PEM, cert PEM,
/// key PEM).
fn dualstack_certificate() -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "kraken cluster bench CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec![DUALSTACK_EC2.to_owned()])?.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), leaf.pem(), key.serialize_pem()))
}

/// The caller's address, on either listener.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// axum's listener over TLS: handshakes inline (a handful of VMs).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn start_tls_proxy(proxy: Proxy, cert_pem: &str, key_pem: &str) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let listener = TlsListener {
        tcp: tokio::net::TcpListener::bind((host::HUB_IP, 443))
            .await
            .context("binding the TLS proxy")?,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await;
    });
    Ok(())
}

/// Calls per (client address, action).
type Counts = Arc<Mutex<BTreeMap<(String, String), u64>>>;

#[derive(Clone)]
struct Proxy {
    counts: Counts,
    http: reqwest::Client,
}

/// The API action of a request: `Action=` of a query-protocol body (EC2),
/// or the JSON protocol's `X-Amz-Target` (SSM).
fn action(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_owned();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?")
        .to_owned()
}

async fn forward(
    State(proxy): State<Proxy>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = action(&headers, &body);
    *proxy
        .counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((peer.ip().to_string(), name))
        .or_default() += 1;
    let url = format!(
        "http://{}:{MOTO_PORT}{}",
        host::HUB_IP,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut req = proxy.http.request(method, url).body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let mut out = HeaderMap::new();
            for (k, v) in resp.headers() {
                if k != "content-length" && k != "transfer-encoding" {
                    out.insert(k, v.clone());
                }
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, out, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// The counting proxy, in plain HTTP on [`PROXY_PORT`] and as the
/// dual-stack EC2 endpoint on 443.
async fn start_proxy(cert_pem: &str, key_pem: &str) -> Result<Counts> {
    let counts = Counts::default();
    let proxy = Proxy {
        counts: counts.clone(),
        http: reqwest::Client::builder().no_proxy().build()?,
    };
    start_tls_proxy(proxy.clone(), cert_pem, key_pem).await?;
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind((host::HUB_IP, PROXY_PORT))
        .await
        .context("binding the counting proxy")?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await;
    });
    Ok(counts)
}

#[derive(Debug, Serialize)]
struct NodeFigures {
    name: String,
    roles: String,
    /// From VM start to the agent's READY=1 (status.json's converged time).
    ready_s: Option<f64>,
    /// DescribeInstances from this VM (agent, Consul and Nomad) until the
    /// cluster was ready, and in the minute after.
    describe_instances_to_ready: u64,
    describe_instances_next_minute: u64,
    /// EC2 calls the agent itself counted (status.json).
    agent_ec2_calls: u64,
    agent_peak_rss_mib: Option<f64>,
    /// The agent's longest silence before READY, from its journal, and
    /// the line it followed (what it was waiting on): the reason behind a
    /// slow node.
    longest_wait: Option<(f64, String)>,
}

/// The largest gap between consecutive lines of the agent's log up to its
/// READY line, with the line before the gap.
fn longest_wait(log: &[(f64, String)]) -> Option<(f64, String)> {
    let end = log
        .iter()
        .position(|(_, m)| m.starts_with("ready:"))
        .unwrap_or(log.len().saturating_sub(1));
    log[..=end.min(log.len().checked_sub(1)?)]
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[0].1.clone()))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

#[derive(Debug, Serialize)]
struct Run {
    variant: &'static str,
    /// From the first VM's start until every cluster check passed.
    cluster_ready_s: f64,
    /// Until the web job's two instances answered through Consul.
    web_ready_s: f64,
    nodes: Vec<NodeFigures>,
}

fn describe_by_ip(counts: &Counts) -> BTreeMap<String, u64> {
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    let mut by_ip = BTreeMap::new();
    for ((ip, action), n) in counts.iter() {
        if action == "DescribeInstances" {
            *by_ip.entry(ip.clone()).or_default() += n;
        }
    }
    by_ip
}

async fn one_run(
    paths: &Paths,
    topology: Topology,
    auto_join: bool,
    counts: &Counts,
    ca_pem: &str,
) -> Result<Run> {
    counts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let mut cluster = Cluster::create(paths.clone(), topology).await?;
    let endpoint = format!("http://{}:{PROXY_PORT}", host::HUB_IP);
    cluster.user_data = cluster::default_user_data(&endpoint);
    if auto_join {
        let join = |roles: &str| {
            format!(
                "provider=aws region={} tag_key=kraken:roles tag_value={roles} addr_type=private_v4",
                crate::cloud::REGION
            )
        };
        let consul = cluster.groups.iter().find(|g| g.is_consul_server());
        let nomad = cluster.groups.iter().find(|g| g.is_nomad_server());
        let (consul, nomad) = (
            join(consul.context("no Consul servers")?.roles()),
            join(nomad.context("no Nomad servers")?.roles()),
        );
        cluster.user_data.agent_toml.push_str(&format!(
            "consul_auto_join = \"{consul}\"\nnomad_auto_join = \"{nomad}\"\n"
        ));
        cluster.user_data.hosts = vec![(host::HUB_IP.to_owned(), DUALSTACK_EC2.to_owned())];
        cluster.user_data.extra_ca = Some(ca_pem.to_owned());
    }
    let variant = if auto_join {
        "cloud auto-join"
    } else {
        "kraken-agent discovery"
    };
    cluster.log(format!("bench: {variant}"));
    let started = Instant::now();
    let groups: Vec<&'static str> = cluster.groups.iter().map(|g| g.name).collect();
    for g in groups {
        cluster.launch_group(g).await?;
    }
    cluster
        .wait_ready(variant, Duration::from_secs(600))
        .await?;
    let cluster_ready_s = started.elapsed().as_secs_f64();
    let at_ready = describe_by_ip(counts);
    cluster.deploy_web().await?;
    cluster.wait_web(Duration::from_secs(180)).await?;
    let web_ready_s = started.elapsed().as_secs_f64();
    // The steady state: a minute after the cluster was ready.
    let minute_after = Duration::from_secs_f64(cluster_ready_s) + Duration::from_secs(60);
    tokio::time::sleep(minute_after.saturating_sub(started.elapsed())).await;
    let after = describe_by_ip(counts);
    let nodes = cluster
        .vms
        .iter()
        .map(|vm| {
            let status = vm.agent_status().unwrap_or_default();
            let to_ready = at_ready.get(&vm.address).copied().unwrap_or(0);
            NodeFigures {
                name: vm.name.clone(),
                roles: vm.tags.get("kraken:roles").cloned().unwrap_or_default(),
                ready_s: status
                    .converged_unix
                    .map(|t| (t as f64 - vm.started_at).max(0.0)),
                describe_instances_to_ready: to_ready,
                describe_instances_next_minute: after.get(&vm.address).copied().unwrap_or(0)
                    - to_ready,
                agent_ec2_calls: status.ec2_api_calls,
                agent_peak_rss_mib: vm.agent_peak_rss_kib().map(|k| k as f64 / 1024.0),
                longest_wait: longest_wait(&vm.agent_log().unwrap_or_default()),
            }
        })
        .collect();
    cluster.destroy();
    Ok(Run {
        variant,
        cluster_ready_s,
        web_ready_s,
        nodes,
    })
}

/// Runs both variants on fresh clusters in the same hub; prints JSON on
/// stdout and a table on stderr. The caller has prepared the hub and tears
/// down.
pub async fn bench(paths: Paths, topology: Topology) -> Result<bool> {
    let (ca, cert, key) = dualstack_certificate()?;
    let counts = start_proxy(&cert, &key).await?;
    let first = one_run(&paths, topology, false, &counts, &ca).await?;
    let second = one_run(&paths, topology, true, &counts, &ca).await?;
    let runs = [first, second];
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "topology": topology.name(),
            "runs": runs,
        }))?
    );
    for run in &runs {
        eprintln!(
            "\n{}: cluster ready {:.1}s, web answering {:.1}s",
            run.variant, run.cluster_ready_s, run.web_ready_s
        );
        eprintln!(
            "  {:<10} {:<28} {:>8} {:>14} {:>14} {:>9}",
            "node", "roles", "READY s", "DescrInst→rdy", "DescrInst/min", "RSS MiB"
        );
        for n in &run.nodes {
            eprintln!(
                "  {:<10} {:<28} {:>8} {:>14} {:>14} {:>9}",
                n.name,
                n.roles,
                n.ready_s.map(|s| format!("{s:.0}")).unwrap_or("-".into()),
                n.describe_instances_to_ready,
                n.describe_instances_next_minute,
                n.agent_peak_rss_mib
                    .map(|m| format!("{m:.1}"))
                    .unwrap_or("-".into()),
            );
            if let Some((secs, after)) = &n.longest_wait {
                eprintln!("      longest wait {secs:.1}s, after: {after}");
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::longest_wait;

    #[test]
    fn the_longest_wait_is_before_ready() {
        let log: Vec<(f64, String)> = [
            (0.0, "reading instance identity from IMDS"),
            (1.0, "waiting for Nomad to answer"),
            (68.0, "waiting for this node's tokens in the secret store"),
            (68.5, "ready: converged"),
            (200.0, "discovery: 2 EC2 API calls so far"),
        ]
        .into_iter()
        .map(|(t, m)| (t, m.to_owned()))
        .collect();
        assert_eq!(
            longest_wait(&log),
            Some((67.0, "waiting for Nomad to answer".to_owned()))
        );
        assert_eq!(longest_wait(&log[..1]), None);
        assert_eq!(longest_wait(&[]), None);
    }
}
