//! After a Nomad restore: the snapshot's client nodes whose instances are
//! gone.
//!
//! A restored Nomad lists every client the old cluster had, as ready. Its
//! new leader gives each of them `failover_heartbeat_ttl` (five minutes) to
//! heartbeat before it marks them down, and until then the scheduler counts
//! their allocations as running: a cluster restored after losing
//! everything serves nothing for five minutes although its new clients are
//! ready. EC2 knows which of those instances are gone; their nodes are
//! purged at once, so their allocations are rescheduled now. A node whose
//! instance still runs (servers lost, clients kept) is left alone, and so
//! is one without the agent's `kraken.instance_id` meta.

use kraken_discovery::Ec2Peers;
use kraken_hashi::Nomad;

const INSTANCE_META: &str = "kraken.instance_id";

/// Purges the nodes of `cluster` whose instances EC2 no longer lists as
/// pending or running; returns how many. Failures are logged, not
/// returned: the heartbeat TTL reaps those nodes anyway, only later.
pub async fn purge_gone_nodes(nomad: &Nomad, ec2: &Ec2Peers, cluster: &str) -> usize {
    let nodes = match nomad.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            log::warn!("restore: listing Nomad's nodes to purge the gone ones: {e}");
            return 0;
        }
    };
    let mut by_instance = Vec::new();
    for node in nodes.iter().filter(|n| n.status != "down") {
        match nomad.node_meta(&node.id).await {
            Ok(meta) => {
                if let Some(instance) = meta.get(INSTANCE_META) {
                    by_instance.push((node, instance.clone()));
                }
            }
            Err(e) => log::warn!("restore: reading node {}'s meta: {e}", node.name),
        }
    }
    let ids: Vec<String> = by_instance.iter().map(|(_, i)| i.clone()).collect();
    let live = match ec2.live(cluster, &ids).await {
        Ok(live) => live,
        Err(e) => {
            log::warn!(
                "restore: {e}; the old cluster's nodes go down when their heartbeats expire"
            );
            return 0;
        }
    };
    let mut purged = 0;
    for (node, instance) in by_instance.iter().filter(|(_, i)| !live.contains(i)) {
        match nomad.purge_node(&node.id).await {
            Ok(()) => {
                purged += 1;
                log::info!(
                    "restore: purged node {} ({}): instance {instance} is gone",
                    node.name,
                    node.id
                );
            }
            Err(e) => log::warn!("restore: purging node {} ({instance}): {e}", node.name),
        }
    }
    purged
}
