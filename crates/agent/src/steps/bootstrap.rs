//! Step 7: the one-time cluster bootstrap, for the phases this node's roles
//! take part in, and the upkeep of what it made.

use kraken_bootstrap::{Bootstrap, LeaseSettings, Phase};
use kraken_hashi::Token;
use kraken_intent::{NodeSpec, Role};
use kraken_render::RenderSecrets;
use kraken_secrets::{Store, names};
use kraken_settings::Settings;

use crate::steps::secrets::wait_for_secret;
use crate::{BootError, clients, tuning};

/// A Nomad server waits for the Consul phase: it needs the token that
/// phase creates to take the lease.
pub async fn bootstrap(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    store: &Store,
    secrets: &RenderSecrets,
    status: &(dyn Fn(&str) + Sync),
) -> Result<Vec<kraken_bootstrap::Report>, BootError> {
    let consul = clients::consul(settings, None)?;
    let mut reports = Vec::new();
    if spec.has(Role::ConsulServer) {
        let management = secrets
            .initial_management
            .as_ref()
            .map(|s| Token::new(s.expose()));
        status("bootstrap: Consul ACL policies and tokens");
        let b = Bootstrap {
            consul: consul.with_token(management),
            nomad: None,
            store,
            cluster: spec.cluster.clone(),
            node: node.to_owned(),
            lease: tuning::lease(settings),
            crash_after: None,
        };
        reports.push(b.run(Phase::Consul).await?);
    }
    if spec.has(Role::NomadServer) {
        status("bootstrap: waiting for the Nomad servers' Consul token");
        let token = wait_for_secret(store, names::CONSUL_NOMAD_SERVER, settings).await?;
        status("bootstrap: Nomad ACLs");
        let b = Bootstrap {
            consul: consul.with_token(Some(Token::new(token.expose()))),
            nomad: Some(clients::nomad(settings, None)?),
            store,
            cluster: spec.cluster.clone(),
            node: node.to_owned(),
            lease: tuning::lease(settings),
            crash_after: None,
        };
        reports.push(b.run(Phase::Nomad).await?);
    }
    Ok(reports)
}

/// Token upkeep after the bootstrap, on Consul servers: recreates any role
/// token Consul has lost (see `Bootstrap::repair_tokens`). Other nodes
/// cannot (no management token) and do nothing.
pub async fn repair_tokens(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    store: &Store,
    secrets: &RenderSecrets,
) -> Result<Vec<&'static str>, BootError> {
    let Some(management) = secrets.initial_management.as_ref() else {
        return Ok(Vec::new());
    };
    if !spec.has(Role::ConsulServer) {
        return Ok(Vec::new());
    }
    let consul = clients::consul(settings, Some(Token::new(management.expose())))?;
    let b = Bootstrap {
        consul,
        nomad: None,
        store,
        cluster: spec.cluster.clone(),
        node: node.to_owned(),
        lease: LeaseSettings::default(),
        crash_after: None,
    };
    Ok(b.repair_tokens().await?)
}
