//! `cluster terminate NODE --poweroff`: an instance powered off from
//! inside, with no lifecycle state (stopped or terminated outside its
//! group). `kraken-leave.service` is all that runs at its shutdown.
//!
//! A client must be gone cleanly: its Consul member `left`, its Nomad node
//! drained and purged. A server must leave only if the others can spare
//! it right now (docs/operations.md, "Power-off without a hook"): with
//! three, they cannot, so it goes down a failed member while the other two
//! keep both quorums. The group then replaces it, as an autoscaling group
//! replaces an instance that stopped: the replacement's launching hook,
//! and autopilot removes the dead server once the new one is a voter.

use std::time::{Duration, Instant};

use anyhow::Result;
use kraken_testkit::asg::LifecycleFake;

use crate::api::{Tokens, consul_url, nomad_url};
use crate::checks::{self, Node};
use crate::cluster::Cluster;
use crate::lifecycle::{HookReport, Report, consul_member_status, launch_through_hook};
use crate::voters::{voter_failures, voters};

/// Serf's member statuses.
const ALIVE: i64 = 1;
const LEFT: i64 = 3;
const FAILED: i64 = 4;
/// How long autopilot may take to remove the dead server once its
/// replacement is a voter (server stabilization 10 s, and a round).
const CLEANUP: Duration = Duration::from_secs(120);

/// `systemctl poweroff` inside the VM, then what the cluster must show.
pub async fn power_off(
    cluster: &mut Cluster,
    fake: &LifecycleFake,
    name: &str,
    report: &mut Report,
) -> Result<()> {
    let tokens = cluster.tokens().await?;
    let vm = cluster.vm_mut(name)?;
    let (id, group) = (vm.instance_id.clone(), vm.group.clone());
    let server = cluster.group(&group)?.is_consul_server();
    let servers = cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_consul_server())
        .count();
    cluster.log(format!(
        "{name}: powering off from inside (no lifecycle state)"
    ));
    let started = Instant::now();
    // kraken-leave.service's stop timeout, and a little more.
    let clean = cluster
        .vm_mut(name)?
        .shut_down(Duration::from_secs(450))
        .await;
    report.hooks.push(HookReport {
        instance: name.into(),
        hook: "power-off".into(),
        result: if clean { "shut down" } else { "cut" }.into(),
        by: "kraken-leave.service".into(),
        heartbeats: 0,
        seconds: started.elapsed().as_secs_f64(),
    });
    if !clean {
        report
            .failures
            .push(format!("{name}: did not shut down within 450 s"));
    }
    let member = settled_member_status(cluster, &tokens, &id).await;
    report
        .left
        .push(serde_json::json!({ name: { "consul_member_status": member } }));
    cluster.cloud.terminate(&id).await?;
    cluster.save()?;
    if !server {
        if member != Some(LEFT) {
            report.failures.push(format!(
                "{name}: Consul member status {member:?} after power-off; expected {LEFT} (left)"
            ));
        }
        if crate::warm::nomad_node(cluster, &tokens, &id)
            .await
            .is_some()
        {
            report.failures.push(format!(
                "{name}: Nomad still lists node {id} after power-off (not purged)"
            ));
        }
        return Ok(());
    }
    // Raft's failure tolerance without it: (voters left - 1) / 2.
    let spare = (servers - 2) / 2 >= 1;
    let expected = if spare { LEFT } else { FAILED };
    if member != Some(expected) {
        report.failures.push(format!(
            "{name}: Consul member status {member:?} after power-off of 1 of {servers} servers; \
             expected {expected} ({})",
            if spare {
                "left"
            } else {
                "failed: the others could not spare it"
            }
        ));
    }
    // It may have led: the two left elect a new leader within an election
    // timeout or two. With quorum lost none is ever elected.
    let deadline = Instant::now() + ELECTION;
    let (consul, nomad) = loop {
        let (consul, nomad) = leaders(cluster, &tokens).await;
        if (consul.is_ok() && nomad.is_ok()) || Instant::now() >= deadline {
            break (consul, nomad);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    cluster.log(format!(
        "{name}: down; Consul leader {consul:?}, Nomad leader {nomad:?} among the {} left",
        servers - 1
    ));
    if let (Err(e), _) | (_, Err(e)) = (&consul, &nomad) {
        report.failures.push(format!(
            "{name}: without it, the servers left have no agreed leader ({e:#}): quorum lost"
        ));
    }
    replace_server(cluster, fake, &group, name, report).await
}

/// The group's replacement for a server that went: launched through the
/// launching hook (its agent completes it once the server is a healthy
/// voter), then autopilot must leave exactly the running servers.
async fn replace_server(
    cluster: &mut Cluster,
    fake: &LifecycleFake,
    group: &str,
    old: &str,
    report: &mut Report,
) -> Result<()> {
    let new = launch_through_hook(cluster, fake, group, report).await?;
    cluster.log(format!(
        "{new}: replaced {old} (its launching hook is done)"
    ));
    report.replaced.push((old.to_owned(), new.clone()));
    let tokens = cluster.tokens().await?;
    let started = Instant::now();
    while started.elapsed() < CLEANUP {
        if voter_failures(cluster, &voters(cluster, &tokens).await).is_empty() {
            cluster.log(format!(
                "{old}: removed by autopilot {:.1}s after {new}'s hook",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // `finish` reports what is still wrong.
    Ok(())
}

/// How long the servers left get to agree on a leader after the one that
/// went led: Consul's default `raft_multiplier` (5) makes its election
/// timeout a random 5–10 s, Nomad's (1) 1–2 s, and a split vote costs a
/// round more.
const ELECTION: Duration = Duration::from_secs(30);

/// Serf's status of the member once it is no longer alive: a member that
/// left says so at once, one that went down is declared failed by gossip a
/// few seconds later (probes, then suspicion). Alive after 30 s is what it
/// is.
async fn settled_member_status(cluster: &Cluster, tokens: &Tokens, id: &str) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = consul_member_status(cluster, tokens, id).await;
        if status != Some(ALIVE) || Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The Consul and Nomad leaders, each agreed by every running server (the
/// check `cluster status` makes); an error says which is missing.
async fn leaders(cluster: &Cluster, tokens: &Tokens) -> (Result<String>, Result<String>) {
    let nodes = cluster.nodes();
    let consul: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.group.is_consul_server())
        .collect();
    let nomad: Vec<&Node> = nodes.iter().filter(|n| n.group.is_nomad_server()).collect();
    (
        checks::leader(&cluster.api, &consul, consul_url, tokens.consul_header()).await,
        checks::leader(&cluster.api, &nomad, nomad_url, tokens.nomad_header()).await,
    )
}
