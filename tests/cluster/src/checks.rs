//! What "the cluster works" means, checked from the outside through the
//! Consul and Nomad APIs, as an operator holding the management tokens
//! would: each check names what it found, so a red run says what is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::topology::{CLUSTER, Group};
use crate::vm::Vm;

use kraken_secrets::names;

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {:<16} {}", self.name, self.detail)
    }
}

fn check(name: &'static str, result: Result<String>) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(e) => Check {
            name,
            ok: false,
            detail: format!("{e:#}"),
        },
    }
}

/// A running VM and the group it was launched from.
pub struct Node<'a> {
    pub vm: &'a Vm,
    pub group: &'a Group,
}

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

/// Every check of the cluster's state (not the web service).
pub async fn cluster(api: &Api, nodes: &[Node<'_>], tokens: &Tokens) -> Vec<Check> {
    let consul_servers: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.group.is_consul_server())
        .collect();
    let nomad_servers: Vec<&Node> = nodes.iter().filter(|n| n.group.is_nomad_server()).collect();
    let clients: Vec<&Node> = nodes.iter().filter(|n| n.group.is_nomad_client()).collect();
    vec![
        check(
            "consul-leader",
            leader(api, &consul_servers, consul_url, None).await,
        ),
        check(
            "consul-raft",
            consul_raft(api, &consul_servers, tokens).await,
        ),
        check(
            "consul-members",
            consul_members(api, &consul_servers, nodes, tokens).await,
        ),
        check("consul-acl", consul_acl(api, &consul_servers).await),
        check(
            "consul-tokens",
            node_tokens(api, &consul_servers, nodes, tokens).await,
        ),
        check(
            "nomad-leader",
            leader(api, &nomad_servers, nomad_url, tokens.nomad_header()).await,
        ),
        check("nomad-raft", nomad_raft(api, &nomad_servers, tokens).await),
        check(
            "nomad-clients",
            nomad_clients(api, &nomad_servers, &clients, tokens).await,
        ),
        check("nomad-acl", nomad_acl(api, &nomad_servers).await),
    ]
}

fn first<'a>(servers: &'a [&'a Node<'a>], what: &str) -> Result<&'a str> {
    Ok(servers
        .first()
        .with_context(|| format!("no {what} is running"))?
        .vm
        .address
        .as_str())
}

