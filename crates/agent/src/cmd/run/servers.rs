//! The watch loop's view of the servers: followed through Consul on
//! clients, asked of EC2 on servers and by a client that lost every server
//! (`steps::follow`); and this node's role tokens, re-read from the secret
//! store only after the bootstrap state says they were rotated.

use kraken_intent::Role;
use kraken_secrets::Store;

use super::state::{Agent, Converged};
use crate::BootError;
use crate::steps::follow::Via;
use crate::steps::{published, tokens};

impl Agent {
    /// One round of following the servers; true when the configs' peer
    /// lists must be rewritten.
    pub(super) async fn follow_servers(&mut self, node: &mut Converged) -> Result<bool, BootError> {
        let consul = self.own_consul(node)?;
        let before = node.ec2.inner().api_calls();
        let round = node.follow.refresh(&node.spec, &consul, &node.ec2).await;
        if node.ec2.inner().api_calls() != before {
            self.status.ec2_api_calls = node.ec2.inner().api_calls();
            self.status_file.write(&mut self.status);
        }
        match round {
            Ok(Some((peers, via))) if peers != node.peers => {
                let via = match via {
                    Via::Consul => "Consul",
                    Via::Ec2 => "EC2",
                };
                log::info!("servers changed ({via}): {:?} -> {:?}", node.peers, peers);
                self.record("discovery", &peers);
                node.peers = peers;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.is_transient() => {
                log::warn!("{e}");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// On a Consul server whose Consul leads: publishes the servers for
    /// booting clients when they changed (`steps::published`). Consul only,
    /// no EC2 call; a failure is logged and tried at the next round.
    pub(super) async fn publish_servers(&mut self, node: &mut Converged) {
        if !node.spec.has(Role::ConsulServer) {
            return;
        }
        let consul = match self.own_consul(node) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("publishing the servers: {e}");
                return;
            }
        };
        let own = node.identity.private_ipv4;
        match published::publish(&node.store, &consul, own, &mut node.published).await {
            Ok(true) => self.record("published", node.published.as_ref()),
            Ok(false) => {}
            Err(e) => log::warn!("{e}; trying again at the next round"),
        }
    }

    /// Re-reads this node's role tokens from the store when they may have
    /// been rotated; true if any changed. `store` is the check's batch.
    pub(super) async fn refresh_tokens(
        &mut self,
        node: &Converged,
        store: &Store,
    ) -> Result<bool, BootError> {
        // The bootstrap state's digests tell whether anything was rotated
        // (`tokens::refresh`); when it cannot be read, the store is.
        let consul = self.own_consul(node).ok();
        let state = match &consul {
            Some(consul) => kraken_bootstrap::read_state(consul, &node.spec.cluster)
                .await
                .map(|(state, _)| state)
                .map_err(|e| log::debug!("bootstrap state unreadable, reading the store: {e}"))
                .ok(),
            None => None,
        };
        tokens::refresh(
            store,
            &node.spec,
            &node.identity.instance_id,
            consul.as_ref(),
            &mut self.secrets,
            state.as_ref(),
        )
        .await
    }
}
