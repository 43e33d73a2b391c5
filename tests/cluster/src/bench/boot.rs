//! A whole cluster booted from nothing, its VMs started at once
//! (`simultaneous`) or clients first and then the servers one by one
//! (`staggered`), timed to every check green and to the web service.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::figures::{Headline, longest_wait};
use super::{Scenario, Variant};
use crate::cluster::{self, Cluster, Paths};
use crate::ec2proxy::{Counts, DUALSTACK_EC2, PROXY_PORT, describe_by_ip};
use crate::host;
use crate::topology::Topology;
use crate::traffic::{self, Traffic};

#[derive(Debug, Serialize)]
pub struct NodeFigures {
    pub name: String,
    pub roles: String,
    /// From VM start to the agent's READY=1 (status.json's converged time).
    pub ready_s: Option<f64>,
    /// DescribeInstances from this VM (agent, Consul and Nomad) until the
    /// cluster was ready, and in the minute after.
    pub describe_instances_to_ready: u64,
    pub describe_instances_next_minute: u64,
    /// EC2 calls the agent itself counted (status.json).
    pub agent_ec2_calls: u64,
    pub agent_peak_rss_mib: Option<f64>,
    /// The agent's longest silence before READY, from its journal, and
    /// the line it followed (what it was waiting on).
    pub longest_wait: Option<(f64, String)>,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub variant: &'static str,
    /// 1, 2, ... among the boots of this variant.
    pub boot: u32,
    /// From the first VM's start until every cluster check passed.
    pub cluster_ready_s: f64,
    /// `staggered`: from the last server's start until every check passed
    /// (the part a watching agent can shorten; the stagger itself is fixed).
    pub ready_after_last_server_s: f64,
    /// Until the web job's two instances answered through Consul.
    pub web_ready_s: f64,
    /// The web service requested through Consul from the moment it
    /// answered until the end of the minute after READY.
    pub web_traffic: traffic::Figures,
    pub nodes: Vec<NodeFigures>,
}

impl Run {
    pub fn headline(&self) -> Headline {
        let n = self.nodes.len().max(1) as f64;
        let sum = |f: fn(&NodeFigures) -> u64| self.nodes.iter().map(f).sum::<u64>() as f64 / n;
        Headline {
            ready_s: self.cluster_ready_s,
            web_s: Some(self.web_ready_s),
            calls_to_ready: sum(|n| n.describe_instances_to_ready),
            calls_per_minute_after: sum(|n| n.describe_instances_next_minute),
            failed_requests: self.web_traffic.failed_requests,
            requests: self.web_traffic.requests,
        }
    }
}

/// A cluster set up for `variant` (not launched): user data pointing at
/// the EC2 proxy and, for auto-join, Consul's and Nomad's `retry_join`.
pub async fn variant_cluster(
    paths: &Paths,
    topology: Topology,
    variant: Variant,
    ca_pem: &str,
) -> Result<Cluster> {
    let mut cluster = Cluster::create(paths.clone(), topology).await?;
    let endpoint = format!("http://{}:{PROXY_PORT}", host::HUB_IP);
    cluster.user_data = cluster::default_user_data(&endpoint);
    if variant == Variant::AutoJoin {
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
        // Into the [discovery] table: keys appended at the end would land
        // in whatever table comes last (a team's, since teams).
        let toml = &mut cluster.user_data.agent_toml;
        let at = toml
            .find("[discovery]\n")
            .context("the harness's agent.toml has no [discovery] table")?
            + "[discovery]\n".len();
        toml.insert_str(
            at,
            &format!("consul_auto_join = \"{consul}\"\nnomad_auto_join = \"{nomad}\"\n"),
        );
        cluster.user_data.hosts = vec![(host::HUB_IP.to_owned(), DUALSTACK_EC2.to_owned())];
        // Consul's and Nomad's go-discover take the instance role from IMDS,
        // which the IMDS guard refuses them (docs/iam.md: auto-join is not
        // supported with the guard). The bench measures discovery, not
        // that: moto's credentials in their environment files instead.
        cluster.user_data.service_env = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
        ]);
        cluster.user_data.extra_ca = Some(ca_pem.to_owned());
    }
    Ok(cluster)
}

/// Launches every group; `staggered` launches the groups without servers
/// first, then each server `stagger` after the one before. Returns when
/// the last server started, from `started`.
async fn launch(
    cluster: &mut Cluster,
    scenario: Scenario,
    stagger: Duration,
    started: Instant,
) -> Result<Duration> {
    let is_server = |g: &crate::topology::Group| g.is_consul_server() || g.is_nomad_server();
    let (servers, others): (Vec<_>, Vec<_>) = cluster.groups.iter().partition(|g| is_server(g));
    let servers: Vec<(&'static str, usize)> = servers.iter().map(|g| (g.name, g.size)).collect();
    let others: Vec<&'static str> = others.iter().map(|g| g.name).collect();
    if scenario != Scenario::Staggered {
        for (g, _) in &servers {
            cluster.launch_group(g).await?;
        }
        for g in others {
            cluster.launch_group(g).await?;
        }
        return Ok(started.elapsed());
    }
    for g in others {
        cluster.launch_group(g).await?;
    }
    let mut last = started.elapsed();
    let mut nth = 0;
    for (g, size) in servers {
        for _ in 0..size {
            let at = stagger * nth;
            tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
            last = started.elapsed();
            cluster.launch(g, None).await?;
            nth += 1;
        }
    }
    Ok(last)
}

pub async fn one_run(
    paths: &Paths,
    topology: Topology,
    (scenario, stagger): (Scenario, Duration),
    (variant, boot): (Variant, u32),
    counts: &Counts,
    ca_pem: &str,
) -> Result<Run> {
    counts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let mut cluster = variant_cluster(paths, topology, variant, ca_pem).await?;
    cluster.log(format!(
        "bench {}: {}, boot {boot}",
        scenario.name(),
        variant.label()
    ));
    let started = Instant::now();
    let last_server = launch(&mut cluster, scenario, stagger, started).await?;
    cluster
        .wait_ready(variant.label(), Duration::from_secs(600))
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
        variant: variant.label(),
        boot,
        cluster_ready_s,
        ready_after_last_server_s: cluster_ready_s - last_server.as_secs_f64(),
        web_ready_s,
        web_traffic,
        nodes,
    })
}

pub fn print_run(run: &Run) {
    eprintln!(
        "\n{} (boot {}): cluster ready {:.1}s ({:.1}s after the last server), web answering \
         {:.1}s, {} web requests, {} failed",
        run.variant,
        run.boot,
        run.cluster_ready_s,
        run.ready_after_last_server_s,
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
