//! `cluster bench`: the same VMs booted twice, once joined by the agent's
//! own discovery, once by Consul's and Nomad's cloud auto-join pointed at
//! moto, everything else equal (each `--runs` times). EC2 calls are counted
//! by a proxy in front of moto ([`crate::ec2proxy`]), per VM address and
//! action, so both variants are counted the same way (go-discover's calls
//! included). Each node's time to READY, and their distribution over all
//! boots of a variant.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cluster::{self, Cluster, Paths};
use crate::ec2proxy::{Counts, DUALSTACK_EC2, PROXY_PORT, describe_by_ip};
use crate::host;
use crate::topology::Topology;
use crate::traffic::{self, Traffic};

/// Which ways of finding the servers to boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Discovery {
    Agent,
    AutoJoin,
    Both,
}

pub struct Bench {
    pub topology: Topology,
    pub runs: u32,
    pub discovery: Discovery,
}

#[derive(Debug, Serialize)]
struct NodeFigures {
    name: String,
    roles: String,
    /// From VM start to the agent's READY=1 (status.json's converged time).
    ready_s: Option<f64>,
    /// DescribeInstances from this VM (agent, Consul and Nomad) until the
    /// cluster was ready, and in the minute after.
    describe_instances_to_ready: u64,
    describe_instances_next_minute: u64,
    /// EC2 calls the agent itself counted (status.json).
    agent_ec2_calls: u64,
    agent_peak_rss_mib: Option<f64>,
    /// The agent's longest silence before READY, from its journal, and
    /// the line it followed (what it was waiting on): the reason behind a
    /// slow node.
    longest_wait: Option<(f64, String)>,
}

/// The largest gap between consecutive lines of the agent's log up to its
/// READY line, with the line before the gap.
fn longest_wait(log: &[(f64, String)]) -> Option<(f64, String)> {
    let end = log
        .iter()
        .position(|(_, m)| m.starts_with("ready:"))
        .unwrap_or(log.len().saturating_sub(1));
    log[..=end.min(log.len().checked_sub(1)?)]
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[0].1.clone()))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

#[derive(Debug, Serialize)]
struct Run {
    variant: &'static str,
    /// 1, 2, ... among the boots of this variant.
    boot: u32,
    /// From the first VM's start until every cluster check passed.
    cluster_ready_s: f64,
    /// Until the web job's two instances answered through Consul.
    web_ready_s: f64,
    /// The web service requested through Consul from the moment it
    /// answered until the end of the minute after READY.
    web_traffic: traffic::Figures,
    nodes: Vec<NodeFigures>,
}

async fn one_run(
    paths: &Paths,
    topology: Topology,
    (auto_join, boot): (bool, u32),
    counts: &Counts,
    ca_pem: &str,
) -> Result<Run> {
    counts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let mut cluster = Cluster::create(paths.clone(), topology).await?;
    let endpoint = format!("http://{}:{PROXY_PORT}", host::HUB_IP);
    cluster.user_data = cluster::default_user_data(&endpoint);
    if auto_join {
        let join = |roles: &str| {
            format!(
                "provider=aws region={} tag_key=kraken:roles tag_value={roles} addr_type=private_v4",
                crate::cloud::REGION
            )
        };
        let consul = cluster.groups.iter().find(|g| g.is_consul_server());
        let nomad = cluster.groups.iter().find(|g| g.is_nomad_server());
        let (consul, nomad) = (
            join(consul.context("no Consul servers")?.roles()),
            join(nomad.context("no Nomad servers")?.roles()),
        );
        cluster.user_data.agent_toml.push_str(&format!(
            "consul_auto_join = \"{consul}\"\nnomad_auto_join = \"{nomad}\"\n"
        ));
        cluster.user_data.hosts = vec![(host::HUB_IP.to_owned(), DUALSTACK_EC2.to_owned())];
        cluster.user_data.extra_ca = Some(ca_pem.to_owned());
    }
    let variant = if auto_join {
        "cloud auto-join"
    } else {
        "kraken-agent discovery"
    };
    cluster.log(format!("bench: {variant}, boot {boot}"));
    let started = Instant::now();
    let groups: Vec<&'static str> = cluster.groups.iter().map(|g| g.name).collect();
    for g in groups {
        cluster.launch_group(g).await?;
    }
    cluster
        .wait_ready(variant, Duration::from_secs(600))
        .await?;
    let cluster_ready_s = started.elapsed().as_secs_f64();
    let at_ready = describe_by_ip(counts);
    cluster.deploy_web().await?;
    cluster.wait_web(Duration::from_secs(180)).await?;
    let web_ready_s = started.elapsed().as_secs_f64();
    let users = Traffic::start(&cluster, cluster.tokens().await?, 2);
    // The steady state: a minute after the cluster was ready.
    let minute_after = Duration::from_secs_f64(cluster_ready_s) + Duration::from_secs(60);
    tokio::time::sleep(minute_after.saturating_sub(started.elapsed())).await;
    let after = describe_by_ip(counts);
    let web_traffic = users.finish().await;
    let nodes = cluster
        .vms
        .iter()
        .map(|vm| {
            let status = vm.agent_status().unwrap_or_default();
            let to_ready = at_ready.get(&vm.address).copied().unwrap_or(0);
            NodeFigures {
                name: vm.name.clone(),
                roles: vm.tags.get("kraken:roles").cloned().unwrap_or_default(),
                ready_s: status
                    .converged_unix
                    .map(|t| (t as f64 - vm.started_at).max(0.0)),
                describe_instances_to_ready: to_ready,
                describe_instances_next_minute: after.get(&vm.address).copied().unwrap_or(0)
                    - to_ready,
                agent_ec2_calls: status.ec2_api_calls,
                agent_peak_rss_mib: vm.agent_peak_rss_kib().map(|k| k as f64 / 1024.0),
                longest_wait: longest_wait(&vm.agent_log().unwrap_or_default()),
            }
        })
        .collect();
    cluster.destroy();
    Ok(Run {
        variant,
        boot,
        cluster_ready_s,
        web_ready_s,
        web_traffic,
        nodes,
    })
}

