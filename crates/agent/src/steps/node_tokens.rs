//! Step 7 on Consul servers, for the node's life: every node that is not a
//! Consul server gets a Consul agent token of its own, made by the Consul
//! leader's agent with Consul's node identity of that node
//! (`kraken_bootstrap::Bootstrap::node_tokens`).
//!
//! It runs in a task of its own, started as soon as the Consul phase is
//! done, not in the watch loop: a Consul server that also runs Nomad
//! reaches its watch loop only once Nomad has a leader, and a Nomad server
//! that is a Consul client starts Nomad only once it has its Consul token.
//! Made from the watch loop, that token would wait for itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kraken_bootstrap::{Bootstrap, Departures, NodeTokens};
use kraken_hashi::{Consul, Token};
use kraken_intent::{NodeSpec, Role};
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;

use crate::{BootError, clients, tuning};

/// Failed rounds in a row after which the servers' token is read again.
const REREAD_AFTER: u32 = 12;

/// What the leader's watch needs, owned: it outlives the convergence.
pub struct Watch {
    pub settings: Settings,
    pub spec: NodeSpec,
    /// This node's name (its instance id) and address.
    pub node: String,
    pub own_ip: Ipv4Addr,
    pub store: Store,
    /// The initial-management token: it alone makes and deletes tokens.
    pub management: Secret,
}

impl Watch {
    /// Every `bootstrap.node_token_secs` (give or take a tenth), for the
    /// process's life: a round when this node's Consul leads. A failed
    /// round is logged and tried again at the next.
    pub async fn run(self) {
        let period = Duration::from_secs(self.settings.bootstrap.node_token_secs.max(1));
        let mut departures = Departures::new();
        let mut reader: Option<Consul> = None;
        let mut failures = 0u32;
        loop {
            if reader.is_none() {
                reader = self.reader().await;
            }
            if let Some(r) = &reader {
                match self.round(r, &mut departures).await {
                    Ok(done) => {
                        failures = 0;
                        if let Some(done) = done.filter(NodeTokens::changed) {
                            log::info!("node tokens: {done:?}");
                        }
                    }
                    Err(e) => {
                        log::warn!("node tokens: {e}; trying again in {}s", period.as_secs());
                        failures += 1;
                        // The servers' token may have been rotated: read
                        // it again after a minute of failures (not every
                        // round: the store is SSM, Consul may just be
                        // restarting).
                        if failures % REREAD_AFTER == 0 {
                            reader = None;
                        }
                    }
                }
            }
            tokio::time::sleep(kraken_discovery::jittered(period, 0.1)).await;
        }
    }

    /// The servers' own token (`consul/tokens/server`), for the reads.
    async fn reader(&self) -> Option<Consul> {
        match self.store.get(names::CONSUL_SERVER).await {
            Ok(Some(t)) => clients::consul(&self.settings, Some(Token::new(t.expose())))
                .map_err(|e| log::warn!("node tokens: {e}"))
                .ok(),
            Ok(None) => None,
            Err(e) => {
                log::warn!("node tokens: reading the servers' token: {e}");
                None
            }
        }
    }

    /// One round; `None` when this node's Consul does not lead.
    pub async fn round(
        &self,
        reader: &Consul,
        departures: &mut Departures,
    ) -> Result<Option<NodeTokens>, BootError> {
        let leader = reader
            .leader()
            .await
            .map_err(BootError::hashi("ask Consul for its leader"))?;
        let leads = leader
            .and_then(|l| l.parse::<SocketAddr>().ok())
            .is_some_and(|a| a.ip() == IpAddr::V4(self.own_ip));
        if !leads {
            // Another leader keeps its own clock of departures.
            departures.clear();
            return Ok(None);
        }
        let writer = clients::consul(&self.settings, Some(Token::new(self.management.expose())))?;
        let b = Bootstrap {
            consul: writer,
            nomad: None,
            store: &self.store,
            cluster: self.spec.cluster.clone(),
            node: self.node.clone(),
            lease: tuning::lease(&self.settings),
            crash_after: None,
        };
        let grace = Duration::from_secs(self.settings.bootstrap.node_token_grace_secs);
        let done = b
            .node_tokens(reader, &self.spec.datacenter, departures, grace)
            .await?;
        Ok(Some(done))
    }
}

/// Whether this node's Consul agent takes its own node token (every node
/// but the Consul servers, which share `consul/tokens/agent`).
pub fn has_own_token(spec: &NodeSpec) -> bool {
    !spec.has(Role::ConsulServer)
}
