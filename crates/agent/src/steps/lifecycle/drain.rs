//! A leaving client's drain: its allocations migrate as their jobs'
//! `migrate` blocks say, bounded by `lifecycle.drain_deadline_secs` and by
//! a spot notice; then Nomad stops and the node is purged through a server.

use std::time::{Duration, Instant, SystemTime};

use kraken_hashi::Token;
use kraken_render::Service;
use kraken_secrets::{SecretStore, names};
use kraken_start::Systemctl;
use serde::Serialize;

use super::{Context, Departure};
use crate::clients;
use crate::steps::start::unit_of;

#[derive(Debug, Serialize)]
pub struct Drained {
    pub node_id: String,
    pub deadline_s: u64,
    pub seconds: f64,
    /// Every allocation moved before the deadline.
    pub complete: bool,
}

/// The drain deadline: the configured one, cut short by a spot notice.
pub fn drain_deadline(ctx: &Context, departure: &Departure) -> Duration {
    let configured = Duration::from_secs(ctx.settings.lifecycle.drain_deadline_secs);
    match departure {
        Departure::Spot { at, .. } => {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            let margin = Duration::from_secs(ctx.settings.lifecycle.spot_margin_secs);
            configured
                .min(left.saturating_sub(margin))
                .max(Duration::from_secs(1))
        }
        _ => configured,
    }
}

pub async fn drain(
    ctx: &Context,
    manager: &Systemctl,
    departure: &Departure,
) -> Result<Drained, String> {
    let token = ctx
        .store
        .get(names::NOMAD_DRAIN)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{} is not in the secret store: the Nomad servers make it in their bootstrap's \
                 Nomad phase (an older cluster: roll or restart one Nomad server's agent)",
                names::NOMAD_DRAIN
            )
        })?;
    let nomad = clients::nomad(&ctx.settings, Some(Token::new(token.expose())))
        .map_err(|e| e.to_string())?;
    let me = &ctx.identity.instance_id;
    let deadline = drain_deadline(ctx, departure);
    let started = Instant::now();
    let why = format!("kraken-agent: {} ({})", departure.describe(), me);
    // The local client forwards to a server; one that just left (an
    // instance refresh replaces servers first) fails the call until the
    // client's server list moves on: try again within the deadline.
    let mut last = String::new();
    let id = loop {
        let attempt = async {
            // By its own id (one lookup); by name through the whole node
            // list only when that id is not on disk or not known.
            let own = match crate::steps::start::own_nomad_node_id(&ctx.settings) {
                Some(id) => nomad.node(&id).await.map_err(|e| e.to_string())?,
                None => None,
            };
            let id = match own {
                Some(node) => node.id,
                None => nomad
                    .nodes()
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|n| &n.name == me)
                    .map(|n| n.id)
                    .ok_or_else(|| format!("Nomad has no node named {me}"))?,
            };
            nomad
                .drain(&id, deadline, &why)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<String, String>(id)
        };
        match attempt.await {
            Ok(id) => break id,
            Err(e) if started.elapsed() < deadline => {
                if e != last {
                    log::warn!("lifecycle: starting the drain: {e}; trying again");
                    last = e;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    log::info!(
        "lifecycle: draining node {id} with a {}s deadline",
        deadline.as_secs()
    );
    // Nomad stops what is left at the deadline; allow it a little more.
    let give_up = deadline + Duration::from_secs(30);
    let mut complete = false;
    while started.elapsed() < give_up {
        match nomad.node_drain(&id).await {
            Ok(n) if !n.draining() => {
                complete = started.elapsed() < deadline;
                break;
            }
            Ok(_) => {}
            Err(e) => log::warn!("lifecycle: reading the drain: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // The purge goes to a server: the local agent is stopped first.
    let servers: Vec<String> = match nomad.raft_peers().await {
        Ok(peers) => peers
            .iter()
            .filter_map(|p| p.rsplit_once(':').map(|(ip, _)| ip.to_owned()))
            .collect(),
        Err(e) => {
            log::warn!("lifecycle: listing the Nomad servers to purge through: {e}");
            Vec::new()
        }
    };
    // Nothing runs here any more: stop the client so it registers nothing
    // again, then drop the node from the list.
    if let Err(e) = manager.stop(unit_of(&ctx.settings, Service::Nomad)).await {
        log::warn!("lifecycle: stopping Nomad: {e}");
    }
    purge(ctx, &token, &servers, &id).await;
    Ok(Drained {
        node_id: id,
        deadline_s: deadline.as_secs(),
        seconds,
        complete,
    })
}

/// Drops node `id` from Nomad's list through the first server that
/// answers; a node left behind shows as down until Nomad's GC reaps it.
async fn purge(ctx: &Context, token: &kraken_secrets::Secret, servers: &[String], id: &str) {
    for ip in servers {
        let server = match clients::nomad_at(&ctx.settings, ip, Some(Token::new(token.expose()))) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("lifecycle: purging node {id} through {ip}: {e}");
                continue;
            }
        };
        match server.purge_node(id).await {
            Ok(()) => {
                log::info!("lifecycle: purged node {id} through {ip}");
                return;
            }
            Err(e) => log::warn!("lifecycle: purging node {id} through {ip}: {e}"),
        }
    }
    log::warn!(
        "lifecycle: no Nomad server purged node {id}; it shows as down until Nomad reaps it"
    );
}
