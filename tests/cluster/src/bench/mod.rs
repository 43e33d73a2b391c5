//! `cluster bench --scenario NAME`: the same VMs, once joined by the
//! agent's own discovery and once by Consul's and Nomad's cloud auto-join
//! pointed at moto, everything else equal (each `--runs` times). EC2
//! calls are counted by a proxy in front of moto ([`crate::ec2proxy`]),
//! per VM address and action, so both variants are counted the same way
//! (go-discover's calls included).
//!
//! Scenarios ([`Scenario`]): `simultaneous` boots every VM at once;
//! `staggered` boots the clients first, then the servers one by one
//! `--stagger-secs` apart; `add-client` adds clients one at a time to a
//! running cluster. JSON on stdout: `{"scenario", "agent", "auto_join",
//! "ratio", ...}` with each run's figures; a table on stderr. Times are
//! figures; the bench fails only when a run cannot finish or a web request
//! failed.

mod add_client;
mod boot;
mod figures;

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::cluster::Paths;
use crate::topology::Topology;
use figures::{ReadyDistribution, VariantSummary, distribution, ratio, summary};

/// Which ways of finding the servers to boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Discovery {
    Agent,
    AutoJoin,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Simultaneous,
    Staggered,
    AddClient,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Simultaneous => "simultaneous",
            Scenario::Staggered => "staggered",
            Scenario::AddClient => "add-client",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Agent,
    AutoJoin,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::Agent => "kraken-agent discovery",
            Variant::AutoJoin => "cloud auto-join",
        }
    }
}

pub struct Bench {
    pub topology: Topology,
    pub scenario: Scenario,
    pub runs: u32,
    pub discovery: Discovery,
    pub stagger: Duration,
}

impl Bench {
    fn variants(&self) -> &'static [Variant] {
        match self.discovery {
            Discovery::Agent => &[Variant::Agent],
            Discovery::AutoJoin => &[Variant::AutoJoin],
            Discovery::Both => &[Variant::Agent, Variant::AutoJoin],
        }
    }

    /// Runs the variants on fresh clusters in the same hub (`runs` boots
    /// each, alternating; for `add-client`, one cluster per variant and
    /// `runs` clients added to it); prints JSON on stdout and a table on
    /// stderr. The caller has prepared the hub and tears down.
    pub async fn run(self, paths: Paths) -> Result<bool> {
        let (ca, cert, key) = crate::ec2proxy::dualstack_certificate()?;
        let counts = crate::ec2proxy::start_proxy(&cert, &key).await?;
        let mut headlines: Vec<(Variant, figures::Headline)> = Vec::new();
        let mut runs_json = Vec::new();
        let mut ready: Vec<ReadyDistribution> = Vec::new();
        if self.scenario == Scenario::AddClient {
            for &variant in self.variants() {
                let run = add_client::run(&paths, self.topology, variant, self.runs, &counts, &ca)
                    .await?;
                add_client::print(&run);
                headlines.extend(run.headlines().into_iter().map(|h| (variant, h)));
                runs_json.push(json!({
                    "variant": run.variant,
                    "added": run.added,
                    "web_traffic": run.web_traffic,
                }));
            }
        } else {
            let mut runs = Vec::new();
            for boot in 1..=self.runs {
                for &variant in self.variants() {
                    let scenario = (self.scenario, self.stagger);
                    let run = boot::one_run(
                        &paths,
                        self.topology,
                        scenario,
                        (variant, boot),
                        &counts,
                        &ca,
                    )
                    .await?;
                    boot::print_run(&run);
                    headlines.push((variant, run.headline()));
                    runs.push((variant, run));
                }
            }
            for &variant in self.variants() {
                let per_boot: Vec<Vec<Option<f64>>> = runs
                    .iter()
                    .filter(|(v, _)| *v == variant)
                    .map(|(_, r)| r.nodes.iter().map(|n| n.ready_s).collect())
                    .collect();
                ready.push(distribution(variant.label(), &per_boot));
            }
            let after_last: Vec<(Variant, f64)> = runs
                .iter()
                .map(|(v, r)| (*v, r.ready_after_last_server_s))
                .collect();
            runs_json = runs.into_iter().map(|(_, r)| json!(r)).collect();
            if self.scenario == Scenario::Staggered {
                print_after_last(&after_last);
            }
        }
        let of = |variant: Variant| -> Option<VariantSummary> {
            let runs: Vec<_> = headlines
                .iter()
                .filter(|(v, _)| *v == variant)
                .map(|(_, h)| *h)
                .collect();
            summary(&runs)
        };
        let (agent, auto_join) = (of(Variant::Agent), of(Variant::AutoJoin));
        let ratio = ratio(agent.as_ref(), auto_join.as_ref());
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "scenario": self.scenario.name(),
                "topology": self.topology.name(),
                "stagger_s": (self.scenario == Scenario::Staggered).then_some(self.stagger.as_secs()),
                "agent": agent,
                "auto_join": auto_join,
                "ratio": ratio,
                "ready": ready,
                "runs": runs_json,
            }))?
        );
        for (label, s) in [("agent", &agent), ("auto-join", &auto_join)] {
            if let Some(s) = s {
                eprintln!(
                    "\n{} {label}: {} runs, {} median {}s (min {}, max {}), DescribeInstances \
                     per node {} to ready, {}/min after; {} of {} web requests failed",
                    self.scenario.name(),
                    s.runs,
                    if self.scenario == Scenario::AddClient {
                        "agent start → node eligible"
                    } else {
                        "first VM start → every check green"
                    },
                    s.ready_s.median,
                    s.ready_s.min,
                    s.ready_s.max,
                    s.describe_instances_per_node_to_ready,
                    s.describe_instances_per_node_per_minute_after,
                    s.failed_web_requests,
                    s.web_requests
                );
            }
        }
        if let Some(r) = ratio {
            eprintln!("ratio (auto-join over agent): {r}");
        }
        // Times are figures; a failed request is a fault.
        let failed: u64 = [&agent, &auto_join]
            .iter()
            .filter_map(|s| s.as_ref())
            .map(|s| s.failed_web_requests)
            .sum();
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
        if failed > 0 {
            eprintln!("bench: {failed} web requests failed");
        }
        Ok(failed == 0)
    }
}

fn print_after_last(runs: &[(Variant, f64)]) {
    for variant in [Variant::Agent, Variant::AutoJoin] {
        let spread =
            figures::Spread::of(runs.iter().filter(|(v, _)| *v == variant).map(|(_, s)| *s));
        if let Some(s) = spread {
            eprintln!(
                "{}: ready {}s after the last server started (min {}, max {})",
                variant.label(),
                s.median,
                s.min,
                s.max
            );
        }
    }
}
