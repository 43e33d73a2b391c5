//! Step 7, second half: this node's own tokens, from the secret store into
//! the configs.
//!
//! A role token's secret is stored before Consul knows the token (the
//! bootstrap is write-ahead), and Nomad exits at start on a Consul token
//! Consul refuses ("ACL not found"). So a token is taken once Consul knows
//! it, and Nomad starts only then: once, with its token.

use std::time::{Duration, Instant};

use kraken_discovery::Backoff;
use kraken_hashi::{Consul, Token};
use kraken_intent::NodeSpec;
use kraken_render::RenderSecrets;
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;

use crate::steps::secrets::{nomad_role_token, wait_for_secret};
use crate::{BootError, tuning};

/// Whether this node has every token its role installs.
pub fn has_role_tokens(spec: &NodeSpec, secrets: &RenderSecrets) -> bool {
    secrets.consul_agent.is_some() && (!spec.runs_nomad() || secrets.nomad_consul.is_some())
}

/// Waits until the bootstrap has stored this node's role tokens and Consul
/// knows them, and puts them in `secrets`. False when they were there
/// already (nothing to do).
pub async fn fetch(
    store: &Store,
    spec: &NodeSpec,
    settings: &Settings,
    consul: &Consul,
    secrets: &mut RenderSecrets,
) -> Result<bool, BootError> {
    if has_role_tokens(spec, secrets) {
        return Ok(false);
    }
    let agent = wait_for_secret(store, names::CONSUL_AGENT, settings).await?;
    wait_until_known(consul, names::CONSUL_AGENT, &agent, settings).await?;
    secrets.consul_agent = Some(agent);
    if let Some(name) = nomad_role_token(spec) {
        let token = wait_for_secret(store, name, settings).await?;
        wait_until_known(consul, name, &token, settings).await?;
        secrets.nomad_consul = Some(token);
    }
    Ok(true)
}

/// Re-reads this node's role tokens from the store: a rotated secret
/// (`docs/operations.md`) reaches every holder this way. A token missing
/// from the store keeps its current value (the rotation's new one is on
/// its way). True if any changed.
pub async fn refresh(
    store: &Store,
    spec: &NodeSpec,
    secrets: &mut RenderSecrets,
) -> Result<bool, BootError> {
    let mut changed = false;
    let mut take = |slot: &mut Option<Secret>, new: Option<Secret>| {
        if let Some(new) = new
            && slot.as_ref() != Some(&new)
        {
            *slot = Some(new);
            changed = true;
        }
    };
    take(
        &mut secrets.consul_agent,
        store.get(names::CONSUL_AGENT).await?,
    );
    if let Some(name) = nomad_role_token(spec) {
        take(&mut secrets.nomad_consul, store.get(name).await?);
    }
    Ok(changed)
}

/// Whether this node's role tokens may have been rotated since it read
/// them: the bootstrap state (Consul KV, readable with the agent token)
/// records the digest of each role token's secret, and the upkeep on the
/// Consul servers updates it after a rotation. Only then does the node read
/// the secret store again, so that a fleet's steady state costs the store
/// nothing. When the state cannot be read or has no record, it says yes.
pub async fn maybe_rotated(consul: &Consul, spec: &NodeSpec, secrets: &RenderSecrets) -> bool {
    let state = match kraken_bootstrap::read_state(consul, &spec.cluster).await {
        Ok((state, _)) => state,
        Err(e) => {
            log::debug!("reading the bootstrap state ({e}); reading the secret store instead");
            return true;
        }
    };
    let held = [
        Some((names::CONSUL_AGENT, secrets.consul_agent.as_ref())),
        nomad_role_token(spec).map(|name| (name, secrets.nomad_consul.as_ref())),
    ];
    held.into_iter()
        .flatten()
        .any(|(name, held)| match (state.tokens.get(name), held) {
            (Some(record), Some(held)) => {
                record.secret_sha256 != kraken_bootstrap::sha256_hex(held.expose())
            }
            _ => true,
        })
}

/// Polls until Consul accepts `token` (created by the bootstrap after its
/// secret was stored), for as long as a secret may take to appear.
pub async fn wait_until_known(
    consul: &Consul,
    name: &'static str,
    token: &Secret,
    settings: &Settings,
) -> Result<(), BootError> {
    let waited = tuning::secret_wait(settings);
    let deadline = Instant::now() + waited;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let consul = consul.with_token(Some(Token::new(token.expose())));
    loop {
        let last = match consul.acl_token_self().await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => "ACL not found".to_owned(),
            Err(e) if e.is_transient() => e.to_string(),
            Err(e) => return Err(BootError::hashi("check a role token with Consul")(e)),
        };
        if Instant::now() >= deadline {
            return Err(BootError::Start(kraken_start::StartError::Timeout {
                what: format!("Consul to know the token {name} (the bootstrap makes it)"),
                waited,
                last,
            }));
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
