//! `cluster soak`: a fresh small cluster whose certificates live
//! `--leaf-lifetime-secs` (renewed at two thirds of that, and reloaded),
//! with the web service requested through Consul for `--minutes`. Every
//! node must renew as often as the time allows, every request must
//! succeed, no Nomad may lose its link to Consul, no server may restart,
//! and at the end every TLS port must serve the certificate in its file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::api;
use crate::certs::{self, Renewals, Served};
use crate::cluster::{Cluster, Paths};
use crate::journals;
use crate::monitor::{Monitor, Targets};
use crate::topology::Topology;
use crate::traffic::Traffic;
use crate::vm;

/// The discovery refresh is also how often the agent looks at its
/// certificates: a sixth of their life, so that a renewal due at two
/// thirds happens with a sixth to spare.
fn refresh_secs(lifetime: u64) -> u64 {
    (lifetime / 6).clamp(1, 15)
}

/// The least renewals `minutes` of `lifetime` certificates must show on
/// every node: one per lifetime, less one for the first and the last.
pub fn required_renewals(minutes: f64, lifetime: u64) -> u32 {
    ((minutes * 60.0 / lifetime as f64).floor() as i64 - 1).max(0) as u32
}

#[derive(Debug, Serialize)]
struct NodeRenewals {
    /// Serial changes served on the node's Consul and Nomad HTTPS ports.
    #[serde(flatten)]
    served: Served,
    /// The agent's "new certificate" log lines for consul.pem and
    /// nomad.pem during the soak.
    logged_consul: usize,
    logged_nomad: usize,
    /// The agent's "still serving an older certificate" warnings.
    stale_warnings: usize,
}

