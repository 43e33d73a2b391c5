//! Step 7: the one-time cluster bootstrap, for the phases this node's roles
//! take part in, and the upkeep of what it made.

use std::time::Duration;

use kraken_bootstrap::{Bootstrap, Phase, Report, Upkeep};
use kraken_hashi::{Consul, Token};
use kraken_intent::{NodeSpec, Role};
use kraken_render::RenderSecrets;
use kraken_secrets::Store;
use kraken_settings::Settings;

use crate::steps::snapshot;
use crate::{BootError, clients, tuning};

fn participant<'a>(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    store: &'a Store,
    consul: Consul,
    with_nomad: bool,
) -> Result<Bootstrap<'a>, BootError> {
    Ok(Bootstrap {
        consul,
        nomad: if with_nomad {
            Some(clients::nomad(settings, None)?)
        } else {
            None
        },
        store,
        cluster: spec.cluster.clone(),
        node: node.to_owned(),
        lease: tuning::lease(settings),
        crash_after: None,
    })
}

fn token(s: Option<&kraken_secrets::Secret>) -> Option<Token> {
    s.map(|s| Token::new(s.expose()))
}

/// The Consul phase, on Consul servers (with the initial-management
/// token): policies, role tokens, the anonymous token's policy.
///
/// With `snapshots.restore_at_bootstrap`, a fresh cluster first restores
/// its newest Consul snapshot (`steps::snapshot::bootstrap`), then the
/// token upkeep brings the restored tokens to the stored secrets.
pub async fn consul_phase(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    store: &Store,
    secrets: &RenderSecrets,
    sdk: &aws_config::SdkConfig,
    status: &(dyn Fn(&str) + Sync),
) -> Result<Option<Report>, BootError> {
    if !spec.has(Role::ConsulServer) {
        return Ok(None);
    }
    let mut restored = None;
    if let Some(management) = token(secrets.initial_management.as_ref()) {
        status("bootstrap: looking for a Consul snapshot to restore");
        restored =
            snapshot::bootstrap::consul(settings, spec, node, sdk, store, &management).await?;
    }
    status("bootstrap: Consul ACL policies and tokens");
    let consul = clients::consul(settings, token(secrets.initial_management.as_ref()))?;
    let b = participant(settings, spec, node, store, consul.clone(), false)?;
    let report = b.run(Phase::Consul).await?;
    crate::metrics::bootstrap("consul", &report);
    if let Some(info) = restored {
        let done = upkeep(settings, spec, node, store, secrets, &consul).await?;
        log::info!(
            "Consul restored from s3://{}/{}; token upkeep after it: {done:?}",
            info.bucket,
            info.key
        );
    }
    Ok(Some(report))
}

/// The Nomad phase, on Nomad servers (with their Consul token, which the
/// Consul phase made): Nomad's ACL bootstrap and the agent's Nomad token.
/// With `snapshots.restore_at_bootstrap`, a fresh Nomad is first
/// ACL-bootstrapped and restored from its newest snapshot.
pub async fn nomad_phase(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    store: &Store,
    secrets: &RenderSecrets,
    sdk: &aws_config::SdkConfig,
    status: &(dyn Fn(&str) + Sync),
) -> Result<Option<Report>, BootError> {
    if !spec.has(Role::NomadServer) {
        return Ok(None);
    }
    let consul = clients::consul(settings, token(secrets.nomad_consul.as_ref()))?;
    status("bootstrap: looking for a Nomad snapshot to restore");
    snapshot::bootstrap::nomad(settings, spec, node, sdk, store, &consul).await?;
    status("bootstrap: Nomad ACLs");
    let b = participant(settings, spec, node, store, consul, true)?;
    let report = b.run(Phase::Nomad).await?;
    crate::metrics::bootstrap("nomad", &report);
    Ok(Some(report))
}

/// Token and policy upkeep, on Consul servers (see `Bootstrap::upkeep`):
/// `reader` holds the servers' own token, the management token only
/// changes what must change. Other nodes do nothing.
pub async fn upkeep(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    store: &Store,
    secrets: &RenderSecrets,
    reader: &Consul,
) -> Result<Upkeep, BootError> {
    let Some(management) = token(secrets.initial_management.as_ref()) else {
        return Ok(Upkeep::default());
    };
    if !spec.has(Role::ConsulServer) {
        return Ok(Upkeep::default());
    }
    let consul = clients::consul(settings, Some(management))?;
    let b = participant(settings, spec, node, store, consul, false)?;
    // Two check periods: every holder re-reads its token once per period.
    let grace = Duration::from_secs(2 * settings.bootstrap.token_check_secs.max(1));
    let done = b.upkeep(reader, grace).await?;
    crate::metrics::upkeep(&done);
    Ok(done)
}

/// On a Nomad client, until the Nomad servers have finished their half of
/// the bootstrap (a leader, ACLs, the keyring): a client whose Nomad starts
/// before that registers, fails, and tries again only 15 to 30 s later,
/// which was the whole slow tail of a cluster's boot. A client joining a
/// running cluster reads the state once. Bounded by the leader deadline,
/// then it starts anyway (Nomad retries on its own) and says so.
pub async fn wait_for_nomad_servers(
    settings: &Settings,
    spec: &NodeSpec,
    consul: &Consul,
    status: &(dyn Fn(&str) + Sync),
) {
    if !spec.has(Role::NomadClient) || spec.has(Role::NomadServer) {
        return;
    }
    let deadlines = tuning::deadlines(settings);
    let key = kraken_bootstrap::state_key(&spec.cluster);
    let started = std::time::Instant::now();
    let mut index = 0;
    let mut said = false;
    while started.elapsed() < deadlines.leader {
        // A blocking query: the state changes a handful of times in a
        // cluster's life, so this wakes when the servers record a step.
        let wait = Some((index, Duration::from_secs(30)));
        match consul.kv_get(&key, wait).await {
            Ok((pair, new_index)) => {
                let done = pair
                    .and_then(|p| serde_json::from_slice::<kraken_bootstrap::State>(&p.value).ok())
                    .is_some_and(|s| s.phase_done(Phase::Nomad));
                if done {
                    return;
                }
                // An index that went backwards (a new leader's snapshot)
                // restarts the blocking query from the start.
                index = if new_index < index { 0 } else { new_index };
                if index == 0 {
                    // No state yet (Consul answers a missing key at once).
                    tokio::time::sleep(deadlines.poll).await;
                }
            }
            Err(e) => {
                log::debug!("bootstrap state not readable yet: {e}");
                tokio::time::sleep(deadlines.poll).await;
            }
        }
        if !said {
            status("waiting for the Nomad servers' bootstrap before starting Nomad");
            said = true;
        }
    }
    log::warn!(
        "the Nomad servers of cluster {} have not finished their bootstrap after {}s \
         (see `kraken-agent doctor` on a server); starting Nomad anyway",
        spec.cluster,
        deadlines.leader.as_secs()
    );
}
