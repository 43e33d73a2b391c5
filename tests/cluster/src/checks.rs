//! What "the cluster works" means, checked from the outside through the
//! Consul and Nomad APIs, as an operator holding the management tokens
//! would: each check names what it found, so a red run says what is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::api::{Api, Tokens, consul_url, nomad_url};
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
        check(
            "nomad-client-servers",
            nomad_client_servers(api, &nomad_servers, &clients, tokens).await,
        ),
    ]
}

/// Every client's Nomad knows only running servers. Its list is the one
/// the servers hand it at each heartbeat: a server gone from it (pruned
/// from gossip before it was seen dead) is tried by the client first,
/// and every call through it waits out a connection error.
async fn nomad_client_servers(
    api: &Api,
    servers: &[&Node<'_>],
    clients: &[&Node<'_>],
    tokens: &Tokens,
) -> Result<String> {
    let running: BTreeSet<String> = servers
        .iter()
        .map(|s| format!("{}:4647", s.vm.address))
        .collect();
    let mut problems = Vec::new();
    for c in clients {
        let url = nomad_url(&c.vm.address, "/v1/agent/servers");
        let known = api.get_ok(&url, tokens.nomad_header()).await?;
        let known: BTreeSet<String> = known
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        let gone: Vec<&String> = known.difference(&running).collect();
        if known.is_empty() || !gone.is_empty() {
            problems.push(format!("{} knows {known:?} (gone: {gone:?})", c.vm.name));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "{} clients know only the running Nomad servers",
        clients.len()
    ))
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
pub async fn leader(
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
pub fn hcl_values<'t>(text: &'t str, key: &str) -> Vec<&'t str> {
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
        // Consul servers share the agent token; every other node has its
        // own, of its node identity (`steps::node_tokens`).
        let agent = if n.group.is_consul_server() {
            names::CONSUL_AGENT.to_owned()
        } else {
            crate::api::node_token(&n.vm.instance_id)
        };
        let mut want = vec![("consul.hcl", "/etc/consul.d/consul.hcl", "agent", agent)];
        if n.group.is_nomad_server() {
            want.push((
                "nomad.hcl",
                "/etc/nomad.d/nomad.hcl",
                "token",
                names::CONSUL_NOMAD_SERVER.to_owned(),
            ));
        } else if n.group.is_nomad_client() {
            want.push((
                "nomad.hcl",
                "/etc/nomad.d/nomad.hcl",
                "token",
                names::CONSUL_NOMAD_CLIENT.to_owned(),
            ));
        }
        for (file, path, key, secret) in want {
            let Some(text) = n.vm.read(path) else {
                problems.push(format!("{}: cannot read {path}", n.vm.name));
                continue;
            };
            let expected = tokens.get(&secret);
            let expected = expected.as_deref();
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
                let mut policies: Vec<String> = body["Policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["Name"].as_str().map(str::to_owned))
                    .collect();
                let identities: Vec<&str> = body["NodeIdentities"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["NodeName"].as_str())
                    .collect();
                if key == "agent" && !n.group.is_consul_server() {
                    if identities != [n.vm.instance_id.as_str()] {
                        problems.push(format!(
                            "{}: its Consul agent token has node identities {identities:?}, \
                             not its own",
                            n.vm.name
                        ));
                        continue;
                    }
                    policies.push("node-identity".into());
                }
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
        // What Nomad's AWS fingerprinter would have found, had it been let
        // through the IMDS guard: the agent's meta instead (docs/iam.md).
        let az = crate::cloud::AVAILABILITY_ZONE;
        if meta["kraken.availability_zone"].as_str() != Some(az) {
            problems.push(format!(
                "{}: meta kraken.availability_zone is {}, want {az}",
                c.vm.name, meta["kraken.availability_zone"]
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
