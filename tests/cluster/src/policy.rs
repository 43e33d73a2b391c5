//! The `kraken-agent` Consul ACL policy as the upgrade scenario needs it:
//! the rules this agent writes, an older agent's (one rule different, no
//! version in the description), read and written with the management
//! token through whichever Consul server answers.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{Tokens, consul_url};
use crate::cluster::Cluster;
use crate::topology::CLUSTER;

pub const NAME: &str = "kraken-agent";

/// The rule an older agent wrote differently: agents could only read
/// other agents, not join them.
const NEWER_RULE: &str = "agent_prefix \"\" {\n  policy = \"write\"\n}";
const OLDER_RULE: &str = "agent_prefix \"\" {\n  policy = \"read\"\n}";

/// The policy as this agent writes it: (description, rules).
pub fn ours() -> Result<(String, String)> {
    let (_, description, rules) = kraken_bootstrap::POLICIES
        .iter()
        .find(|(name, _, _)| *name == NAME)
        .with_context(|| format!("the agent has no policy {NAME}"))?;
    Ok((
        kraken_bootstrap::versioned(description),
        rules.replace("@CLUSTER@", CLUSTER),
    ))
}

/// The policy as an agent before versioned descriptions wrote it, with
/// one rule of its own.
pub fn older() -> Result<(String, String)> {
    let (_, description, _) = kraken_bootstrap::POLICIES
        .iter()
        .find(|(name, _, _)| *name == NAME)
        .with_context(|| format!("the agent has no policy {NAME}"))?;
    let (_, rules) = ours()?;
    if !rules.contains(NEWER_RULE) {
        bail!(
            "crates/bootstrap/policies/kraken-agent.hcl has no `{NEWER_RULE}` block any more: \
             change the rule the upgrade scenario rewrites (tests/cluster/src/policy.rs)"
        );
    }
    Ok((
        (*description).to_owned(),
        rules.replace(NEWER_RULE, OLDER_RULE),
    ))
}

/// The policy as Consul has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    #[serde(skip)]
    pub id: String,
    pub description: String,
    #[serde(skip)]
    pub rules: String,
}

impl Policy {
    /// Whether it is what this agent writes.
    pub fn is_ours(&self) -> Result<bool> {
        let (description, rules) = ours()?;
        Ok(self.description == description && self.rules.trim() == rules.trim())
    }
}

/// A Consul API call through the first Consul server that answers (the
/// servers restart one at a time while this runs).
async fn call(
    cluster: &Cluster,
    tokens: &Tokens,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let mut last = anyhow::anyhow!("no Consul server is running");
    for n in cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_consul_server())
    {
        let url = consul_url(&n.vm.address, path);
        let result = match body {
            None => cluster.api.get_ok(&url, tokens.consul_header()).await,
            Some(body) => {
                let header = ("X-Consul-Token", tokens.consul.as_str());
                cluster
                    .api
                    .send_json(method.clone(), &url, header, body)
                    .await
            }
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub async fn read(cluster: &Cluster, tokens: &Tokens) -> Result<Policy> {
    let p = call(
        cluster,
        tokens,
        reqwest::Method::GET,
        &format!("/v1/acl/policy/name/{NAME}"),
        None,
    )
    .await?;
    let field = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
    Ok(Policy {
        id: field("ID"),
        description: field("Description"),
        rules: field("Rules"),
    })
}

/// Rewrites the policy's description and rules in place.
pub async fn write(
    cluster: &Cluster,
    tokens: &Tokens,
    (description, rules): (String, String),
) -> Result<()> {
    let id = read(cluster, tokens).await?.id;
    call(
        cluster,
        tokens,
        reqwest::Method::PUT,
        &format!("/v1/acl/policy/{id}"),
        Some(&json!({ "Name": NAME, "Description": description, "Rules": rules })),
    )
    .await
    .map(drop)
}
