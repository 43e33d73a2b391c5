//! Each node's own Consul agent token, made with Consul's node identity of
//! that node: a leaked token can write its own node and nothing else's.
//!
//! A node's SecretID is derived: HMAC of the cluster's node-token key
//! (`consul/node-token-key`, which every agent reads in its boot batch)
//! and the node name ([`Secret::derived_token`]). The leader's agent makes
//! the token with it; the node computes it and waits for Consul to know
//! it. Nothing per node goes through the secret store, so a booting node
//! costs the store its one batch and no more (`docs/benchmarks.md`), and
//! a Consul that lost its data gets every node's token back with the same
//! SecretID. Revoking one node's token means rotating the key (every
//! node's token changes; `docs/operations.md`).
//!
//! A node's Consul agent joins gossip without any token, so the Consul
//! leader sees it among its members before the node can do anything. For
//! every alive member that is not a Consul server and has no token of the
//! current key, the leader's agent makes one (a token of an older key is
//! deleted first).
//!
//! A node whose member is `left`, or gone from the members (reaped), for
//! longer than a grace, loses its token. The grace exists because a
//! client's Consul leaves on every restart, and comes back with the same
//! token.
//!
//! A full round lists every ACL token, which grows with the fleet; a quick
//! round ([`Bootstrap::quick_node_tokens`]) lists only the members and
//! trusts the leader's [`Ledger`] of who holds a token, so the leader can
//! answer a join within a second without listing thousands of tokens a
//! second.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kraken_hashi::{AclToken, Consul, NodeIdentity, Token};
use kraken_secrets::Secret;
use serde::Serialize;

use crate::error::BootstrapError;
use crate::policies::NODE_POLICY;
use crate::run::Bootstrap;

/// The description of a node's token: the node name follows, then
/// [`KEY_MARK`] and the fingerprint of the key it was derived with.
pub const NODE_TOKEN_DESCRIPTION: &str = "kraken: the agent token of node ";
const KEY_MARK: &str = ", key ";

/// What one round did, by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeTokens {
    /// Tokens made for nodes that had none.
    pub made: Vec<String>,
    /// Tokens of departed nodes, deleted.
    pub deleted: Vec<String>,
}

impl NodeTokens {
    pub fn changed(&self) -> bool {
        !self.made.is_empty() || !self.deleted.is_empty()
    }
}

/// What the leader's agent knows between rounds, kept by the caller. A new
/// leader starts with an empty one ([`Ledger::clear`]): its grace starts
/// again, which only delays a deletion, and it makes nothing in a quick
/// round before its first full one.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Since when each node holding a token has been seen departed (`left`
    /// or absent).
    departures: BTreeMap<String, Instant>,
    /// The nodes holding a token: as the last full round listed them, plus
    /// those made since. `None` before the first full round.
    held: Option<BTreeSet<String>>,
}

impl Ledger {
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Whether a full round has filled it (a quick round needs one).
    pub fn is_synced(&self) -> bool {
        self.held.is_some()
    }
}

/// The node a token of ours belongs to: made by [`Bootstrap::node_tokens`]
/// (its description) with exactly one node identity.
pub fn node_of(token: &AclToken) -> Option<&str> {
    let rest = token.description.strip_prefix(NODE_TOKEN_DESCRIPTION)?;
    let name = rest.split_once(KEY_MARK).map_or(rest, |(name, _)| name);
    match token.node_identities.as_slice() {
        [one] if one.node_name == name => Some(name),
        _ => None,
    }
}

/// The fingerprint of the key a token of ours was derived with.
fn key_of(token: &AclToken) -> Option<&str> {
    token.description.rsplit_once(KEY_MARK).map(|(_, fp)| fp)
}

/// The description of `node`'s token derived with the key `fingerprint`.
fn description(node: &str, fingerprint: &str) -> String {
    format!("{NODE_TOKEN_DESCRIPTION}{node}{KEY_MARK}{fingerprint}")
}

