//! A node leaving for good. A client drains its Nomad node (allocations
//! migrate as their jobs' `migrate` blocks say, bounded by the deadline
//! and by a spot notice), is purged, and leaves Consul. A server leaves
//! Raft, Nomad first, then Consul, only while it holds the cluster's
//! restart lock and autopilot says the others keep a failure tolerance of
//! at least one without it; until then it waits (heartbeating the hook)
//! for a replacement to be a healthy voter. So no two servers are ever
//! removed at once, and an instance refresh cannot outrun quorum. The
//! terminating hook is completed last.

use std::time::{Duration, Instant};

use kraken_aws::HookResult;
use kraken_hashi::{AutopilotHealth, Token};
use kraken_intent::Role;
use kraken_render::{RenderSecrets, Service};
use kraken_secrets::{SecretStore, names};
use kraken_start::{ServiceManager, Systemctl};
use serde::Serialize;

use super::drain::{self, Drained};
use super::launch::is_me;
use super::{Context, Departure};
use crate::clients;
use crate::steps::restart::{self, System};
use crate::steps::secrets::own_agent_token;
use crate::steps::start::unit_of;

#[derive(Debug, Default, Serialize)]
pub struct LeaveReport {
    pub reason: String,
    pub drain: Option<Drained>,
    /// How long the server waited for the others to spare it.
    pub waited_for_spare_s: Option<f64>,
    /// A server powering off that the others could not spare: why it went
    /// down still a member (autopilot removes it once a replacement joins).
    pub stayed_member: Option<String>,
    pub nomad_server_left: bool,
    pub consul_left: bool,
    /// The terminating hook's outcome.
    pub hook: Option<String>,
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// The failure tolerance that would be left without `node`: healthy
/// voters that stay, less the quorum of the voters that stay.
pub fn tolerance_without(health: &AutopilotHealth, node: &str) -> i64 {
    let staying = health
        .servers
        .iter()
        .filter(|s| s.voter && !is_me(&s.name, node));
    let voters = staying.clone().count() as i64;
    let healthy = staying.filter(|s| s.healthy).count() as i64;
    healthy - (voters / 2 + 1)
}

/// Takes the node out of the cluster; never fails as a whole: what could
/// not be done is in `errors`, and the hook is completed regardless (the
/// instance is going either way).
pub async fn leave(
    ctx: &Context,
    manager: &Systemctl,
    departure: &Departure,
    status: &(dyn Fn(&str) + Sync),
) -> LeaveReport {
    let started = Instant::now();
    let mut report = LeaveReport {
        reason: departure.describe(),
        ..LeaveReport::default()
    };
    log::warn!("lifecycle: leaving the cluster: {}", report.reason);
    let work = work(ctx, manager, departure, status, &mut report);
    match &ctx.hooks {
        Some(hooks) => {
            let every = Duration::from_secs(ctx.settings.lifecycle.heartbeat_secs);
            let heartbeat = hooks.heartbeat_forever(&hooks.terminating, every);
            tokio::pin!(work, heartbeat);
            let mut beating = true;
            loop {
                tokio::select! {
                    () = &mut work => break,
                    () = &mut heartbeat, if beating => beating = false,
                }
            }
        }
        None => work.await,
    }
    if let Some(hooks) = &ctx.hooks {
        report.hook = Some(
            hooks
                .complete(&hooks.terminating, HookResult::Continue)
                .await,
        );
    }
    report.seconds = started.elapsed().as_secs_f64();
    log::warn!(
        "lifecycle: left the cluster in {:.1}s: {}",
        report.seconds,
        serde_json::to_string(&report).unwrap_or_default()
    );
    report
}

async fn work(
    ctx: &Context,
    manager: &Systemctl,
    departure: &Departure,
    status: &(dyn Fn(&str) + Sync),
    report: &mut LeaveReport,
) {
    let nomad_unit = unit_of(&ctx.settings, Service::Nomad);
    let consul_unit = unit_of(&ctx.settings, Service::Consul);
    let running = |unit: &str| {
        let unit = unit.to_owned();
        async move { manager.is_active(&unit).await.unwrap_or(false) }
    };
    if !running(consul_unit).await && !running(nomad_unit).await {
        // A warm-pool instance, or one terminated before it started
        // anything: it joined nothing, so there is nothing to leave.
        log::info!("lifecycle: neither Consul nor Nomad runs here: nothing to leave");
        return;
    }
    if ctx.spec.has(Role::NomadClient) && running(nomad_unit).await {
        status("leaving: draining the Nomad node");
        match drain::drain(ctx, manager, departure).await {
            Ok(d) => report.drain = Some(d),
            Err(e) => report.errors.push(format!("drain: {e}")),
        }
    }
    let servers = ctx.spec.has(Role::ConsulServer) || ctx.spec.has(Role::NomadServer);
    if servers {
        if let Err(e) = leave_servers(ctx, manager, departure, status, report).await {
            report.errors.push(format!("leaving Raft: {e}"));
        }
    } else if running(consul_unit).await {
        status("leaving: Consul");
        match consul_leave(ctx, None, manager).await {
            Ok(()) => report.consul_left = true,
            Err(e) => report.errors.push(format!("Consul leave: {e}")),
        }
    }
    for error in &report.errors {
        log::error!("lifecycle: {error}");
    }
}

async fn consul_leave(
    ctx: &Context,
    token: Option<Token>,
    manager: &Systemctl,
) -> Result<(), String> {
    let token = match token {
        Some(t) => Some(t),
        None => own_agent_token(&ctx.store, &ctx.spec, &ctx.identity.instance_id)
            .await
            .map_err(|e| e.to_string())?
            .map(|s| Token::new(s.expose())),
    };
    let consul = clients::consul(&ctx.settings, token).map_err(|e| e.to_string())?;
    consul.leave().await.map_err(|e| e.to_string())?;
    // The agent exits after a leave; make sure systemd does not start it.
    manager
        .stop(unit_of(&ctx.settings, Service::Consul))
        .await
        .map_err(|e| e.to_string())
}

/// Waits until every quorum this node is in can spare it, then, under the
/// restart lock, leaves them: Nomad's Raft (and gossip, through a server
/// that stays), then Consul.
async fn leave_servers(
    ctx: &Context,
    manager: &Systemctl,
    departure: &Departure,
    status: &(dyn Fn(&str) + Sync),
    report: &mut LeaveReport,
) -> Result<(), String> {
    let me = ctx.identity.instance_id.clone();
    let gate = restart::gate(
        &ctx.settings,
        &ctx.spec,
        &me,
        &ctx.store,
        &RenderSecrets::default(),
    )
    .await
    .map_err(|e| e.to_string())?
    .ok_or("no token for the restart lock in the secret store")?;
    let nomad_running = ctx.spec.has(Role::NomadServer)
        && manager
            .is_active(unit_of(&ctx.settings, Service::Nomad))
            .await
            .unwrap_or(false);
    let mut systems = Vec::new();
    if nomad_running {
        systems.push(System::Nomad);
    }
    if ctx.spec.has(Role::ConsulServer) {
        systems.push(System::Consul);
    }
    if *departure == Departure::PowerOff
        && let Some(missing) = spare_now(&gate, &systems, &me).await
    {
        // Nothing holds a powering-off machine for a replacement to come;
        // a server that goes down a member costs the same tolerance as
        // one that left, and waiting would only hold up the power-off.
        log::warn!("lifecycle: powering off still a member: {missing}");
        report.stayed_member = Some(missing);
        return Ok(());
    }
    let started = Instant::now();
    let lease = loop {
        spare(&gate, &systems, &me, status).await;
        let lease = gate.lock(status).await.map_err(|e| e.to_string())?;
        // Someone else may have left while this node waited for the lock.
        if lease.is_none() || spare_now(&gate, &systems, &me).await.is_none() {
            break lease;
        }
        if let Some(mut lease) = lease {
            lease.release().await;
        }
    };
    report.waited_for_spare_s = Some(started.elapsed().as_secs_f64());
    if nomad_running {
        status("leaving: Nomad's Raft");
        nomad_server_leave(ctx, manager, &me).await?;
        report.nomad_server_left = true;
    }
    if ctx.spec.has(Role::ConsulServer) {
        status("leaving: Consul's Raft");
        let token = ctx
            .store
            .get(names::CONSUL_SERVER)
            .await
            .map_err(|e| e.to_string())?
            .map(|s| Token::new(s.expose()));
        consul_leave(ctx, token, manager).await?;
        report.consul_left = true;
    }
    // The lock is not released: its session expires after its TTL, by
    // which time autopilot shows the next leaver a cluster without this
    // node.
    drop(lease);
    Ok(())
}

/// `None` when every system can spare `me`; otherwise what it lacks.
async fn spare_now(gate: &restart::RestartGate, systems: &[System], me: &str) -> Option<String> {
    for system in systems {
        if gate.expected(*system) <= 1 {
            continue;
        }
        match gate.health(*system).await {
            Ok(h) if tolerance_without(&h, me) >= 1 => {}
            Ok(h) => {
                return Some(format!(
                    "{system:?} would keep a failure tolerance of {} without this server \
                     (waiting for a replacement to be a healthy voter)",
                    tolerance_without(&h, me).max(0)
                ));
            }
            Err(e) => return Some(format!("{system:?} autopilot: {e}")),
        }
    }
    None
}

async fn spare(
    gate: &restart::RestartGate,
    systems: &[System],
    me: &str,
    status: &(dyn Fn(&str) + Sync),
) {
    let mut last = String::new();
    while let Some(missing) = spare_now(gate, systems, me).await {
        if missing != last {
            log::info!("lifecycle: not leaving yet: {missing}");
            status(&format!("leaving: {missing}"));
            last = missing;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

async fn nomad_server_leave(ctx: &Context, manager: &Systemctl, me: &str) -> Result<(), String> {
    let management = ctx
        .store
        .get(names::NOMAD_MANAGEMENT)
        .await
        .map_err(|e| e.to_string())?
        .map(|s| Token::new(s.expose()))
        .ok_or("Nomad's management token is not in the secret store")?;
    let nomad =
        clients::nomad(&ctx.settings, Some(management.clone())).map_err(|e| e.to_string())?;
    let others: Vec<String> = nomad
        .members()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|m| m.status == "alive" && !is_me(&m.name, me))
        .map(|m| m.addr)
        .collect();
    let mine = nomad
        .raft_servers()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| is_me(&s.node, me));
    if let Some(mine) = &mine {
        nomad
            .raft_remove_peer(&mine.id)
            .await
            .map_err(|e| e.to_string())?;
        log::info!(
            "lifecycle: removed this server ({}) from Nomad's Raft",
            mine.node
        );
    }
    manager
        .stop(unit_of(&ctx.settings, Service::Nomad))
        .await
        .map_err(|e| e.to_string())?;
    // Left, not failed: a server that stays marks this one as leaving, and
    // gossip makes it `left` once it sees it gone (not pruned: see
    // `Nomad::force_leave`).
    let name = mine.map_or_else(|| me.to_owned(), |m| m.node);
    for addr in others {
        let Ok(other) = clients::nomad_at(&ctx.settings, &addr, Some(management.clone())) else {
            continue;
        };
        match other.force_leave(&name).await {
            Ok(()) => return Ok(()),
            Err(e) => log::warn!("lifecycle: marking {name} left through {addr}: {e}"),
        }
    }
    log::warn!(
        "lifecycle: no Nomad server marked {name} left; it shows as failed until Nomad reaps it"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_hashi::AutopilotServer;

    fn health(servers: &[(&str, bool, bool)]) -> AutopilotHealth {
        AutopilotHealth {
            healthy: true,
            failure_tolerance: 0,
            servers: servers
                .iter()
                .map(|(name, voter, healthy)| AutopilotServer {
                    name: (*name).into(),
                    address: String::new(),
                    leader: false,
                    voter: *voter,
                    healthy: *healthy,
                })
                .collect(),
        }
    }

    #[test]
    fn three_servers_cannot_spare_one_four_can() {
        let three = health(&[("a", true, true), ("b", true, true), ("c", true, true)]);
        assert_eq!(tolerance_without(&three, "a"), 0);
        let four = health(&[
            ("a", true, true),
            ("b", true, true),
            ("c", true, true),
            ("d", true, true),
        ]);
        assert_eq!(tolerance_without(&four, "a"), 1);
    }

    #[test]
    fn a_replacement_counts_only_once_it_is_a_healthy_voter() {
        let promoting = health(&[
            ("a.global", true, true),
            ("b.global", true, true),
            ("c.global", true, true),
            ("d.global", false, true),
        ]);
        assert_eq!(tolerance_without(&promoting, "a"), 0);
        let unhealthy = health(&[
            ("a", true, true),
            ("b", true, true),
            ("c", true, false),
            ("d", true, true),
        ]);
        assert_eq!(tolerance_without(&unhealthy, "a"), 0);
    }
}