/// Each node's time to READY over every boot of a variant.
#[derive(Debug, Serialize, PartialEq)]
struct ReadyDistribution {
    variant: &'static str,
    boots: usize,
    nodes: usize,
    min_s: f64,
    median_s: f64,
    p90_s: f64,
    max_s: f64,
    over_30s: usize,
    /// Nodes that never reported READY.
    missing: usize,
}

/// The value below which `q` of the sorted `values` lie (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn distribution(variant: &'static str, runs: &[&Run]) -> ReadyDistribution {
    let all: Vec<Option<f64>> = runs
        .iter()
        .flat_map(|r| r.nodes.iter().map(|n| n.ready_s))
        .collect();
    let mut ready: Vec<f64> = all.iter().flatten().copied().collect();
    ready.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 10.0).round() / 10.0;
    ReadyDistribution {
        variant,
        boots: runs.len(),
        nodes: all.len(),
        min_s: round(ready.first().copied().unwrap_or(0.0)),
        median_s: round(quantile(&ready, 0.5)),
        p90_s: round(quantile(&ready, 0.9)),
        max_s: round(ready.last().copied().unwrap_or(0.0)),
        over_30s: ready.iter().filter(|s| **s > 30.0).count(),
        missing: all.iter().filter(|s| s.is_none()).count(),
    }
}

impl Bench {
    /// Runs the variants on fresh clusters in the same hub, `runs` times
    /// each, alternating; prints JSON on stdout and a table on stderr. The
    /// caller has prepared the hub and tears down.
    pub async fn run(self, paths: Paths) -> Result<bool> {
        let (ca, cert, key) = crate::ec2proxy::dualstack_certificate()?;
        let counts = crate::ec2proxy::start_proxy(&cert, &key).await?;
        let variants: &[bool] = match self.discovery {
            Discovery::Agent => &[false],
            Discovery::AutoJoin => &[true],
            Discovery::Both => &[false, true],
        };
        let mut runs = Vec::new();
        for boot in 1..=self.runs {
            for &auto_join in variants {
                runs.push(one_run(&paths, self.topology, (auto_join, boot), &counts, &ca).await?);
            }
        }
        let names = ["kraken-agent discovery", "cloud auto-join"];
        let ready: Vec<ReadyDistribution> = names
            .iter()
            .map(|v| {
                distribution(
                    v,
                    &runs.iter().filter(|r| r.variant == *v).collect::<Vec<_>>(),
                )
            })
            .filter(|d| d.boots > 0)
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "topology": self.topology.name(),
                "runs": runs,
                "ready": ready,
            }))?
        );
        for run in &runs {
            print_run(run);
        }
        for d in &ready {
            eprintln!(
                "\n{}: READY over {} boots ({} nodes): min {}s, median {}s, p90 {}s, max {}s; \
                 {} over 30 s, {} never",
                d.variant,
                d.boots,
                d.nodes,
                d.min_s,
                d.median_s,
                d.p90_s,
                d.max_s,
                d.over_30s,
                d.missing
            );
        }
        Ok(true)
    }
}

fn print_run(run: &Run) {
    eprintln!(
        "\n{} (boot {}): cluster ready {:.1}s, web answering {:.1}s, {} web requests, {} failed",
        run.variant,
        run.boot,
        run.cluster_ready_s,
        run.web_ready_s,
        run.web_traffic.requests,
        run.web_traffic.failed_requests
    );
    eprintln!(
        "  {:<10} {:<28} {:>8} {:>14} {:>14} {:>9}",
        "node", "roles", "READY s", "DescrInst→rdy", "DescrInst/min", "RSS MiB"
    );
    for n in &run.nodes {
        eprintln!(
            "  {:<10} {:<28} {:>8} {:>14} {:>14} {:>9}",
            n.name,
            n.roles,
            n.ready_s.map(|s| format!("{s:.0}")).unwrap_or("-".into()),
            n.describe_instances_to_ready,
            n.describe_instances_next_minute,
            n.agent_peak_rss_mib
                .map(|m| format!("{m:.1}"))
                .unwrap_or("-".into()),
        );
        if let Some((secs, after)) = &n.longest_wait {
            eprintln!("      longest wait {secs:.1}s, after: {after}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{longest_wait, quantile};

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 5.0);
        assert_eq!(quantile(&v, 0.9), 9.0);
        assert_eq!(quantile(&v[..1], 0.9), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_longest_wait_is_before_ready() {
        let log: Vec<(f64, String)> = [
            (0.0, "reading instance identity from IMDS"),
            (1.0, "waiting for Nomad to answer"),
            (68.0, "waiting for this node's tokens in the secret store"),
            (68.5, "ready: converged"),
            (200.0, "discovery: 2 EC2 API calls so far"),
        ]
        .into_iter()
        .map(|(t, m)| (t, m.to_owned()))
        .collect();
        assert_eq!(
            longest_wait(&log),
            Some((67.0, "waiting for Nomad to answer".to_owned()))
        );
        assert_eq!(longest_wait(&log[..1]), None);
        assert_eq!(longest_wait(&[]), None);
    }
}