impl Bootstrap<'_> {
    /// One round, on the Consul leader's agent: a token for every alive
    /// member that is neither a Consul server nor holding one already; the
    /// tokens of nodes departed for longer than `grace` deleted. `reader`
    /// holds the servers' own token (members, the token list: `acl:read`);
    /// `self.consul` (the management token) only makes and deletes.
    /// `datacenter` is the node identities' (the cluster's Consul
    /// datacenter). Idempotent: a round with nothing new changes nothing.
    pub async fn node_tokens(
        &self,
        reader: &Consul,
        datacenter: &str,
        key: &Secret,
        ledger: &mut Ledger,
        grace: Duration,
    ) -> Result<NodeTokens, BootstrapError> {
        let members = reader
            .members()
            .await
            .map_err(BootstrapError::consul("read Consul's members"))?;
        let tokens = reader
            .acl_tokens()
            .await
            .map_err(BootstrapError::consul("list Consul's ACL tokens"))?;
        let fingerprint = key.fingerprint();
        // A token of another key (the key was rotated) is deleted and made
        // again with the current one; its node takes the new one at its
        // next token check.
        let mut held: BTreeMap<String, String> = BTreeMap::new();
        for t in &tokens {
            let Some(node) = node_of(t) else { continue };
            if key_of(t) == Some(fingerprint.as_str()) {
                held.insert(node.to_owned(), t.accessor_id.clone());
            } else {
                self.consul.acl_token_delete(&t.accessor_id).await.map_err(
                    BootstrapError::consul("delete a node's token of an older key"),
                )?;
                log::info!("Consul token of node {node}: deleted, made with an older key");
            }
        }
        let clients: Vec<_> = members.iter().filter(|m| !m.is_server()).collect();
        let alive: BTreeSet<&str> = clients
            .iter()
            .filter(|m| m.is_alive())
            .map(|m| m.name.as_str())
            .collect();
        // Failed (4) members may come back: only left (3) and leaving (2)
        // ones, and those Consul no longer lists, count as departed.
        let failed: BTreeSet<&str> = clients
            .iter()
            .filter(|m| m.status == 4)
            .map(|m| m.name.as_str())
            .collect();
        let mut done = NodeTokens::default();
        let mut holding: BTreeSet<String> = held.keys().cloned().collect();
        for node in &alive {
            if !held.contains_key(*node) {
                self.make_node_token(node, datacenter, key).await?;
                holding.insert((*node).to_owned());
                done.made.push((*node).to_owned());
            }
        }
        let departures = &mut ledger.departures;
        let now = Instant::now();
        departures.retain(|n, _| held.contains_key(n) && !alive.contains(n.as_str()));
        for (node, accessor) in &held {
            if alive.contains(node.as_str()) || failed.contains(node.as_str()) {
                departures.remove(node);
                continue;
            }
            let since = *departures.entry(node.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            self.consul
                .acl_token_delete(accessor)
                .await
                .map_err(BootstrapError::consul("delete a departed node's token"))?;
            log::info!(
                "Consul token of node {node} ({accessor}): deleted, the node left {}s ago",
                grace.as_secs()
            );
            departures.remove(node);
            holding.remove(node);
            done.deleted.push(node.clone());
        }
        ledger.held = Some(holding);
        Ok(done)
    }

    /// A quick round: a token for every alive member that is not a Consul
    /// server and that the ledger does not know to hold one. Lists the
    /// members only; deletes nothing. Makes nothing before the ledger's
    /// first full round.
    pub async fn quick_node_tokens(
        &self,
        reader: &Consul,
        datacenter: &str,
        key: &Secret,
        ledger: &mut Ledger,
    ) -> Result<Vec<String>, BootstrapError> {
        let Some(held) = &mut ledger.held else {
            return Ok(Vec::new());
        };
        let members = reader
            .members()
            .await
            .map_err(BootstrapError::consul("read Consul's members"))?;
        let mut made = Vec::new();
        for m in members.iter().filter(|m| !m.is_server() && m.is_alive()) {
            if !held.contains(&m.name) {
                self.make_node_token(&m.name, datacenter, key).await?;
                held.insert(m.name.clone());
                made.push(m.name.clone());
            }
        }
        Ok(made)
    }

    /// Makes the node's token with its derived SecretID. A SecretID Consul
    /// already holds is this node's token from an earlier round that died
    /// before the list showed it.
    async fn make_node_token(
        &self,
        node: &str,
        datacenter: &str,
        key: &Secret,
    ) -> Result<(), BootstrapError> {
        let secret = Secret::derived_token(key, node);
        let identity = NodeIdentity {
            node_name: node.to_owned(),
            datacenter: datacenter.to_owned(),
        };
        self.consul
            .acl_token_create_for_node(
                &Token::new(secret.expose()),
                &description(node, &key.fingerprint()),
                &[NODE_POLICY],
                &identity,
            )
            .await
            .map_err(BootstrapError::consul("create a node's agent token"))?;
        log::info!("Consul token of node {node}: made (its node identity)");
        Ok(())
    }
}
