//! Step 7, second half: this node's own tokens, from the secret store into
//! the configs and into the running services.

use kraken_hashi::Nomad;
use kraken_intent::NodeSpec;
use kraken_render::{Change, RenderSecrets, Service};
use kraken_secrets::{Store, names};
use kraken_settings::Settings;
use kraken_start::ServiceManager;

use crate::steps::render::changed;
use crate::steps::secrets::{nomad_role_token, wait_for_secret};
use crate::{BootError, tuning};

/// Whether this node has every token its role installs.
pub fn has_role_tokens(spec: &NodeSpec, secrets: &RenderSecrets) -> bool {
    secrets.consul_agent.is_some() && (!spec.runs_nomad() || secrets.nomad_consul.is_some())
}

/// Waits until the bootstrap has stored this node's role tokens, and puts
/// them in `secrets`. False when they were there already (nothing to do).
pub async fn fetch(
    store: &Store,
    spec: &NodeSpec,
    settings: &Settings,
    secrets: &mut RenderSecrets,
) -> Result<bool, BootError> {
    if has_role_tokens(spec, secrets) {
        return Ok(false);
    }
    secrets.consul_agent = Some(wait_for_secret(store, names::CONSUL_AGENT, settings).await?);
    if let Some(name) = nomad_role_token(spec) {
        secrets.nomad_consul = Some(wait_for_secret(store, name, settings).await?);
    }
    Ok(true)
}

/// Makes running services use the token configs just written: Consul
/// re-reads `acl.tokens` on reload; Nomad cannot reload its `consul` block
/// and restarts.
pub async fn load<M: ServiceManager>(
    manager: &M,
    settings: &Settings,
    changes: &[(Service, Change)],
    nomad: &Nomad,
    status: &(dyn Fn(&str) + Sync),
) -> Result<(), BootError> {
    if changed(changes, Service::Consul) {
        status("installing the Consul agent token (reload)");
        manager.reload(&settings.consul.unit).await?;
    }
    if changed(changes, Service::Nomad) {
        status("installing Nomad's Consul token (restart)");
        manager.restart(&settings.nomad.unit).await?;
        let deadlines = tuning::deadlines(settings);
        kraken_start::wait_for(
            "Nomad to answer after installing its token",
            deadlines.answer,
            deadlines.poll,
            || async {
                nomad
                    .leader()
                    .await
                    .map(|_| Some(()))
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
    }
    Ok(())
}
