//! How the harness reaches Consul and Nomad: as an operator holding the
//! management tokens, over HTTPS with a node's certificates (or plain HTTP
//! with `--no-tls`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use kraken_secrets::names;

/// Whether the cluster's Consul and Nomad APIs are HTTPS (the default) or
/// plain HTTP (`--no-tls`): one setting for the whole harness.
static TLS: AtomicBool = AtomicBool::new(true);

pub fn set_tls(on: bool) {
    TLS.store(on, Ordering::Relaxed);
}

pub fn tls() -> bool {
    TLS.load(Ordering::Relaxed)
}

/// HTTPS clients presenting a node's certificates, as a person logged in on
/// that node would (the operator environment's files).
struct TlsClients {
    consul: reqwest::Client,
    nomad: reqwest::Client,
}

pub struct Api {
    http: reqwest::Client,
    tls: RwLock<Option<TlsClients>>,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
}

impl Api {
    pub fn new() -> Api {
        Api {
            http: builder().build().expect("reqwest client"),
            tls: RwLock::new(None),
        }
    }

    pub fn has_tls_material(&self) -> bool {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Takes the cluster CA and the node's certificates from a running VM's
    /// root (`/proc/<pid>/root`).
    pub fn load_tls(&self, root: &Path) -> Result<()> {
        let ca = root.join("etc/consul.d/tls/ca.pem");
        let client = |service: &'static str, cert: &str, key: &str| -> Result<reqwest::Client> {
            let tls = kraken_hashi::ClientTls::from_files(
                &ca,
                Some((&root.join(cert), &root.join(key))),
            )?;
            Ok(tls.apply(builder(), service)?.build()?)
        };
        let clients = TlsClients {
            consul: client(
                "Consul",
                "etc/consul.d/tls/consul.pem",
                "etc/consul.d/tls/consul-key.pem",
            )?,
            nomad: client(
                "Nomad",
                "etc/nomad.d/tls/nomad.pem",
                "etc/nomad.d/tls/nomad-key.pem",
            )?,
        };
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(clients);
        Ok(())
    }

    fn client(&self, url: &str) -> reqwest::Client {
        if url.starts_with("https://") {
            let tls = self.tls.read().unwrap_or_else(|e| e.into_inner());
            if let Some(tls) = tls.as_ref() {
                return if url.contains(":4646") {
                    tls.nomad.clone()
                } else {
                    tls.consul.clone()
                };
            }
        }
        self.http.clone()
    }

    /// GET with an optional token header; the status and the JSON body
    /// (Null when the body is not JSON).
    pub async fn get(&self, url: &str, token: Option<(&str, &str)>) -> Result<(u16, Value)> {
        let mut req = self.client(url).get(url);
        if let Some((header, value)) = token {
            req = req.header(header, value);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    /// [`Api::get`], given up after `within`: for the samplers, whose
    /// figures are only as fine as their slowest look.
    pub async fn get_within(
        &self,
        url: &str,
        token: Option<(&str, &str)>,
        within: Duration,
    ) -> Result<(u16, Value)> {
        tokio::time::timeout(within, self.get(url, token))
            .await
            .unwrap_or_else(|_| bail!("GET {url}: no answer within {within:?}"))
    }

    pub async fn get_ok(&self, url: &str, token: Option<(&str, &str)>) -> Result<Value> {
        let (status, body) = self.get(url, token).await?;
        if status != 200 {
            bail!("GET {url}: HTTP {status}");
        }
        Ok(body)
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        url: &str,
        token: (&str, &str),
        body: &Value,
    ) -> Result<Value> {
        let resp = self
            .client(url)
            .request(method.clone(), url)
            .header(token.0, token.1)
            .json(body)
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {url}: HTTP {status}: {}", text.trim());
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

const NODE_TOKEN_OF: &str = "the own Consul agent token of ";

/// What [`Tokens::get`] takes for a node's own Consul agent token (no
/// store holds it: it is derived).
pub fn node_token(instance_id: &str) -> String {
    format!("{NODE_TOKEN_OF}{instance_id}")
}

#[derive(Clone)]
pub struct Tokens {
    pub consul: String,
    pub nomad: String,
    /// Every secret of the cluster, to compare what nodes hold.
    pub all: BTreeMap<String, String>,
}

impl Tokens {
    pub fn from_secrets(all: BTreeMap<String, String>) -> Result<Tokens> {
        let get = |name: &str| {
            all.get(name)
                .cloned()
                .with_context(|| format!("the secret store has no {name} yet"))
        };
        Ok(Tokens {
            consul: get(names::CONSUL_INITIAL_MANAGEMENT)?,
            nomad: get(names::NOMAD_MANAGEMENT)?,
            all,
        })
    }

    /// A secret by name, or, for a name of [`node_token`], the node's own
    /// Consul agent token as every agent derives it from the node-token
    /// key (`steps::node_tokens`).
    pub fn get(&self, name: &str) -> Option<String> {
        match name.strip_prefix(NODE_TOKEN_OF) {
            Some(node) => self.all.get(names::NODE_TOKEN_KEY).map(|key| {
                let key = kraken_secrets::Secret::new(key.clone());
                kraken_secrets::Secret::derived_token(&key, node)
                    .expose()
                    .to_owned()
            }),
            None => self.all.get(name).cloned(),
        }
    }

    pub fn consul_header(&self) -> Option<(&str, &str)> {
        Some(("X-Consul-Token", self.consul.as_str()))
    }

    pub fn nomad_header(&self) -> Option<(&str, &str)> {
        Some(("X-Nomad-Token", self.nomad.as_str()))
    }
}

pub fn consul_url(address: &str, path: &str) -> String {
    if tls() {
        format!("https://{address}:8501{path}")
    } else {
        format!("http://{address}:8500{path}")
    }
}

pub fn nomad_url(address: &str, path: &str) -> String {
    let scheme = if tls() { "https" } else { "http" };
    format!("{scheme}://{address}:4646{path}")
}
