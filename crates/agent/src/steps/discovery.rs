//! Step 4: the cluster's servers, from EC2, until the node has converged
//! (afterwards: [`super::follow`]).

use std::time::Duration;

use kraken_discovery::{Backoff, Needed, PeerSource, Peers, jittered};
use kraken_intent::{NodeSpec, Role};
use kraken_settings::Settings;

use crate::BootError;
use crate::steps::published::{Published, now_unix};

/// The servers of a complete view: every expected server of the node's own
/// kind (a server's configs list them all), and for any other node one
/// server of each kind it joins (gossip finds the rest). `doctor` and
/// `render` judge a view by it; a server whose view is short keeps asking
/// ([`super::follow`]).
pub fn needed(spec: &NodeSpec) -> Needed {
    Needed {
        consul_servers: if spec.has(Role::ConsulServer) {
            spec.consul_servers.into()
        } else {
            1
        },
        nomad_servers: if spec.has(Role::NomadServer) {
            spec.nomad_servers.into()
        } else if spec.runs_nomad() {
            1
        } else {
            0
        },
    }
}

/// The servers a node must see before it starts anything: one of each kind
/// it joins, itself included. A server does not wait for every expected
/// peer: `bootstrap_expect` already holds the first election until they
/// have all joined, and a server whose Consul runs can be joined by the
/// ones that come later (their lists name it) the moment they start.
/// Waiting in discovery instead cost up to a refill of the EC2 call budget
/// (20 s) after the last server's launch, since the early servers learnt of
/// it only at their next query (docs/benchmarks.md, `staggered`).
pub fn to_start(spec: &NodeSpec) -> Needed {
    let needed = needed(spec);
    Needed {
        consul_servers: needed.consul_servers.min(1),
        nomad_servers: needed.nomad_servers.min(1),
    }
}

/// One query.
pub async fn discover<S: PeerSource>(source: &S, spec: &NodeSpec) -> Result<Peers, BootError> {
    Ok(source.discover(&spec.cluster).await?)
}

/// Whether Consul and Nomad find their servers themselves (cloud auto-join
/// strings for every kind of server this node needs): then this step is
/// skipped and the configs carry the strings instead of addresses.
pub fn uses_cloud_auto_join(spec: &NodeSpec, settings: &Settings) -> bool {
    let needed = needed(spec);
    (needed.consul_servers == 0 || settings.discovery.consul_auto_join.is_some())
        && (needed.nomad_servers == 0 || settings.discovery.nomad_auto_join.is_some())
}

/// Queries until enough servers are found, reporting each shortfall
/// through `status`: every `poll`, give or take half, so the node joins
/// within about `poll` of the servers' launch; the source's
/// [`kraken_discovery::CallBudget`] slows a long wait down. Errors back off
/// with `backoff`.
pub async fn discover_until_enough<S: PeerSource>(
    source: &S,
    spec: &NodeSpec,
    poll: Duration,
    backoff: &mut Backoff,
    status: &(dyn Fn(&str) + Sync),
) -> Result<Peers, BootError> {
    let needed = to_start(spec);
    loop {
        let result = discover(source, spec).await;
        let wait = match &result {
            Ok(peers) => match peers.shortfall(needed) {
                None => return result,
                Some(short) => {
                    backoff.reset();
                    let delay = jittered(poll, 0.5);
                    status(&format!(
                        "waiting for servers of cluster {}: {short}; looking again in {:.1}s",
                        spec.cluster,
                        delay.as_secs_f64()
                    ));
                    delay
                }
            },
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                status(&format!("{e}; retrying in {}s", delay.as_secs()));
                delay
            }
            Err(_) => return result,
        };
        tokio::time::sleep(wait).await;
    }
}

/// The published servers (`super::published`), when this node may boot
/// from them: a client (a server needs every peer of its kind and sees a
/// replaced one only in EC2), a list fresh enough, naming every kind of
/// server the node needs. `None`: ask EC2.
pub fn usable_published(published: Option<&Published>, spec: &NodeSpec) -> Option<Peers> {
    if super::follow::is_server(spec) {
        return None;
    }
    let Some(p) = published else {
        log::info!("discovery: no published server list; asking EC2");
        return None;
    };
    let now = now_unix();
    if !p.fresh(now) {
        log::info!(
            "discovery: the published server list was written {}s ago; asking EC2",
            now.saturating_sub(p.written_unix)
        );
        return None;
    }
    let peers = p.peers();
    if let Some(short) = peers.shortfall(needed(spec)) {
        log::info!("discovery: the published server list {short}; asking EC2");
        return None;
    }
    log::info!(
        "discovery: {} Consul and {} Nomad servers from the published list (written {}s ago), \
         no EC2 call",
        peers.consul_servers.len(),
        peers.nomad_servers.len(),
        now.saturating_sub(p.written_unix)
    );
    Some(peers)
}
