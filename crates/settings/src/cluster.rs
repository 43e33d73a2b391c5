//! What the nodes of a cluster agree on between them: `[bootstrap]` (the
//! lease and the role tokens) and `[tls]` (the cluster PKI).

use serde::{Deserialize, Serialize};

/// The bootstrap lease (see `docs/architecture.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapSettings {
    /// Session TTL of the lease; a dead holder is replaced within about
    /// twice this plus the lock delay.
    pub lease_ttl_secs: u64,
    pub lock_delay_secs: u64,
    /// How long a node waits for its role's tokens to appear in the
    /// secret store before reporting and trying again.
    pub token_wait_secs: u64,
    /// How often a running Consul server checks that the role tokens still
    /// exist in Consul, and recreates any that do not.
    pub token_check_secs: u64,
    /// How often the Consul leader's agent does a full round of node tokens
    /// (`docs/operations.md`, node tokens): lists every ACL token, makes
    /// what is missing, deletes departed nodes'. A joining node's token
    /// comes sooner, from a quick round within a second of the join.
    pub node_token_secs: u64,
    /// How long a node's token outlives the node: gone from Consul's
    /// members, or `left` (a client's Consul leaves on every restart),
    /// for this long, its token is deleted.
    pub node_token_grace_secs: u64,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        BootstrapSettings {
            lease_ttl_secs: 15,
            lock_delay_secs: 5,
            token_wait_secs: 600,
            token_check_secs: 300,
            node_token_secs: 5,
            node_token_grace_secs: 600,
        }
    }
}

impl BootstrapSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.lease_ttl_secs < 10 {
            return Err(format!(
                "bootstrap.lease_ttl_secs = {}; expected at least 10 (Consul's minimum session TTL)",
                self.lease_ttl_secs
            ));
        }
        if self.node_token_secs == 0 {
            return Err("bootstrap.node_token_secs = 0; expected at least 1".into());
        }
        Ok(())
    }
}

/// `[tls]`: the cluster PKI (`docs/pki.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// TLS for Consul's and Nomad's HTTP, gRPC and RPC, with verified
    /// certificates both ways. Off only for development.
    pub enabled: bool,
    /// Lifetime of the leaf certificates a node issues itself.
    pub leaf_lifetime_secs: u64,
    /// The fraction of a leaf's lifetime after which the agent renews it.
    pub renew_fraction: f64,
    /// Lifetime of the cluster's root CA (and of its intermediates), set
    /// when the CA is created; changing it later changes nothing.
    pub ca_lifetime_days: u64,
    /// How long before the CA expires `doctor` starts warning.
    pub ca_warn_days: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            enabled: true,
            leaf_lifetime_secs: 30 * 86_400,
            renew_fraction: 2.0 / 3.0,
            ca_lifetime_days: 10 * 365,
            ca_warn_days: 180,
        }
    }
}

impl TlsSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.leaf_lifetime_secs < 60 {
            return Err(format!(
                "tls.leaf_lifetime_secs = {}; expected at least 60",
                self.leaf_lifetime_secs
            ));
        }
        if !(self.renew_fraction > 0.0 && self.renew_fraction < 1.0) {
            return Err(format!(
                "tls.renew_fraction = {}; expected a number between 0 and 1, like 0.67",
                self.renew_fraction
            ));
        }
        if self.ca_lifetime_days < 1 {
            return Err("tls.ca_lifetime_days = 0; expected at least 1".into());
        }
        Ok(())
    }
}