/// Every running server answers and names the same leader.
async fn leader(
    api: &Api,
    servers: &[&Node<'_>],
    url: fn(&str, &str) -> String,
    token: Option<(&str, &str)>,
) -> Result<String> {
    let mut seen = BTreeMap::new();
    for s in servers {
        let leader = api
            .get_ok(&url(&s.vm.address, "/v1/status/leader"), token)
            .await?;
        let leader = leader.as_str().unwrap_or_default().to_owned();
        if leader.is_empty() {
            bail!("{} knows no leader", s.vm.name);
        }
        seen.insert(s.vm.name.clone(), leader);
    }
    let distinct: BTreeSet<&String> = seen.values().collect();
    if distinct.len() != 1 {
        bail!("servers disagree on the leader: {seen:?}");
    }
    Ok(format!(
        "{} (agreed by {} servers)",
        distinct
            .into_iter()
            .next()
            .map(String::as_str)
            .unwrap_or("?"),
        seen.len()
    ))
}

fn voters(config: &Value) -> BTreeSet<String> {
    config["Servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["Voter"].as_bool().unwrap_or(false))
        .filter_map(|s| s["Address"].as_str())
        .filter_map(|a| a.rsplit_once(':').map(|(ip, _)| ip.to_owned()))
        .collect()
}

fn same_servers(found: BTreeSet<String>, servers: &[&Node<'_>]) -> Result<String> {
    let want: BTreeSet<String> = servers.iter().map(|s| s.vm.address.clone()).collect();
    if found != want {
        bail!("raft voters are {found:?}, the running servers are {want:?}");
    }
    Ok(format!("voters = the {} running servers", want.len()))
}

async fn consul_raft(api: &Api, servers: &[&Node<'_>], tokens: &Tokens) -> Result<String> {
    let url = consul_url(
        first(servers, "Consul server")?,
        "/v1/operator/raft/configuration",
    );
    let config = api.get_ok(&url, tokens.consul_header()).await?;
    same_servers(voters(&config), servers)
}

async fn nomad_raft(api: &Api, servers: &[&Node<'_>], tokens: &Tokens) -> Result<String> {
    let url = nomad_url(
        first(servers, "Nomad server")?,
        "/v1/operator/raft/configuration",
    );
    let config = api.get_ok(&url, tokens.nomad_header()).await?;
    same_servers(voters(&config), servers)
}

/// Every running VM is an alive member; no member is left failed (a dead
/// instance's member must have been removed, not left for a person).
async fn consul_members(
    api: &Api,
    servers: &[&Node<'_>],
    nodes: &[Node<'_>],
    tokens: &Tokens,
) -> Result<String> {
    let url = consul_url(first(servers, "Consul server")?, "/v1/agent/members");
    let members = api.get_ok(&url, tokens.consul_header()).await?;
    // Serf status: 1 alive, 2 leaving, 3 left, 4 failed.
    let status: BTreeMap<&str, u64> = members
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["Name"].as_str()?, m["Status"].as_u64()?)))
        .collect();
    let mut problems = Vec::new();
    for n in nodes {
        match status.get(n.vm.instance_id.as_str()) {
            Some(1) => {}
            Some(s) => problems.push(format!(
                "{} ({}) has status {s}",
                n.vm.name, n.vm.instance_id
            )),
            None => problems.push(format!(
                "{} ({}) is not a member",
                n.vm.name, n.vm.instance_id
            )),
        }
    }
    let running: BTreeSet<&str> = nodes.iter().map(|n| n.vm.instance_id.as_str()).collect();
    for (name, s) in &status {
        if *s == 4 && !running.contains(name) {
            problems.push(format!("{name} (gone) is still listed as failed"));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!("{} alive, none failed", nodes.len()))
}

async fn consul_acl(api: &Api, servers: &[&Node<'_>]) -> Result<String> {
    let address = first(servers, "Consul server")?;
    // A key that exists (a recursive read would be filtered to a 404).
    let key = format!("/v1/kv/kraken/{CLUSTER}/bootstrap/state");
    let (status, _) = api.get(&consul_url(address, &key), None).await?;
    if status != 403 {
        bail!("anonymous read of {key} answered HTTP {status}, not 403");
    }
    let (status, _) = api
        .get(&consul_url(address, "/v1/acl/tokens"), None)
        .await?;
    if status != 403 {
        bail!("anonymous token listing answered HTTP {status}, not 403");
    }
    Ok("anonymous KV read and token listing refused (403)".into())
}

async fn nomad_acl(api: &Api, servers: &[&Node<'_>]) -> Result<String> {
    let address = first(servers, "Nomad server")?;
    let (status, _) = api.get(&nomad_url(address, "/v1/jobs"), None).await?;
    if status != 403 {
        bail!("anonymous job listing answered HTTP {status}, not 403");
    }
    Ok("anonymous job listing refused (403)".into())
}

/// The quoted value of `key = "..."` lines in an HCL file.
fn hcl_values<'t>(text: &'t str, key: &str) -> Vec<&'t str> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"'))
        })
        .collect()
}

/// Every node holds its role's tokens in its configs, and they are valid.
async fn node_tokens(
    api: &Api,
    servers: &[&Node<'_>],
    nodes: &[Node<'_>],
    tokens: &Tokens,
) -> Result<String> {
    let address = first(servers, "Consul server")?;
    let mut problems = Vec::new();
    let mut valid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in nodes {
        let mut want = vec![(
            "consul.hcl",
            "/etc/consul.d/consul.hcl",
            "agent",
            names::CONSUL_AGENT,
        )];
        if n.group.is_nomad_server() {
            want.push((
                "nomad.hcl",
                "/etc/nomad.d/nomad.hcl",
                "token",
                names::CONSUL_NOMAD_SERVER,
            ));
        } else if n.group.is_nomad_client() {
            want.push((
                "nomad.hcl",
                "/etc/nomad.d/nomad.hcl",
                "token",
                names::CONSUL_NOMAD_CLIENT,
            ));
        }
        for (file, path, key, secret) in want {
            let Some(text) = n.vm.read(path) else {
                problems.push(format!("{}: cannot read {path}", n.vm.name));
                continue;
            };
            let expected = tokens.all.get(secret).map(String::as_str);
            if expected.is_none() || !hcl_values(&text, key).contains(&expected.unwrap_or_default())
            {
                problems.push(format!(
                    "{}: {file} does not hold the {secret} token",
                    n.vm.name
                ));
                continue;
            }
            let token = expected.unwrap_or_default();
            if !valid.contains_key(token) {
                let (status, body) = api
                    .get(
                        &consul_url(address, "/v1/acl/token/self"),
                        Some(("X-Consul-Token", token)),
                    )
                    .await?;
                if status != 200 {
                    problems.push(format!("{secret}: token/self answered HTTP {status}"));
                    continue;
                }
                let policies = body["Policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["Name"].as_str().map(str::to_owned))
                    .collect();
                valid.insert(token.to_owned(), policies);
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let policies: BTreeSet<String> = valid.values().flatten().cloned().collect();
    Ok(format!(
        "every node holds its role's tokens; {} distinct, all valid (policies {})",
        valid.len(),
        policies.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// Every running client is a ready Nomad node with its group's class and
/// meta.
async fn nomad_clients(
    api: &Api,
    servers: &[&Node<'_>],
    clients: &[&Node<'_>],
    tokens: &Tokens,
) -> Result<String> {
    let address = first(servers, "Nomad server")?;
    let list = api
        .get_ok(&nomad_url(address, "/v1/nodes"), tokens.nomad_header())
        .await?;
    let by_name: BTreeMap<&str, &Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["Name"].as_str()?, n)))
        .collect();
    let mut problems = Vec::new();
    for c in clients {
        let Some(node) = by_name.get(c.vm.instance_id.as_str()) else {
            problems.push(format!(
                "{} ({}) is not a Nomad node",
                c.vm.name, c.vm.instance_id
            ));
            continue;
        };
        let status = node["Status"].as_str().unwrap_or("?");
        if status != "ready" {
            problems.push(format!("{} is {status}", c.vm.name));
            continue;
        }
        let class = node["NodeClass"].as_str().unwrap_or_default();
        if Some(class) != c.group.node_class() {
            problems.push(format!(
                "{} has class {class:?}, want {:?}",
                c.vm.name,
                c.group.node_class()
            ));
        }
        let id = node["ID"].as_str().unwrap_or_default();
        let detail = api
            .get_ok(
                &nomad_url(address, &format!("/v1/node/{id}")),
                tokens.nomad_header(),
            )
            .await?;
        let meta = &detail["Meta"];
        for (k, v) in c.group.meta() {
            if meta[k].as_str() != Some(v) {
                problems.push(format!(
                    "{}: meta {k} is {}, want {v:?}",
                    c.vm.name, meta[k]
                ));
            }
        }
        if meta["kraken.instance_id"].as_str() != Some(c.vm.instance_id.as_str()) {
            problems.push(format!(
                "{}: meta kraken.instance_id is {}",
                c.vm.name, meta["kraken.instance_id"]
            ));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "{} clients ready with their class and meta",
        clients.len()
    ))
}

/// One answer of the web service.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebAnswer {
    pub address: String,
    pub node: String,
    pub body: Value,
}

/// The web service's instances, found through Consul (passing checks
/// only), each asked `GET /`: every one must answer ok with its own
/// allocation id, and the ids must be the job's running allocations.
pub async fn web(
    api: &Api,
    consul_server: &str,
    nomad_server: &str,
    tokens: &Tokens,
    want: usize,
) -> Result<Vec<WebAnswer>> {
    let entries = api
        .get_ok(
            &consul_url(consul_server, "/v1/health/service/web?passing=true"),
            tokens.consul_header(),
        )
        .await?;
    let instances: Vec<(String, String)> = entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let address = e["Service"]["Address"].as_str()?;
            let port = e["Service"]["Port"].as_u64()?;
            Some((
                format!("{address}:{port}"),
                e["Node"]["Node"].as_str()?.to_owned(),
            ))
        })
        .collect();
    if instances.len() != want {
        bail!(
            "Consul lists {} passing web instances, want {want}: {instances:?}",
            instances.len()
        );
    }
    let allocs = api
        .get_ok(
            &nomad_url(nomad_server, "/v1/job/web/allocations"),
            tokens.nomad_header(),
        )
        .await?;
    let running: BTreeSet<&str> = allocs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["ClientStatus"] == "running")
        .filter_map(|a| a["ID"].as_str())
        .collect();
    let mut answers = Vec::new();
    let mut ids = BTreeSet::new();
    for (address, node) in instances {
        let body = api.get_ok(&format!("http://{address}/"), None).await?;
        if body["status"] != "ok" {
            bail!("{address} answered {body}");
        }
        let id = body["alloc_id"].as_str().unwrap_or_default().to_owned();
        if !running.contains(id.as_str()) {
            bail!(
                "{address} answered alloc_id {id:?}, not a running allocation of job web ({running:?})"
            );
        }
        if !ids.insert(id.clone()) {
            bail!("two instances answered the same alloc_id {id}");
        }
        answers.push(WebAnswer {
            address,
            node,
            body,
        });
    }
    Ok(answers)
}
