//! The EC2 endpoint of `cluster bench`: a proxy in front of moto that
//! counts calls per VM address and action, in plain HTTP and as EC2's
//! dual-stack endpoint over TLS (what go-discover insists on).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::cluster::MOTO_PORT;
use crate::host;

pub const PROXY_PORT: u16 = 5002;

/// go-discover v1.1.0 (Consul's and Nomad's auto-join) forces EC2's
/// dual-stack endpoint and refuses a custom endpoint with it ("Dualstack and
/// custom endpoint are not supported"), so in the auto-join run the VMs
/// resolve this name to the proxy, which serves it over TLS with a
/// certificate from a CA the VMs trust; nothing else changes.
pub const DUALSTACK_EC2: &str = "ec2.us-east-1.api.aws";

/// A test CA and a certificate for [`DUALSTACK_EC2`]: (CA PEM, cert PEM,
/// key PEM).
pub fn dualstack_certificate() -> Result<(String, String, String)> {
    crate::testca::ca_and_leaf("kraken cluster bench CA", DUALSTACK_EC2)
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
pub type Counts = Arc<Mutex<BTreeMap<(String, String), u64>>>;

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
pub async fn start_proxy(cert_pem: &str, key_pem: &str) -> Result<Counts> {
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

pub fn describe_by_ip(counts: &Counts) -> BTreeMap<String, u64> {
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    let mut by_ip = BTreeMap::new();
    for ((ip, action), n) in counts.iter() {
        if action == "DescribeInstances" {
            *by_ip.entry(ip.clone()).or_default() += n;
        }
    }
    by_ip
}
