//! `add-client`: clients added one at a time to a running, converged
//! cluster (as an autoscaling group scales out), each timed from its
//! agent's start to its Nomad node being eligible for work, while the web
//! service is requested through Consul.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::Variant;
use super::boot::variant_cluster;
use super::figures::Headline;
use crate::api::{Tokens, nomad_url};
use crate::cluster::{Cluster, Paths};
use crate::ec2proxy::{Counts, describe_by_ip};
use crate::topology::Topology;
use crate::traffic::{self, Traffic};
use crate::vm::now;

#[derive(Debug, Serialize)]
pub struct Added {
    pub variant: &'static str,
    pub name: String,
    /// The agent's unit started (its journal's first line) → the Nomad
    /// servers list the node `ready` and `eligible`.
    pub agent_start_to_eligible_s: f64,
    /// The VM's boot (the instance launched) → eligible.
    pub vm_start_to_eligible_s: f64,
    /// The agent's own READY, after its unit started.
    pub agent_ready_s: Option<f64>,
    pub describe_instances_to_eligible: u64,
    /// Over the time from eligible to the end of the bench (at least a
    /// minute), per minute.
    pub describe_instances_per_minute_after: f64,
    #[serde(skip)]
    eligible_at: f64,
}

pub struct AddClient {
    pub variant: &'static str,
    pub added: Vec<Added>,
    /// The whole time the clients were added, and a minute after.
    pub web_traffic: traffic::Figures,
}

impl AddClient {
    /// One headline per added client; the traffic's failures go to the
    /// first (they belong to the whole variant).
    pub fn headlines(&self) -> Vec<Headline> {
        self.added
            .iter()
            .enumerate()
            .map(|(i, a)| Headline {
                ready_s: a.agent_start_to_eligible_s,
                web_s: None,
                calls_to_ready: a.describe_instances_to_eligible as f64,
                calls_per_minute_after: a.describe_instances_per_minute_after,
                failed_requests: if i == 0 {
                    self.web_traffic.failed_requests
                } else {
                    0
                },
                requests: if i == 0 { self.web_traffic.requests } else { 0 },
            })
            .collect()
    }
}

/// When the Nomad servers list `instance_id` ready and eligible.
async fn wait_eligible(
    cluster: &Cluster,
    tokens: &Tokens,
    instance_id: &str,
    timeout: Duration,
) -> Result<f64> {
    let servers: Vec<String> = cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_nomad_server())
        .map(|n| n.vm.address.clone())
        .collect();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for address in &servers {
            let url = nomad_url(address, "/v1/nodes");
            let Ok((200, list)) = cluster.api.get(&url, tokens.nomad_header()).await else {
                continue;
            };
            let eligible = list.as_array().into_iter().flatten().any(|n| {
                n["Name"] == instance_id
                    && n["Status"] == "ready"
                    && n["SchedulingEligibility"] == "eligible"
            });
            if eligible {
                return Ok(now());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "node {instance_id} not eligible within {}s",
        timeout.as_secs()
    )
}

pub async fn run(
    paths: &Paths,
    topology: Topology,
    variant: Variant,
    adds: u32,
    counts: &Counts,
    ca_pem: &str,
) -> Result<AddClient> {
    counts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let mut cluster = variant_cluster(paths, topology, variant, ca_pem).await?;
    cluster.log(format!("bench add-client: {}", variant.label()));
    let groups: Vec<&'static str> = cluster.groups.iter().map(|g| g.name).collect();
    for g in groups {
        cluster.launch_group(g).await?;
    }
    cluster
        .wait_ready(variant.label(), Duration::from_secs(600))
        .await?;
    cluster.deploy_web().await?;
    cluster.wait_web(Duration::from_secs(180)).await?;
    let tokens = cluster.tokens().await?;
    let users = Traffic::start(&cluster, tokens.clone(), 2);
    let group = cluster
        .groups
        .iter()
        .find(|g| g.is_nomad_client() && !g.is_consul_server() && !g.is_nomad_server())
        .context("no client group in this topology")?
        .name;
    let mut added = Vec::new();
    for n in 1..=adds {
        let vm = cluster.launch(group, None).await?;
        let (name, id, address, vm_start) = (
            vm.name.clone(),
            vm.instance_id.clone(),
            vm.address.clone(),
            vm.started_at,
        );
        let eligible_at = wait_eligible(&cluster, &tokens, &id, Duration::from_secs(300)).await?;
        let calls = describe_by_ip(counts).get(&address).copied().unwrap_or(0);
        let vm = cluster
            .vms
            .iter()
            .find(|v| v.name == name)
            .expect("launched");
        let log = vm.agent_log().unwrap_or_default();
        let agent_start = log.first().map(|(t, _)| *t).context("no agent journal")?;
        // READY follows eligibility (it also waits for Nomad's own service
        // in Consul): a second view of the same join, from the agent.
        let mut agent_ready_s = None;
        for _ in 0..300 {
            agent_ready_s = vm
                .agent_status()
                .and_then(|s| s.converged_unix)
                .map(|t| t as f64 - agent_start);
            if agent_ready_s.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.log(format!(
            "add-client {n}/{adds}: {name} eligible {:.1}s after its agent started",
            eligible_at - agent_start
        ));
        added.push(Added {
            variant: variant.label(),
            name,
            agent_start_to_eligible_s: eligible_at - agent_start,
            vm_start_to_eligible_s: eligible_at - vm_start,
            agent_ready_s,
            describe_instances_to_eligible: calls,
            describe_instances_per_minute_after: 0.0,
            eligible_at,
        });
    }
    // A minute after the last one, then each added node's calls since it
    // was eligible.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let by_ip: BTreeMap<String, u64> = describe_by_ip(counts);
    for a in &mut added {
        let address = &cluster
            .vms
            .iter()
            .find(|v| v.name == a.name)
            .expect("launched")
            .address;
        let since = by_ip.get(address).copied().unwrap_or(0) - a.describe_instances_to_eligible;
        let minutes = (now() - a.eligible_at) / 60.0;
        a.describe_instances_per_minute_after = (since as f64 / minutes * 100.0).round() / 100.0;
    }
    let web_traffic = users.finish().await;
    cluster.destroy();
    Ok(AddClient {
        variant: variant.label(),
        added,
        web_traffic,
    })
}

pub fn print(run: &AddClient) {
    eprintln!(
        "\n{} add-client: {} web requests, {} failed",
        run.variant, run.web_traffic.requests, run.web_traffic.failed_requests
    );
    for a in &run.added {
        eprintln!(
            "  {:<10} agent start → eligible {:>5.1}s (VM start → eligible {:>5.1}s, READY {}), \
             DescribeInstances {} to eligible, {:.2}/min after",
            a.name,
            a.agent_start_to_eligible_s,
            a.vm_start_to_eligible_s,
            a.agent_ready_s
                .map(|s| format!("{s:.1}s"))
                .unwrap_or("-".into()),
            a.describe_instances_to_eligible,
            a.describe_instances_per_minute_after
        );
    }
}