/// The soak; the JSON report and whether it passed. The caller has
/// prepared the hub and tears down.
pub async fn soak(paths: Paths, minutes: f64, lifetime: u64) -> Result<bool> {
    if !api::tls() {
        bail!("the soak renews certificates: run it with TLS (without --no-tls)");
    }
    if lifetime < 60 {
        bail!("--leaf-lifetime-secs {lifetime}: the agent accepts 60 or more");
    }
    if minutes <= 0.0 {
        bail!("--minutes {minutes}: expected a positive number");
    }
    let refresh = refresh_secs(lifetime);
    let mut cluster = Cluster::create(paths, Topology::Small).await?;
    let toml = &cluster.user_data.agent_toml;
    let default_refresh = "refresh_secs = 15";
    if !toml.contains(default_refresh) || toml.contains("[tls]") {
        bail!("the cluster's agent.toml changed shape: update tests/cluster/src/soak.rs");
    }
    cluster.user_data.agent_toml = format!(
        "{}\n[tls]\nleaf_lifetime_secs = {lifetime}\n",
        toml.replace(default_refresh, &format!("refresh_secs = {refresh}"))
    );
    cluster.log(format!(
        "soak: certificates living {lifetime}s, discovery refresh {refresh}s, {minutes} minutes"
    ));
    let groups: Vec<&'static str> = cluster.groups.iter().map(|g| g.name).collect();
    for g in groups {
        cluster.launch_group(g).await?;
    }
    cluster.wait_ready("soak", Duration::from_secs(600)).await?;
    cluster.deploy_web().await?;
    cluster.wait_web(Duration::from_secs(180)).await?;
    let tokens = cluster.tokens().await?;

    let since = vm::now();
    let started = Instant::now();
    let users = Traffic::start(&cluster, tokens.clone(), 2);
    let targets = Targets::of(
        &cluster,
        Duration::from_millis(250),
        Duration::from_secs(2),
        false,
    );
    let watch = Monitor::start(cluster.api.clone(), tokens.clone(), targets);
    let renewals = Renewals::start(&cluster, Duration::from_secs(5));
    let length = Duration::from_secs_f64(minutes * 60.0);
    while started.elapsed() < length {
        tokio::time::sleep((length - started.elapsed()).min(Duration::from_secs(30))).await;
        let seen: Vec<String> = renewals
            .seen()
            .iter()
            .map(|(n, s)| format!("{n} {}/{}", s.consul_https, s.nomad_https))
            .collect();
        cluster.log(format!(
            "soak: {}; renewals served (Consul/Nomad HTTPS): {}",
            users.progress(),
            seen.join(", ")
        ));
    }
    let traffic = users.finish().await;
    let servers = watch.finish().await;
    let served = renewals.finish().await;

    let errors = journals::nomad_consul_errors(&cluster.vms, since)?;
    let mut per_node = BTreeMap::new();
    for vm in cluster.vms.iter().filter(|v| !v.gone) {
        let log = vm.agent_log()?;
        let during = || log.iter().filter(|(t, _)| *t >= since).map(|(_, l)| l);
        let count = |needle: &str| during().filter(|l| l.contains(needle)).count();
        per_node.insert(
            vm.name.clone(),
            NodeRenewals {
                served: served.get(&vm.name).cloned().unwrap_or_default(),
                logged_consul: count("consul.pem: new certificate"),
                logged_nomad: count("nomad.pem: new certificate"),
                stale_warnings: count("still serving an older certificate"),
            },
        );
    }
    let ports = certs::served_vs_files(&cluster).await;
    let checks = cluster.checks().await;

    let required = required_renewals(minutes, lifetime);
    let mut failures = Vec::new();
    if traffic.failed_requests > 0 {
        failures.push(format!(
            "{} of {} requests failed: {:?}",
            traffic.failed_requests, traffic.requests, traffic.first_failures
        ));
    }
    for n in cluster.nodes() {
        let r = &per_node[&n.vm.name];
        let nomad = n.group.is_nomad_server() || n.group.is_nomad_client();
        if r.served.consul_https < required || (nomad && r.served.nomad_https < required) {
            failures.push(format!(
                "{} renewed {} (Consul) / {} (Nomad) times, want at least {required}",
                n.vm.name, r.served.consul_https, r.served.nomad_https
            ));
        }
    }
    if !errors.is_empty() {
        failures.push(format!(
            "{} Consul errors in Nomad's journals",
            errors.len()
        ));
    }
    if servers.pid_samples == 0 {
        failures.push("the monitor read no server PIDs: it could not have seen a restart".into());
    }
    if servers.server_restarts() > 0 {
        failures.push(format!(
            "servers restarted during the soak: Consul {:?}, Nomad {:?}",
            servers.consul.restarted_at_s, servers.nomad.restarted_at_s
        ));
    }
    for p in ports.iter().filter(|p| !p.current) {
        failures.push(format!(
            "{} {} serves {:?}, its file holds {:?} ({:?})",
            p.node, p.port, p.served_serial, p.file_serial, p.error
        ));
    }
    for c in checks.iter().filter(|c| !c.ok) {
        failures.push(format!("after the soak: {c}"));
    }
    let report = serde_json::json!({
        "minutes": minutes,
        "leaf_lifetime_secs": lifetime,
        "refresh_secs": refresh,
        "requests": traffic.requests,
        "failed_requests": traffic.failed_requests,
        "traffic": traffic,
        "renewals_required": required,
        "renewals": per_node,
        "nomad_consul_errors": errors.len(),
        "nomad_consul_error_lines": errors.iter().take(10).collect::<Vec<_>>(),
        "nomad_consul_error_patterns": journals::NOMAD_CONSUL_ERRORS,
        "server_restarts": servers.server_restarts(),
        "longest_leaderless_s": {
            "consul": servers.consul.longest_leaderless_s,
            "nomad": servers.nomad.longest_leaderless_s,
            "max": servers.longest_leaderless_s,
        },
        "servers": servers,
        "served_vs_files": ports,
        "failures": failures,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    for f in &failures {
        eprintln!("soak: FAIL: {f}");
    }
    Ok(failures.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{refresh_secs, required_renewals};

    #[test]
    fn renewals_required_are_one_per_lifetime_less_one() {
        assert_eq!(required_renewals(4.0, 60), 3);
        assert_eq!(required_renewals(4.0, 90), 1);
        assert_eq!(required_renewals(1.0, 60), 0);
        assert_eq!(required_renewals(0.5, 60), 0);
        assert_eq!(refresh_secs(60), 10);
        assert_eq!(refresh_secs(3600), 15);
    }
}
