//! The certificates Consul and Nomad serve on each node, read off their
//! ports with a TLS handshake (the agent's own probe): renewals counted as
//! the serials served change, and at the end each port's certificate
//! compared with the file the agent wrote in the VM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use kraken_hashi::{TlsPort, served_certificate};
use serde::Serialize;

use crate::api::Api;
use crate::checks::Node;
use crate::cluster::Cluster;
use crate::monitor::Stop;

const CONSUL_CERT: &str = "/etc/consul.d/tls/consul.pem";
const NOMAD_CERT: &str = "/etc/nomad.d/tls/nomad.pem";

/// One TLS port of a node.
#[derive(Debug, Clone, Copy)]
struct Port {
    name: &'static str,
    port: u16,
    kind: TlsPort,
    /// The certificate file it must serve.
    file: &'static str,
}

/// Every TLS port `node` listens on, on its private address.
fn ports(node: &Node<'_>) -> Vec<Port> {
    let port = |name, port, kind, file| Port {
        name,
        port,
        kind,
        file,
    };
    let mut ports = vec![
        port("consul-https", 8501, TlsPort::Direct, CONSUL_CERT),
        port("consul-grpc-tls", 8503, TlsPort::Direct, CONSUL_CERT),
    ];
    if node.group.is_consul_server() {
        ports.push(port("consul-rpc", 8300, TlsPort::ConsulRpc, CONSUL_CERT));
    }
    if node.group.is_nomad_server() || node.group.is_nomad_client() {
        ports.push(port("nomad-https", 4646, TlsPort::Direct, NOMAD_CERT));
    }
    if node.group.is_nomad_server() {
        ports.push(port("nomad-rpc", 4647, TlsPort::NomadRpc, NOMAD_CERT));
    }
    ports
}

/// The serial of the certificate `address:port` serves.
async fn served_serial(address: &str, port: u16, kind: TlsPort) -> Result<(String, Vec<u8>)> {
    let addr: SocketAddr = format!("{address}:{port}").parse()?;
    let der = served_certificate(addr, kind, None).await?;
    Ok((kraken_pki::inspect_der(&der, "served")?.serial, der))
}

/// The first certificate of a PEM file in the VM, with its serial.
fn file_certificate(node: &Node<'_>, path: &str) -> Result<(String, Vec<u8>)> {
    let pem = node
        .vm
        .read(path)
        .with_context(|| format!("{}: cannot read {path}", node.vm.name))?;
    let der = kraken_pki::certificates(&pem)
        .into_iter()
        .next()
        .with_context(|| format!("{}: {path} holds no certificate", node.vm.name))?;
    Ok((kraken_pki::inspect_der(&der, path)?.serial, der))
}

/// What one port serves against its file.
#[derive(Debug, Clone, Serialize)]
pub struct PortCheck {
    pub node: String,
    pub port: String,
    pub served_serial: Option<String>,
    pub file_serial: Option<String>,
    pub current: bool,
    pub error: Option<String>,
}

/// On every running node, whether each TLS port serves the certificate in
/// its file. A renewal may land between the two reads, and a reload takes
/// a moment to show: a port is given 10 looks, a second apart.
pub async fn served_vs_files(cluster: &Cluster) -> Vec<PortCheck> {
    let mut checks = Vec::new();
    for node in cluster.nodes() {
        for port in ports(&node) {
            let mut check = PortCheck {
                node: node.vm.name.clone(),
                port: format!("{} ({}:{})", port.name, node.vm.address, port.port),
                served_serial: None,
                file_serial: None,
                current: false,
                error: None,
            };
            for attempt in 0..10 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let file = file_certificate(&node, port.file);
                let served = served_serial(&node.vm.address, port.port, port.kind).await;
                check.file_serial = file.as_ref().ok().map(|f| f.0.clone());
                check.served_serial = served.as_ref().ok().map(|s| s.0.clone());
                check.error = match (&file, &served) {
                    (Err(e), _) | (_, Err(e)) => Some(format!("{e:#}")),
                    _ => None,
                };
                check.current = matches!((&file, &served), (Ok(f), Ok(s)) if f.1 == s.1);
                if check.current {
                    break;
                }
            }
            checks.push(check);
        }
    }
    checks
}

