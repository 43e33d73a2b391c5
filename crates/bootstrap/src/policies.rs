//! The ACL policies and role tokens the bootstrap makes, and keeping the
//! policies' rules those of the agent that runs: a newer agent updates them
//! in place (as consul-k8s's server-acl-init does), an older one leaves a
//! newer agent's rules alone, so a rolling upgrade does not flap them.

use kraken_hashi::Consul;
use kraken_secrets::names;

use crate::error::BootstrapError;

/// This agent's version, written into the policies it owns.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The anonymous token's policy.
pub const DNS_POLICY: &str = "kraken-dns";

/// The Consul ACL policies: name, description, rules (`@CLUSTER@` stands
/// for the cluster's name).
pub const POLICIES: [(&str, &str, &str); 7] = [
    (
        "kraken-agent",
        "Consul agents of kraken nodes",
        include_str!("../policies/kraken-agent.hcl"),
    ),
    (
        "kraken-nomad-server",
        "Nomad servers of kraken nodes",
        include_str!("../policies/nomad-server.hcl"),
    ),
    (
        "kraken-nomad-client",
        "Nomad clients of kraken nodes",
        include_str!("../policies/nomad-client.hcl"),
    ),
    (
        DNS_POLICY,
        "Anonymous DNS lookups",
        include_str!("../policies/dns.hcl"),
    ),
    (
        "kraken-server",
        "The kraken agent's own work on servers",
        include_str!("../policies/kraken-server.hcl"),
    ),
    (
        "kraken-metrics",
        "Prometheus: agent metrics and service discovery, read-only",
        include_str!("../policies/metrics.hcl"),
    ),
    (
        NODE_POLICY,
        "Each node's own agent token, with the node's identity",
        include_str!("../policies/kraken-node.hcl"),
    ),
];

/// The policy of every node's own agent token, next to its node identity
/// (`crate::nodes`).
pub const NODE_POLICY: &str = "kraken-node";

/// The Consul role tokens: secret name, description, policy. None has an
/// expiry (`docs/operations.md`, token policy): a token that expires takes
/// the cluster down with it. A token added here reaches clusters an older
/// agent bootstrapped through the upkeep (made when its secret is unknown
/// to Consul and the state records none).
pub const ROLE_TOKENS: [(&str, &str, &str); 5] = [
    (names::CONSUL_AGENT, "kraken: Consul agents", "kraken-agent"),
    (
        names::CONSUL_NOMAD_SERVER,
        "kraken: Nomad servers",
        "kraken-nomad-server",
    ),
    (
        names::CONSUL_NOMAD_CLIENT,
        "kraken: Nomad clients",
        "kraken-nomad-client",
    ),
    (
        names::CONSUL_SERVER,
        "kraken: the agent's own work on servers",
        "kraken-server",
    ),
    (
        names::CONSUL_METRICS,
        "kraken: the Prometheus scraper",
        "kraken-metrics",
    ),
];

/// The Nomad policy and token name of the agent's own calls on servers.
pub const NOMAD_AGENT_POLICY: (&str, &str, &str) = (
    "kraken-agent",
    "The kraken agent on Nomad servers",
    include_str!("../policies/nomad-agent.hcl"),
);

/// The Nomad policy and token name a leaving client drains and purges its
/// own node with (Nomad's ACLs cannot narrow node write to one node).
pub const NOMAD_DRAIN_POLICY: (&str, &str, &str) = (
    "kraken-drain",
    "kraken agents of leaving Nomad clients: drain and purge their node",
    include_str!("../policies/nomad-drain.hcl"),
);

/// A policy's description as written: it names the agent version whose
/// rules it holds.
pub fn versioned(description: &str) -> String {
    format!("{description} (rules of kraken-agent {AGENT_VERSION})")
}

/// The version a description names, as numbers; `None` for a policy no
/// versioned agent wrote.
pub fn version_of(description: &str) -> Option<Vec<u64>> {
    let v = description
        .rsplit_once("(rules of kraken-agent ")?
        .1
        .strip_suffix(')')?;
    parse_version(v)
}

pub(crate) fn parse_version(v: &str) -> Option<Vec<u64>> {
    // The numbers before any pre-release or build suffix.
    let core = v.split(['-', '+']).next()?;
    core.split('.').map(|n| n.parse().ok()).collect()
}

/// Creates the missing policies and brings the others to this agent's
/// rules, unless a newer agent wrote them. `reader` needs `acl:read`,
/// `writer` `acl:write` (used only when something must change). Returns
/// the names of the policies it created or updated.
pub async fn ensure(
    reader: &Consul,
    writer: &Consul,
    cluster: &str,
) -> Result<Vec<&'static str>, BootstrapError> {
    let mut changed = Vec::new();
    for (name, description, rules) in POLICIES {
        let rules = rules.replace("@CLUSTER@", cluster);
        if ensure_one(reader, writer, name, description, &rules).await? {
            changed.push(name);
        }
    }
    Ok(changed)
}

/// [`ensure`] for one policy: created when missing, its rules brought to
/// this agent's unless a newer agent wrote them. Returns whether it
/// created or updated it.
pub async fn ensure_one(
    reader: &Consul,
    writer: &Consul,
    name: &str,
    description: &str,
    rules: &str,
) -> Result<bool, BootstrapError> {
    let ours = parse_version(AGENT_VERSION).unwrap_or_default();
    let existing = reader
        .acl_policy_by_name(name)
        .await
        .map_err(BootstrapError::consul("read an ACL policy"))?;
    match existing {
        None => {
            writer
                .acl_policy_ensure(name, &versioned(description), rules)
                .await
                .map_err(BootstrapError::consul("create an ACL policy"))?;
            Ok(true)
        }
        Some(p) if p.rules.trim() == rules.trim() => Ok(false),
        Some(p) => {
            if version_of(&p.description).is_some_and(|theirs| theirs > ours) {
                log::info!(
                    "ACL policy {name} holds a newer agent's rules ({}); leaving them",
                    p.description
                );
                return Ok(false);
            }
            writer
                .acl_policy_update(&p.id, name, &versioned(description), rules)
                .await
                .map_err(BootstrapError::consul("update an ACL policy"))?;
            log::info!("ACL policy {name}: rules brought to kraken-agent {AGENT_VERSION}'s");
            Ok(true)
        }
    }
}
