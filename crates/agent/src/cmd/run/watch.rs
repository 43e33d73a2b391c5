//! After convergence: keep the configs' peer lists current, renew
//! certificates, repair tokens, and rejoin live servers when a service has
//! lost its leader. A peer-list change never restarts a healthy service:
//! the running agents learn membership by gossip; the file matters only at
//! their next start.

use std::time::{Duration, Instant};

use kraken_hashi::{Consul, Nomad, Token};
use kraken_intent::Role;
use kraken_start::{ServiceManager, Systemctl};
use serde_json::json;

use super::{Agent, Converged};
use crate::steps::pki::{self, NodeAuthorities};
use crate::steps::{bootstrap, discovery, start};
use crate::{BootError, clients};

impl Agent {
    pub(super) async fn watch(&mut self, mut node: Converged) -> Result<(), BootError> {
        let settings = self.settings.clone();
        // `agent/join` needs `agent:write` under default-deny ACLs: the
        // management tokens on servers, the agent token elsewhere.
        let token = |s: Option<&kraken_secrets::Secret>| s.map(|t| Token::new(t.expose()));
        let consul_token = token(
            self.secrets
                .initial_management
                .as_ref()
                .or(self.secrets.consul_agent.as_ref()),
        );
        let nomad_token = token(node.nomad_token.as_ref());
        let mut consul = clients::consul(&settings, consul_token.clone())?;
        let mut nomad = clients::nomad(&settings, nomad_token.clone())?;
        let period = Duration::from_secs(settings.discovery.refresh_secs.max(1));
        let token_period = Duration::from_secs(settings.bootstrap.token_check_secs.max(1));
        let mut tokens_checked = Instant::now();
        let auto_join = discovery::uses_cloud_auto_join(&node.spec, &settings);
        loop {
            tokio::time::sleep(period).await;
            if tokens_checked.elapsed() >= token_period {
                tokens_checked = Instant::now();
                self.repair_tokens(&node).await;
            }
            if let Some(authorities) = &node.authorities
                && self.renew(&node, authorities).await
            {
                // The clients present the certificate they read when made.
                consul = clients::consul(&settings, consul_token.clone())?;
                nomad = clients::nomad(&settings, nomad_token.clone())?;
            }
            if auto_join {
                // Consul and Nomad track their servers themselves.
                continue;
            }
            let peers = match discovery::discover(&node.ec2, &node.spec).await {
                Ok(p) => p,
                Err(e) if e.is_transient() => {
                    log::warn!("{e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.status.ec2_api_calls = node.ec2.api_calls();
            self.status_file.write(&mut self.status);
            if peers != node.peers {
                log::info!("servers changed: {:?} -> {:?}", node.peers, peers);
                let secrets = self.secrets.clone();
                self.render_and_install(&node.identity, &node.spec, &peers, &secrets)?;
                self.record("discovery", &peers);
                node.peers = peers;
            }
            rejoin(&consul, &nomad, &node).await;
        }
    }

    /// On Consul servers: recreate role tokens Consul has lost. A failure
    /// is logged and tried at the next check.
    async fn repair_tokens(&mut self, node: &Converged) {
        let secrets = self.secrets.clone();
        match bootstrap::repair_tokens(
            &self.settings,
            &node.spec,
            &node.identity.instance_id,
            &node.store,
            &secrets,
        )
        .await
        {
            Ok(repaired) if !repaired.is_empty() => {
                log::info!("recreated Consul tokens: {}", repaired.join(", "));
                self.record("token-repair", json!({ "recreated": repaired }));
            }
            Ok(_) => {}
            Err(e) => log::warn!("token check failed, trying again later: {e}"),
        }
    }

    /// Renews the leaf certificates that are due and reloads the services
    /// that use them (no restart: both re-read their TLS files on SIGHUP).
    /// A failure is logged and tried again at the next tick: the current
    /// certificates still have a third of their life. True if any changed.
    async fn renew(&mut self, node: &Converged, authorities: &NodeAuthorities) -> bool {
        let started = Instant::now();
        let leaves =
            match pki::ensure_leaves(&node.identity, &node.spec, &self.settings, authorities) {
                Ok(l) => l,
                Err(e) => {
                    log::warn!("certificate renewal failed, retrying at the next check: {e}");
                    self.status.last_error = Some(e.to_string());
                    self.status_file.write(&mut self.status);
                    return false;
                }
            };
        let mut renewed = false;
        for leaf in leaves.iter().filter(|l| l.change.needs_restart()) {
            let unit = start::unit_of(&self.settings, leaf.service).to_owned();
            match Systemctl::reload(&self.manager, &unit).await {
                Ok(()) => log::info!(
                    "{unit}: renewed certificate {} loaded by reload in {}ms",
                    leaf.serial,
                    started.elapsed().as_millis()
                ),
                Err(e) => log::warn!("{unit}: reload after certificate renewal failed: {e}"),
            }
            renewed = true;
        }
        if renewed {
            self.record("tls", &leaves);
        }
        renewed
    }
}

/// When a service has no leader, join the servers EC2 knows now: replaced
/// servers (new addresses) never strand a node.
async fn rejoin(consul: &Consul, nomad: &Nomad, node: &Converged) {
    if let Ok(None) = consul.leader().await {
        for ip in &node.peers.consul_servers {
            match consul.join(&ip.to_string()).await {
                Ok(()) => log::info!("Consul had no leader; joined {ip}"),
                Err(e) => log::warn!("Consul had no leader; joining {ip} failed: {e}"),
            }
        }
    }
    if node.spec.has(Role::NomadServer)
        && let Ok(None) = nomad.leader().await
    {
        for ip in &node.peers.nomad_servers {
            match nomad.join(&ip.to_string()).await {
                Ok(()) => log::info!("Nomad had no leader; joined {ip}"),
                Err(e) => log::warn!("Nomad had no leader; joining {ip} failed: {e}"),
            }
        }
    }
}
