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
/// Consul phase made): Nomad's ACL bootstrap, the agent's Nomad tokens,
/// workload identity in Consul; then, on the Nomad leader, the teams. With `snapshots.restore_at_bootstrap`, a fresh Nomad is first
/// ACL-bootstrapped and restored from its newest snapshot.
// The node's address tells the Nomad leader's agent (teams) from the others.
#[allow(clippy::too_many_arguments)]
pub async fn nomad_phase(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    own_ip: std::net::Ipv4Addr,
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
    // The teams at once on the leader (the watch loop's upkeep keeps them):
    // a team's first deployment need not wait for a token check.
    // A failure here is the upkeep's to retry, not the boot's.
    status("bootstrap: teams' Nomad namespaces and tokens");
    match nomad_upkeep(settings, spec, node, own_ip, store, secrets).await {
        Ok(Some((_, teams))) => log::info!("teams: {:?}", teams.namespaces),
        Ok(None) => {}
        Err(e) => log::warn!("teams and workload identity upkeep: {e}; the watch loop retries"),
    }
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
                    tokio::time::sleep(tuning::REMOTE_POLL).await;
                }
            }
            Err(e) => {
                log::debug!("bootstrap state not readable yet: {e}");
                tokio::time::sleep(tuning::REMOTE_POLL).await;
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

/// Nomad's side of the upkeep, on the Nomad leader's agent (one writer a
/// round; another server takes over with the leadership): Consul's
/// workload identity setup brought to Nomad's keys and namespaces now
/// (`Bootstrap::workload_identity`), and every team's namespace, policy
/// and token (`Bootstrap::teams`), so a root key rotation, a new
/// namespace or a new team needs no re-bootstrap. `None` on other nodes
/// and before the Nomad phase is done.
pub async fn nomad_upkeep(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    own_ip: std::net::Ipv4Addr,
    store: &Store,
    secrets: &RenderSecrets,
) -> Result<Option<(kraken_bootstrap::Workload, kraken_bootstrap::Teams)>, BootError> {
    if !spec.has(Role::NomadServer) {
        return Ok(None);
    }
    let Some(consul_token) = token(secrets.nomad_consul.as_ref()) else {
        return Ok(None);
    };
    let leader = clients::nomad(settings, None)?
        .leader()
        .await
        .map_err(BootError::hashi("ask Nomad for its leader"))?;
    let leads = leader
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
        .is_some_and(|a| a.ip() == std::net::IpAddr::V4(own_ip));
    if !leads {
        return Ok(None);
    }
    let consul = clients::consul(settings, Some(consul_token))?;
    let b = participant(settings, spec, node, store, consul, true)?;
    let (state, _) = b.read_state().await?;
    if !state.phase_done(Phase::Nomad) {
        return Ok(None);
    }
    // Teams first: their namespaces then get their Consul roles in the
    // same round.
    let teams: Vec<(String, String)> = kraken_settings::team_environments(&settings.teams)
        .into_iter()
        .map(|t| (t.team, t.environment))
        .collect();
    let teams = b.teams(&teams).await?;
    let workload = b.workload_identity().await?;
    Ok(Some((workload, teams)))
}
