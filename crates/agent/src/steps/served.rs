//! The certificates Consul and Nomad actually serve, port by port, against
//! the files the agent wrote: after a renewal, the proof that it reached
//! the process (and `doctor`'s view of each port's remaining life).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use kraken_hashi::{ClientTls, TlsPort, served_certificate};
use kraken_intent::{NodeSpec, Role};
use kraken_render::{Service, TlsFiles};
use kraken_settings::Settings;

/// One TLS port and what it serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PortCheck {
    pub service: Service,
    /// "https", "grpc-tls", "rpc".
    pub port: &'static str,
    pub address: String,
    /// The served certificate's serial, when the port answered.
    pub serial: Option<String>,
    pub remaining_secs: Option<u64>,
    /// Whether it is the certificate in the service's file.
    pub current: bool,
    pub error: Option<String>,
}

impl PortCheck {
    /// Serves an older certificate than the file holds.
    pub fn stale(&self) -> bool {
        self.serial.is_some() && !self.current
    }
}

/// The TLS ports of `service` on this node: where it listens for the
/// agent's own clients, and its server RPC on the private address.
fn ports(
    service: Service,
    settings: &Settings,
    spec: &NodeSpec,
    private: Ipv4Addr,
) -> Vec<(&'static str, String, TlsPort)> {
    let host_port = |url: &str| {
        url.trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    };
    match service {
        Service::Consul => {
            let https = host_port(&settings.consul.http_addr);
            let host = https.rsplit_once(':').map_or(https.as_str(), |(h, _)| h);
            let mut ports = vec![
                ("https", https.clone(), TlsPort::Direct),
                ("grpc-tls", format!("{host}:8503"), TlsPort::Direct),
            ];
            if spec.has(Role::ConsulServer) {
                ports.push(("rpc", format!("{private}:8300"), TlsPort::ConsulRpc));
            }
            ports
        }
        Service::Nomad => {
            let mut ports = vec![(
                "https",
                host_port(&settings.nomad.http_addr),
                TlsPort::Direct,
            )];
            if spec.has(Role::NomadServer) {
                ports.push(("rpc", format!("{private}:4647"), TlsPort::NomadRpc));
            }
            ports
        }
        Service::Docker | Service::Operator => Vec::new(),
    }
}

/// What each of `service`'s TLS ports serves, against its certificate file.
/// Empty with TLS off.
pub async fn check(
    service: Service,
    settings: &Settings,
    spec: &NodeSpec,
    private: Ipv4Addr,
) -> Vec<PortCheck> {
    let files = match service {
        Service::Consul => TlsFiles::consul(settings),
        Service::Nomad => TlsFiles::nomad(settings),
        _ => return Vec::new(),
    };
    if !settings.tls.enabled {
        return Vec::new();
    }
    let on_disk = std::fs::read_to_string(&files.cert)
        .ok()
        .and_then(|pem| kraken_pki::certificates(&pem).into_iter().next());
    // Present the node's own certificate where a port asks for one.
    let client = ClientTls::from_files(&files.ca, Some((&files.cert, &files.key))).ok();
    let mut checks = Vec::new();
    for (port, address, kind) in ports(service, settings, spec, private) {
        let mut check = PortCheck {
            service,
            port,
            address: address.clone(),
            serial: None,
            remaining_secs: None,
            current: false,
            error: None,
        };
        let served = match resolve(&address).await {
            Ok(addr) => served_certificate(addr, kind, client.as_ref())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match served {
            Ok(der) => {
                check.current = on_disk.as_ref() == Some(&der);
                match kraken_pki::inspect_der(&der, port) {
                    Ok(info) => {
                        check.remaining_secs = Some(info.remaining(SystemTime::now()).as_secs());
                        check.serial = Some(info.serial);
                    }
                    Err(e) => check.error = Some(e.to_string()),
                }
            }
            Err(e) => check.error = Some(e),
        }
        checks.push(check);
    }
    checks
}

async fn resolve(address: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to nothing"))
}
