//! The watch loop's view of the servers: followed through Consul on
//! clients, asked of EC2 on servers and by a client that lost every server
//! (`steps::follow`); and this node's role tokens, re-read from the secret
//! store only after the bootstrap state says they were rotated.

use super::state::{Agent, Converged};
use crate::BootError;
use crate::steps::follow::Via;
use crate::steps::tokens;

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

    /// Re-reads this node's role tokens from the store when they may have
    /// been rotated; true if any changed.
    pub(super) async fn refresh_tokens(&mut self, node: &Converged) -> Result<bool, BootError> {
        // The bootstrap state's digests tell whether anything was rotated
        // (`tokens::refresh`); when it cannot be read, the store is.
        let state = match self.own_consul(node) {
            Ok(consul) => kraken_bootstrap::read_state(&consul, &node.spec.cluster)
                .await
                .map(|(state, _)| state)
                .map_err(|e| log::debug!("bootstrap state unreadable, reading the store: {e}"))
                .ok(),
            Err(_) => None,
        };
        tokens::refresh(&node.store, &node.spec, &mut self.secrets, state.as_ref()).await
    }
}
