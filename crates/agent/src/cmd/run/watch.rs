//! After convergence, for the node's whole life: renew certificates, follow
//! rotated tokens, keep the configs' peer lists current, bring every
//! service to what is on disk (the same step 6 as the boot: reload where it
//! can, restart where it must, servers one at a time), and rejoin live
//! servers when a service has lost its leader. A peer-list change alone
//! restarts nothing: the running agents learn membership by gossip, and
//! the file only matters at their next start.

use std::time::{Duration, Instant};

use kraken_hashi::{Consul, Nomad, Token};
use kraken_intent::Role;
use kraken_render::Service;
use serde_json::json;

use super::state::{Agent, Converged, OwnTokens};
use crate::steps::apply::Outcome;
use crate::steps::{autopilot, bootstrap, discovery, lifecycle, pki};
use kraken_secrets::SecretStore;

use crate::{BootError, clients};

/// A period, give or take a tenth: nodes that booted together do not call
/// AWS and Consul in step for the rest of their lives.
fn jittered(period: Duration) -> Duration {
    kraken_discovery::jittered(period, 0.1)
}

/// The token check reads the secret store (and, on servers, runs the
/// upkeep): give or take a quarter, so a fleet's reads spread out.
fn jittered_wide(period: Duration) -> Duration {
    kraken_discovery::jittered(period, 0.25)
}

