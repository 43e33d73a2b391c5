//! What a bench prints: spreads over runs, READY distributions, and each
//! variant's summary (the issue's `{"scenario", "agent", "auto_join",
//! "ratio"}`).

use serde::Serialize;

/// The value below which `q` of the sorted `values` lie (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Median and range of one figure over the runs of a variant.
#[derive(Debug, Serialize, PartialEq, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: round(quantile(&v, 0.5)),
            min: round(v[0]),
            max: round(v[v.len() - 1]),
        })
    }
}

/// Each node's time to READY over every boot of a variant.
#[derive(Debug, Serialize, PartialEq)]
pub struct ReadyDistribution {
    pub variant: &'static str,
    pub boots: usize,
    pub nodes: usize,
    pub min_s: f64,
    pub median_s: f64,
    pub p90_s: f64,
    pub max_s: f64,
    pub over_30s: usize,
    /// Nodes that never reported READY.
    pub missing: usize,
}

/// `per_boot` holds each boot's nodes' READY times (`None`: never).
pub fn distribution(variant: &'static str, per_boot: &[Vec<Option<f64>>]) -> ReadyDistribution {
    let all: Vec<Option<f64>> = per_boot.iter().flatten().copied().collect();
    let mut ready: Vec<f64> = all.iter().flatten().copied().collect();
    ready.sort_by(f64::total_cmp);
    ReadyDistribution {
        variant,
        boots: per_boot.len(),
        nodes: all.len(),
        min_s: round(ready.first().copied().unwrap_or(0.0)),
        median_s: round(quantile(&ready, 0.5)),
        p90_s: round(quantile(&ready, 0.9)),
        max_s: round(ready.last().copied().unwrap_or(0.0)),
        over_30s: ready.iter().filter(|s| **s > 30.0).count(),
        missing: all.iter().filter(|s| s.is_none()).count(),
    }
}

/// One run's headline figures, whatever the scenario.
#[derive(Debug, Clone, Copy)]
pub struct Headline {
    pub ready_s: f64,
    pub web_s: Option<f64>,
    /// `DescribeInstances` per node until ready, and per node per minute
    /// after (from the proxy in front of moto).
    pub calls_to_ready: f64,
    pub calls_per_minute_after: f64,
    pub failed_requests: u64,
    pub requests: u64,
}

/// A variant's figures over its runs.
#[derive(Debug, Serialize, PartialEq)]
pub struct VariantSummary {
    pub runs: usize,
    /// The scenario's time (see `Scenario`): median, min, max.
    pub ready_s: Spread,
    /// First VM start → the web service answering through Consul (not
    /// measured by `add-client`, whose cluster answered before).
    pub web_s: Option<Spread>,
    pub describe_instances_per_node_to_ready: f64,
    pub describe_instances_per_node_per_minute_after: f64,
    pub web_requests: u64,
    pub failed_web_requests: u64,
}

pub fn summary(runs: &[Headline]) -> Option<VariantSummary> {
    let mean = |f: fn(&Headline) -> f64| {
        (runs.iter().map(f).sum::<f64>() / runs.len() as f64 * 100.0).round() / 100.0
    };
    Some(VariantSummary {
        runs: runs.len(),
        ready_s: Spread::of(runs.iter().map(|r| r.ready_s))?,
        web_s: Spread::of(runs.iter().filter_map(|r| r.web_s)),
        describe_instances_per_node_to_ready: mean(|r| r.calls_to_ready),
        describe_instances_per_node_per_minute_after: mean(|r| r.calls_per_minute_after),
        web_requests: runs.iter().map(|r| r.requests).sum(),
        failed_web_requests: runs.iter().map(|r| r.failed_requests).sum(),
    })
}

/// Auto-join's median over the agent's: how many times faster the agent is.
pub fn ratio(agent: Option<&VariantSummary>, auto_join: Option<&VariantSummary>) -> Option<f64> {
    let (a, j) = (agent?.ready_s.median, auto_join?.ready_s.median);
    (a > 0.0).then(|| (j / a * 100.0).round() / 100.0)
}

/// The largest gap between consecutive lines of the agent's log up to its
/// READY line, with the line before the gap: the reason behind a slow node.
pub fn longest_wait(log: &[(f64, String)]) -> Option<(f64, String)> {
    let end = log
        .iter()
        .position(|(_, m)| m.starts_with("ready:"))
        .unwrap_or(log.len().saturating_sub(1));
    log[..=end.min(log.len().checked_sub(1)?)]
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[0].1.clone()))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 5.0);
        assert_eq!(quantile(&v, 0.9), 9.0);
        assert_eq!(quantile(&v[..1], 0.9), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn a_distribution_counts_slow_and_missing_nodes() {
        let boots = vec![vec![Some(10.0), Some(31.0)], vec![None, Some(12.0)]];
        let d = distribution("x", &boots);
        assert_eq!((d.boots, d.nodes, d.missing, d.over_30s), (2, 4, 1, 1));
        assert_eq!((d.min_s, d.median_s, d.max_s), (10.0, 12.0, 31.0));
    }

    fn run(ready_s: f64, calls: f64) -> Headline {
        Headline {
            ready_s,
            web_s: None,
            calls_to_ready: calls,
            calls_per_minute_after: 0.0,
            failed_requests: 1,
            requests: 10,
        }
    }

    #[test]
    fn a_summary_has_the_median_and_range_and_the_ratio_compares_medians() {
        let agent = summary(&[run(4.0, 1.0), run(2.0, 2.0), run(3.0, 3.0)]).unwrap();
        assert_eq!(
            agent.ready_s,
            Spread {
                median: 3.0,
                min: 2.0,
                max: 4.0
            }
        );
        assert_eq!(agent.web_s, None);
        assert_eq!(agent.describe_instances_per_node_to_ready, 2.0);
        assert_eq!((agent.web_requests, agent.failed_web_requests), (30, 3));
        let join = summary(&[run(9.0, 0.0)]).unwrap();
        assert_eq!(ratio(Some(&agent), Some(&join)), Some(3.0));
        assert_eq!(ratio(Some(&agent), None), None);
        assert!(summary(&[]).is_none());
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
