//! A Nomad client whose servers were all replaced at once (with their
//! data) keeps heartbeating with a node secret the new servers never saw.
//! They answer "Permission denied", and Nomad re-registers only on "node
//! not found", so the node would stay unknown, its capacity lost, until a
//! person restarted Nomad. The agent does that restart itself: once
//! Nomad's servers have a leader and do not know this node's id, twice, a
//! short while apart. Clients only: it never touches a server, so no
//! quorum. Each round asks for this node alone (one lookup a client a
//! round, a stale read any server answers), never for the node list: a
//! fleet of clients listing each other every round would cost the servers
//! the square of the fleet.

use std::time::Duration;

use kraken_hashi::Token;
use kraken_intent::Role;
use kraken_render::Service;
use kraken_secrets::{SecretStore, names};
use kraken_start::ServiceManager;

use super::state::{Agent, Converged};
use crate::clients;
use crate::steps::start::{nomad_knows_node, unit_of};

/// Between the two looks: a node that is registering right now (Nomad
/// just started) is listed by then.
const CONFIRM: Duration = Duration::from_secs(10);

impl Agent {
    pub(super) async fn reregister(&mut self, node: &Converged) {
        // A node that is itself a Nomad server is not a survivor of its
        // servers' loss: only client-only nodes check.
        if !node.spec.has(Role::NomadClient) || node.spec.has(Role::NomadServer) {
            return;
        }
        // Read once and kept: a converged client makes no routine SSM call.
        if self.drain_token.is_none() {
            self.drain_token = node.store.get(names::NOMAD_DRAIN).await.ok().flatten();
        }
        let Some(token) = &self.drain_token else {
            return;
        };
        let Ok(nomad) = clients::nomad(&self.settings, Some(Token::new(token.expose()))) else {
            return;
        };
        let me = &node.identity.instance_id;
        for look in 0..2 {
            if look > 0 {
                tokio::time::sleep(CONFIRM).await;
            }
            match nomad_knows_node(&self.settings, &nomad).await {
                Ok(Some(false)) => log::info!(
                    "Nomad's servers have a leader and do not know this node ({me}); look {}",
                    look + 1
                ),
                Ok(_) => return,
                Err(e) => {
                    log::debug!("re-registration check: {e}");
                    if matches!(e.status(), Some(401 | 403)) {
                        // Rotated, or lost with the servers' data: read it
                        // again next round.
                        self.drain_token = None;
                    }
                    return;
                }
            }
        }
        let unit = unit_of(&self.settings, Service::Nomad);
        log::warn!(
            "Nomad's servers have a leader but do not know this node ({me}): they were replaced \
             with their data; restarting {unit} so that it registers again"
        );
        match self.manager.restart(unit).await {
            Ok(()) => self.record(
                "reregistered",
                serde_json::json!({ "unix": kraken_ready::now_unix() }),
            ),
            Err(e) => log::warn!("restarting {unit}: {e}"),
        }
    }
}