impl Agent {
    pub(super) async fn watch(&mut self, mut node: Converged) -> Result<(), BootError> {
        let settings = self.settings.clone();
        let period = Duration::from_secs(settings.discovery.refresh_secs.max(1));
        let token_period = Duration::from_secs(settings.bootstrap.token_check_secs.max(1));
        let mut next_token_check = Instant::now() + jittered_wide(token_period);
        let auto_join = discovery::uses_cloud_auto_join(&node.spec, &settings);
        let services: Vec<Service> = [Service::Consul, Service::Docker, Service::Nomad]
            .into_iter()
            .filter(|s| self.runs(&node.spec, *s))
            .collect();
        self.complete_launch(&node).await;
        if !auto_join {
            // At once: a client added right after the cluster formed then
            // boots from the list too, not only after the first round.
            self.publish_servers(&mut node).await;
        }
        loop {
            tokio::time::sleep(jittered(period)).await;
            let mut rerender = false;
            if Instant::now() >= next_token_check {
                next_token_check = Instant::now() + jittered_wide(token_period);
                // What the check reads, in one batch (a server's own and
                // role tokens): one SSM transaction per check.
                let store = node.check_store().await;
                match OwnTokens::read(&node.spec, &store).await {
                    Ok(own) => node.own = own,
                    Err(e) => {
                        log::warn!("reading the agent's own tokens failed, trying later: {e}")
                    }
                }
                self.upkeep(&node, &store).await;
                self.nomad_upkeep(&node, &store).await;
                self.autopilot(&node).await;
                match self.refresh_tokens(&node, &store).await {
                    Ok(true) => {
                        log::info!("this node's role tokens changed in the secret store (rotated)");
                        rerender = true;
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!("reading this node's tokens failed, trying later: {e}"),
                }
            }
            if let Some(authorities) = &node.authorities
                && let Err(e) =
                    pki::ensure_leaves(&node.identity, &node.spec, &self.settings, authorities)
            {
                // The current certificates still have a third of their life.
                log::warn!("certificate renewal failed, retrying at the next check: {e}");
                self.status.last_error = Some(e.to_string());
                self.status_file.write(&mut self.status);
            }
            if !auto_join {
                rerender |= self.follow_servers(&mut node).await?;
                self.publish_servers(&mut node).await;
            }
            if rerender {
                self.render_and_install(&node.identity, &node.spec, &node.peers)?;
            }
            match self
                .apply(&node.identity, &node.spec, &node.store, &services)
                .await
            {
                Ok(outcomes) => {
                    if outcomes.values().any(|o| *o == Outcome::Stale) {
                        self.status.last_error =
                            Some("a service still serves an older certificate; retrying".into());
                        self.status_file.write(&mut self.status);
                    } else if outcomes.values().any(|o| *o != Outcome::Unchanged) {
                        self.record("applied", &outcomes);
                        if let Some(a) = &node.authorities
                            && let Ok(leaves) =
                                pki::ensure_leaves(&node.identity, &node.spec, &self.settings, a)
                        {
                            self.record("tls", &leaves);
                        }
                    }
                }
                Err(e) if e.is_transient() => log::warn!("applying changes: {e}; trying again"),
                Err(e) => return Err(e),
            }
            if !auto_join {
                self.rejoin(&node).await;
            }
            self.reregister(&node).await;
            self.snapshots(&node).await;
            crate::metrics::watch_round();
        }
    }

    /// The launching hook, completed in the background once the node
    /// serves (`steps::lifecycle::launch`), while the loop goes on.
    async fn complete_launch(&self, node: &Converged) {
        let sdk =
            kraken_aws::sdk_config(&node.identity.region, &crate::tuning::aws(&self.settings))
                .await;
        let Some(hooks) = lifecycle::Hooks::new(&self.settings, &node.identity, &sdk) else {
            return;
        };
        let ctx = lifecycle::Context {
            settings: self.settings.clone(),
            identity: node.identity.clone(),
            spec: node.spec.clone(),
            store: node.store.clone(),
            hooks: Some(hooks),
        };
        tokio::spawn(lifecycle::launch::complete(ctx));
    }

    /// On Consul servers: tokens and policies (recreate what Consul lost,
    /// follow rotations, leave revocations alone, bring policies to this
    /// agent's rules). A failure is logged and tried at the next check.
    async fn upkeep(&mut self, node: &Converged, store: &kraken_secrets::Store) {
        if !node.spec.has(Role::ConsulServer) {
            return;
        }
        let reader = match self.own_consul(node) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("token check: {e}");
                return;
            }
        };
        match bootstrap::upkeep(
            &self.settings,
            &node.spec,
            &node.identity.instance_id,
            store,
            &self.secrets,
            &reader,
        )
        .await
        {
            Ok(done) if done != Default::default() => {
                log::info!("token upkeep: {done:?}");
                self.record("token-upkeep", &done);
                if !done.revoked.is_empty() {
                    self.record("revoked", json!({ "tokens": done.revoked }));
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("token check failed, trying again later: {e}"),
        }
    }

    /// On the Nomad leader: teams, and workload identity to Consul (keys,
    /// namespaces).
    /// A failure is logged and tried at the next check.
    async fn nomad_upkeep(&mut self, node: &Converged, store: &kraken_secrets::Store) {
        match bootstrap::nomad_upkeep(
            &self.settings,
            &node.spec,
            &node.identity.instance_id,
            node.identity.private_ipv4,
            store,
            &self.secrets,
        )
        .await
        {
            Ok(Some((workload, teams))) if workload.changed() => {
                log::info!("Nomad upkeep: {workload:?}, teams {:?}", teams.namespaces);
                self.record("nomad-upkeep", &workload);
            }
            Ok(_) => {}
            Err(e) => log::warn!("Nomad upkeep failed, trying again later: {e}"),
        }
    }

    /// Autopilot's settings in Raft, on servers (see `steps::autopilot`):
    /// read with the agent's own tokens, written with a management token
    /// only when they differ.
    async fn autopilot(&self, node: &Converged) {
        let token = |s: &kraken_secrets::Secret| Some(Token::new(s.expose()));
        if node.spec.has(Role::ConsulServer)
            && let Some(read) = &node.own.consul_server
            && let Ok(reader) = clients::consul(&self.settings, token(read))
        {
            let change = autopilot::consul_change(&reader, node.spec.consul_servers).await;
            let write = self.secrets.initial_management.as_ref();
            match (change, write) {
                (Ok(Some(want)), Some(write)) => {
                    let result = match clients::consul(&self.settings, token(write)) {
                        Ok(writer) => writer
                            .set_autopilot_config(&want)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match result {
                        Ok(()) => log::info!(
                            "Consul's autopilot configuration set for {} servers",
                            node.spec.consul_servers
                        ),
                        Err(e) => log::warn!("setting Consul's autopilot configuration: {e}"),
                    }
                }
                (Err(e), _) => log::warn!("reading Consul's autopilot configuration: {e}"),
                _ => {}
            }
        }
        if node.spec.has(Role::NomadServer)
            && let Some(read) = &node.own.nomad_agent
            && let Ok(reader) = clients::nomad(&self.settings, token(read))
        {
            match autopilot::nomad_change(&reader, node.spec.nomad_servers).await {
                Ok(Some(want)) => {
                    let write = node
                        .store
                        .get(kraken_secrets::names::NOMAD_MANAGEMENT)
                        .await
                        .map_err(|e| e.to_string());
                    let result = match write {
                        Ok(Some(write)) => match clients::nomad(&self.settings, token(&write)) {
                            Ok(writer) => writer
                                .set_autopilot_config(&want)
                                .await
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        },
                        Ok(None) => Err("Nomad's management token is not in the store".into()),
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) => log::info!(
                            "Nomad's autopilot configuration set for {} servers",
                            node.spec.nomad_servers
                        ),
                        Err(e) => log::warn!("setting Nomad's autopilot configuration: {e}"),
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("reading Nomad's autopilot configuration: {e}"),
            }
        }
    }

    /// The agent's own Consul client: the servers' token on servers, the
    /// agent token elsewhere; never the management token.
    pub(super) fn own_consul(&self, node: &Converged) -> Result<Consul, BootError> {
        let token = node
            .own
            .consul_server
            .clone()
            .or_else(|| self.secrets.consul_agent.clone());
        clients::consul(&self.settings, token.map(|t| Token::new(t.expose())))
    }

    /// When a service has no leader, join the servers EC2 knows now:
    /// replaced servers (new addresses) never strand a node.
    async fn rejoin(&self, node: &Converged) {
        let Ok(consul) = self.own_consul(node) else {
            return;
        };
        // A client's agent that lost every server answers 500 "No known
        // Consul servers", not an empty leader: all of them were replaced.
        let no_leader = match consul.leader().await {
            Ok(leader) => leader.is_none(),
            Err(e) => e.status() == Some(500),
        };
        if no_leader {
            for ip in &node.peers.consul_servers {
                match consul.join(&ip.to_string()).await {
                    Ok(()) => log::info!("Consul had no leader; joined {ip}"),
                    Err(e) => log::warn!("Consul had no leader; joining {ip} failed: {e}"),
                }
            }
        }
        if !node.spec.has(Role::NomadServer) {
            return;
        }
        let token = node.own.nomad_agent.clone();
        let Ok(nomad): Result<Nomad, _> =
            clients::nomad(&self.settings, token.map(|t| Token::new(t.expose())))
        else {
            return;
        };
        if let Ok(None) = nomad.leader().await {
            for ip in &node.peers.nomad_servers {
                match nomad.join(&ip.to_string()).await {
                    Ok(()) => log::info!("Nomad had no leader; joined {ip}"),
                    Err(e) => log::warn!("Nomad had no leader; joining {ip} failed: {e}"),
                }
            }
        }
    }
}
