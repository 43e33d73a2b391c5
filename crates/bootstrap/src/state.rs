//! The bootstrap's steps and what it records of them in Consul KV.

use std::collections::{BTreeMap, BTreeSet};

use kraken_hashi::Consul;
use serde::{Deserialize, Serialize};

use crate::error::BootstrapError;

/// The two halves of the bootstrap: the Consul half needs a Consul server
/// (it authenticates with the initial-management token), the Nomad half a
/// Nomad server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Consul,
    Nomad,
}

/// One bootstrap step. The order is the order they run in; steps a newer
/// agent adds come after the ones of its phase, so a cluster bootstrapped
/// by an older agent runs only them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    ConsulPolicies,
    ConsulAgentToken,
    ConsulNomadServerToken,
    ConsulNomadClientToken,
    ConsulAnonymousDns,
    ConsulServerToken,
    ConsulMetricsToken,
    NomadAclBootstrap,
    NomadAgentToken,
    NomadDrainToken,
    NomadWorkloadIdentity,
}

impl Step {
    pub const ALL: [Step; 11] = [
        Step::ConsulPolicies,
        Step::ConsulAgentToken,
        Step::ConsulNomadServerToken,
        Step::ConsulNomadClientToken,
        Step::ConsulAnonymousDns,
        Step::ConsulServerToken,
        Step::ConsulMetricsToken,
        Step::NomadAclBootstrap,
        Step::NomadAgentToken,
        Step::NomadDrainToken,
        Step::NomadWorkloadIdentity,
    ];

    /// As recorded in Consul: renaming one makes every cluster redo it.
    pub fn name(self) -> &'static str {
        match self {
            Step::ConsulPolicies => "consul-policies",
            Step::ConsulAgentToken => "consul-token-agent",
            Step::ConsulNomadServerToken => "consul-token-nomad-server",
            Step::ConsulNomadClientToken => "consul-token-nomad-client",
            Step::ConsulAnonymousDns => "consul-anonymous-dns",
            Step::ConsulServerToken => "consul-token-server",
            Step::ConsulMetricsToken => "consul-token-metrics",
            Step::NomadAclBootstrap => "nomad-acl-bootstrap",
            Step::NomadAgentToken => "nomad-token-agent",
            Step::NomadDrainToken => "nomad-token-drain",
            Step::NomadWorkloadIdentity => "nomad-workload-identity",
        }
    }

    pub fn phase(self) -> Phase {
        match self {
            Step::NomadAclBootstrap
            | Step::NomadAgentToken
            | Step::NomadDrainToken
            | Step::NomadWorkloadIdentity => Phase::Nomad,
            _ => Phase::Consul,
        }
    }
}

/// What is recorded under `kraken/<cluster>/bootstrap/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Names of the steps done.
    pub done: BTreeSet<String>,
    /// Who did what, in order: "<step> by <node> at <unix time>".
    #[serde(default)]
    pub log: Vec<String>,
    /// The Consul role tokens made, by secret name. A token Consul no
    /// longer knows but recorded here with the stored secret was deleted
    /// on purpose (revoked), not lost: lost tokens take the state with them.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Tokens replaced by a rotation, deleted once every holder has had
    /// time to read the new secret.
    #[serde(default)]
    pub retired: Vec<Retired>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub accessor: String,
    /// SHA-256 of the SecretID, hex: tells the stored secret this token was
    /// made with from a rotated one, without keeping the secret in KV.
    pub secret_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub name: String,
    pub accessor: String,
    pub delete_after_unix: u64,
}

impl State {
    pub fn is_done(&self, step: Step) -> bool {
        self.done.contains(step.name())
    }

    pub fn phase_done(&self, phase: Phase) -> bool {
        Step::ALL
            .iter()
            .filter(|s| s.phase() == phase)
            .all(|s| self.is_done(*s))
    }
}

/// Where a cluster's bootstrap state lives in Consul KV.
pub fn key(cluster: &str) -> String {
    format!("kraken/{cluster}/bootstrap/state")
}

/// The bootstrap lease's lock key: whatever must not overlap the
/// bootstrap's steps (a restore at bootstrap) holds the same lock.
pub fn lock_key(cluster: &str) -> String {
    format!("kraken/{cluster}/bootstrap/lock")
}

/// The bootstrap state and its modify index (empty and 0 before the first
/// step). Every node's agent token may read it: it holds digests and
/// accessors, never a secret.
pub async fn read(consul: &Consul, cluster: &str) -> Result<(State, u64), BootstrapError> {
    let key = key(cluster);
    let (pair, _) = consul
        .kv_get(&key, None)
        .await
        .map_err(BootstrapError::consul("read the bootstrap state"))?;
    match pair {
        None => Ok((State::default(), 0)),
        Some(p) => serde_json::from_slice(&p.value)
            .map(|s| (s, p.modify_index))
            .map_err(|e| BootstrapError::BadState {
                key,
                detail: e.to_string(),
            }),
    }
}

/// The digest a [`TokenRecord`] keeps of a token's secret.
pub fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(secret.as_bytes()))
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