/// Renewals seen on one node: changes of the serial its Consul and Nomad
/// HTTPS ports serve.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Served {
    pub consul_https: u32,
    pub nomad_https: u32,
    /// Looks that got no certificate (a port restarting, say).
    pub failed_looks: u32,
    #[serde(skip)]
    last: BTreeMap<u16, String>,
}

/// Samples the serials every node serves, until stopped; keeps the
/// harness's own client certificate (Nomad's HTTPS asks for one) fresh by
/// reloading it from a VM whenever the VM's renews.
pub struct Renewals {
    seen: Arc<Mutex<BTreeMap<String, Served>>>,
    stop: Arc<Stop>,
    task: tokio::task::JoinHandle<()>,
}

impl Renewals {
    pub fn start(cluster: &Cluster, every: Duration) -> Renewals {
        let nodes: Vec<(String, String, bool)> = cluster
            .nodes()
            .iter()
            .map(|n| {
                let nomad = n.group.is_nomad_server() || n.group.is_nomad_client();
                (n.vm.name.clone(), n.vm.address.clone(), nomad)
            })
            .collect();
        let tls_root = cluster
            .vms
            .iter()
            .filter(|v| !v.gone)
            .find_map(|v| v.path("/"));
        let api = cluster.api.clone();
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(Stop::default());
        let task = tokio::spawn({
            let (seen, stop) = (seen.clone(), stop.clone());
            async move { sample(&api, tls_root, &nodes, &seen, &stop, every).await }
        });
        Renewals { seen, stop, task }
    }

    pub fn seen(&self) -> BTreeMap<String, Served> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub async fn finish(mut self) -> BTreeMap<String, Served> {
        self.stop.stop();
        let _ = (&mut self.task).await;
        self.seen()
    }
}

async fn sample(
    api: &Api,
    tls_root: Option<PathBuf>,
    nodes: &[(String, String, bool)],
    seen: &Mutex<BTreeMap<String, Served>>,
    stop: &Stop,
    every: Duration,
) {
    let mut loaded = None;
    loop {
        if let Some(root) = &tls_root {
            refresh_tls(api, root, &mut loaded).await;
        }
        for (name, address, nomad) in nodes {
            let mut looks = vec![(8501, TlsPort::Direct)];
            if *nomad {
                looks.push((4646, TlsPort::Direct));
            }
            for (port, kind) in looks {
                let serial = served_serial(address, port, kind).await.map(|s| s.0);
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let served = seen.entry(name.clone()).or_default();
                match serial {
                    Ok(serial) => {
                        let changed = served
                            .last
                            .insert(port, serial.clone())
                            .is_some_and(|old| old != serial);
                        if changed && port == 8501 {
                            served.consul_https += 1;
                        } else if changed {
                            served.nomad_https += 1;
                        }
                    }
                    Err(_) => served.failed_looks += 1,
                }
            }
        }
        if stop.pause(every).await {
            return;
        }
    }
}

/// Reloads the harness's client certificates from the VM at `root` once
/// its files have changed and settled (the agent writes the key, then the
/// certificate).
async fn refresh_tls(api: &Api, root: &std::path::Path, loaded: &mut Option<String>) {
    let read = || {
        [CONSUL_CERT, NOMAD_CERT]
            .iter()
            .map(|p| std::fs::read_to_string(root.join(p.trim_start_matches('/'))))
            .collect::<std::io::Result<String>>()
            .ok()
    };
    let now = read();
    if now.is_none() || now == *loaded {
        return;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if read() == now && api.load_tls(root).is_ok() {
        *loaded = now;
    }
}
