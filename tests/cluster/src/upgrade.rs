//! `cluster upgrade` (and the last phase of `cluster test`): an in-place
//! agent upgrade on every server at once. The new version is simulated by
//! a template override on each server (`[paths] templates_dir`: the
//! embedded templates with a new version in the header and a different
//! `log_level`, a change Consul and Nomad need a restart for) and an older
//! agent's `kraken-agent` policy in Consul (one rule different, no version
//! in its description); then `systemctl restart kraken-agent` in every
//! server VM at the same moment. Watched all along: never two Consul or
//! two Nomad servers down at once, each restarting exactly once, the
//! longest time without a leader, the policy brought to this agent's, and
//! the web service answering. The override is then undone the same way.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::api::Tokens;
use crate::cluster::Cluster;
use crate::monitor::{self, Monitor, Summary, Targets};
use crate::policy::{self, Policy};
use crate::traffic::{self, Traffic};
use crate::vm;

const TEMPLATES_DIR: &str = "/etc/kraken/templates";
const AGENT_TOML: &str = "/etc/kraken/agent.toml";
/// How long every server may take to restart, converge and settle.
const TIMEOUT: Duration = Duration::from_secs(420);
/// Watched after everything looked done: a late second restart shows.
const AFTERWARDS: Duration = Duration::from_secs(15);

/// An embedded template as the "new version" renders it: its header names
/// a new version, and its `log_level` is `WARN`.
fn upgraded_template(name: &str) -> Result<String> {
    let text = kraken_render::embedded_template(name)
        .with_context(|| format!("no embedded template {name}"))?;
    let header = "# Rendered by kraken-agent {{agent.version}}";
    let new = text.replacen(
        header,
        "# Rendered by kraken-agent {{agent.version}}+upgraded",
        1,
    );
    let mut changed = 0;
    let new: Vec<String> = new
        .lines()
        .map(|l| {
            if l.starts_with("log_level") && l.contains("\"INFO\"") {
                changed += 1;
                l.replace("\"INFO\"", "\"WARN\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    if changed != 1 || !text.contains(header) {
        bail!(
            "{name} no longer has one `log_level = \"INFO\"` line and the header \
             {header:?}: update tests/cluster/src/upgrade.rs"
        );
    }
    Ok(new.join("\n") + "\n")
}

/// agent.toml of the "new version": the template override, and token
/// upkeep (which brings policies to the agent's) every 20 s instead of
/// every 5 minutes, so that the scenario need not wait that long.
fn upgraded_agent_toml(original: &str) -> Result<String> {
    if original.contains("[paths]") || original.contains("[bootstrap]") {
        bail!("agent.toml already has a [paths] or [bootstrap] table: {original}");
    }
    Ok(format!(
        "{original}\n[paths]\ntemplates_dir = \"{TEMPLATES_DIR}\"\n\n[bootstrap]\ntoken_check_secs = 20\n"
    ))
}

/// What one round of simultaneous agent restarts did.
#[derive(Debug, Serialize)]
pub struct Round {
    pub phase: &'static str,
    /// From the restarts until every server had restarted, converged and
    /// every check passed (and, for the upgrade, the policy was ours).
    pub took_s: f64,
    pub requests: u64,
    pub failed_requests: u64,
    pub traffic: traffic::Figures,
    pub longest_leaderless_s: f64,
    pub servers: Summary,
    /// Each server's agent log lines about its guarded restarts.
    pub restart_lock: std::collections::BTreeMap<String, Vec<String>>,
    /// The policy at the end, and when it became this agent's (seconds
    /// after the restarts).
    pub policy: Policy,
    pub policy_is_ours: bool,
    pub policy_ours_after_s: Option<f64>,
    pub failures: Vec<String>,
}

/// The server VMs, with their VM PID 1.
fn server_names(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_consul_server() || n.group.is_nomad_server())
        .map(|n| n.vm.name.clone())
        .collect()
}

fn vm_path(cluster: &Cluster, name: &str, inside: &str) -> Result<std::path::PathBuf> {
    cluster
        .vms
        .iter()
        .find(|v| v.name == name && !v.gone)
        .and_then(|v| v.path(inside))
        .with_context(|| format!("VM {name} is not running"))
}

/// `systemctl restart kraken-agent` in every server VM at once (queued:
/// the unit's start waits for READY=1).
async fn restart_agents(targets: &Targets) -> Result<()> {
    let restarts = targets.servers.iter().map(|s| {
        let init = s.init.to_string();
        async move {
            tokio::process::Command::new("nsenter")
                .args(["-t", &init, "-a", "--"])
                .args(["systemctl", "restart", "--no-block", "kraken-agent.service"])
                .status()
                .await
        }
    });
    for (s, status) in targets.servers.iter().zip(monitor::all(restarts).await) {
        match status {
            Some(Ok(st)) if st.success() => {}
            other => bail!("{}: systemctl restart kraken-agent: {other:?}", s.name),
        }
    }
    Ok(())
}

/// Restarts every server's agent at once and watches until all is well
/// again (or [`TIMEOUT`]). `want_policy`: the round also waits for the
/// policy to be this agent's.
async fn round(cluster: &Cluster, tokens: &Tokens, phase: &'static str) -> Result<Round> {
    let targets = Targets::of(
        cluster,
        Duration::from_millis(200),
        Duration::from_millis(200),
        true,
    );
    if targets.servers.is_empty() || targets.observers.is_empty() {
        bail!("the upgrade needs running servers and clients");
    }
    monitor::wait_quiet(&targets, Duration::from_secs(20), Duration::from_secs(240)).await?;
    let old_agents: Vec<u32> = server_names(cluster)
        .iter()
        .map(|n| {
            cluster
                .vms
                .iter()
                .find(|v| &v.name == n)
                .and_then(|v| v.agent_status())
                .map_or(0, |s| s.pid)
        })
        .collect();
    let watch = Monitor::start(cluster.api.clone(), tokens.clone(), targets.clone());
    let users = Traffic::start(cluster, tokens.clone(), 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let since = vm::now();
    let restarted = Instant::now();
    restart_agents(&targets).await?;
    cluster.log(format!(
        "{phase}: restarted kraken-agent on {} servers at once",
        targets.servers.len()
    ));
    let mut policy_ours_after_s = None;
    let mut last = String::new();
    let took = loop {
        let mut waiting = Vec::new();
        let seen = watch.summary();
        for s in &targets.servers {
            let once =
                |sys: &monitor::SystemSummary| sys.restarts.get(&s.name).copied().unwrap_or(0) >= 1;
            if (s.consul && !once(&seen.consul)) || (s.nomad && !once(&seen.nomad)) {
                waiting.push(format!("{} to restart its servers", s.name));
            }
        }
        for (n, old) in server_names(cluster).iter().zip(&old_agents) {
            let vm = cluster.vms.iter().find(|v| &v.name == n);
            let status = vm.and_then(|v| v.agent_status()).unwrap_or_default();
            if status.pid == *old
                || status
                    .converged_unix
                    .is_none_or(|t| (t as f64) < since - 1.0)
            {
                waiting.push(format!("{n}'s agent to converge"));
            }
        }
        if policy_ours_after_s.is_none() {
            match policy::read(cluster, tokens)
                .await
                .and_then(|p| p.is_ours())
            {
                Ok(true) => policy_ours_after_s = Some(restarted.elapsed().as_secs_f64()),
                _ => waiting.push("the kraken-agent policy to be the agent's".into()),
            }
        }
        if waiting.is_empty() {
            let failing: Vec<&str> = cluster
                .checks()
                .await
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name)
                .collect();
            if failing.is_empty() {
                break restarted.elapsed().as_secs_f64();
            }
            waiting.push(format!("checks: {}", failing.join(", ")));
        }
        let now = waiting.join("; ");
        if now != last {
            cluster.log(format!("{phase}: waiting for {now} ({})", users.progress()));
            last = now;
        }
        if restarted.elapsed() > TIMEOUT {
            cluster.print_agents();
            bail!("{phase}: not done after {}s: {last}", TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::time::sleep(AFTERWARDS).await;
    let servers = watch.finish().await;
    let traffic = users.finish().await;
    let mut restart_lock = std::collections::BTreeMap::new();
    for n in server_names(cluster) {
        let vm = cluster.vms.iter().find(|v| v.name == n).context("no VM")?;
        let lines: Vec<String> = vm
            .agent_log()?
            .into_iter()
            .filter(|(t, l)| *t >= since && l.contains("the restart lock"))
            .map(|(_, l)| l)
            .filter(|l| !l.contains("Guarded {"))
            .collect();
        restart_lock.insert(n, lines);
    }
    let policy = policy::read(cluster, tokens).await?;
    let mut round = Round {
        phase,
        took_s: took,
        requests: traffic.requests,
        failed_requests: traffic.failed_requests,
        traffic,
        longest_leaderless_s: servers.longest_leaderless_s,
        servers,
        restart_lock,
        policy_is_ours: policy.is_ours()?,
        policy,
        policy_ours_after_s,
        failures: Vec::new(),
    };
    round.failures = judge(&round, &targets);
    Ok(round)
}

/// What must hold after a round.
fn judge(r: &Round, targets: &Targets) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, sys, runs) in [
        (
            "Consul",
            &r.servers.consul,
            (|s| s.consul) as fn(&monitor::Server) -> bool,
        ),
        ("Nomad", &r.servers.nomad, |s| s.nomad),
    ] {
        if sys.max_down_at_once >= 2 {
            failures.push(format!(
                "{} {name} servers were down at the same time (down for: {:?})",
                sys.max_down_at_once, sys.down_s
            ));
        }
        for s in targets.servers.iter().filter(|s| runs(s)) {
            let n = sys.restarts.get(&s.name).copied().unwrap_or(0);
            if n != 1 {
                failures.push(format!("{}'s {name} restarted {n} times, not once", s.name));
            }
            let logged = r.restart_lock.get(&s.name).into_iter().flatten();
            let want = format!("{name} server restarted under the restart lock");
            if !logged.clone().any(|l| l.contains(&want)) {
                failures.push(format!("{}'s agent did not log \"{want}\"", s.name));
            }
            if logged
                .clone()
                .any(|l| l.contains("without the restart lock"))
            {
                failures.push(format!("{} restarted without the restart lock", s.name));
            }
        }
    }
    if r.failed_requests > 0 {
        failures.push(format!(
            "{} of {} requests to the web service failed: {:?}",
            r.failed_requests, r.requests, r.traffic.first_failures
        ));
    }
    if !r.policy_is_ours {
        failures.push(format!(
            "the {} policy is not the agent's: {:?}",
            policy::NAME,
            r.policy.description
        ));
    }
    failures
}

/// The scenario on a running cluster: the upgrade, then its undo.
pub async fn run(cluster: &Cluster) -> Result<(serde_json::Value, bool)> {
    let tokens = cluster.tokens().await?;
    cluster
        .wait_ready("before the upgrade", Duration::from_secs(300))
        .await?;
    let servers = server_names(cluster);
    let mut originals = Vec::new();
    for n in &servers {
        let toml = vm_path(cluster, n, AGENT_TOML)?;
        let original =
            std::fs::read_to_string(&toml).with_context(|| format!("{n}: reading {AGENT_TOML}"))?;
        let dir = vm_path(cluster, n, TEMPLATES_DIR)?;
        std::fs::create_dir_all(&dir)?;
        for t in ["consul.hcl.hbs", "nomad.hcl.hbs"] {
            std::fs::write(dir.join(t), upgraded_template(t)?)?;
        }
        std::fs::write(&toml, upgraded_agent_toml(&original)?)?;
        originals.push((n.clone(), toml, original));
    }
    policy::write(cluster, &tokens, policy::older()?).await?;
    let before = policy::read(cluster, &tokens).await?;
    cluster.log(format!(
        "upgrade: template override on {} servers; the {} policy as an older agent wrote it \
         ({:?})",
        servers.len(),
        policy::NAME,
        before.description
    ));
    let upgrade = round(cluster, &tokens, "upgrade").await;
    // Undone whatever happened, so that `up`'s cluster stays usable.
    for (n, toml, original) in &originals {
        std::fs::write(toml, original)?;
        let dir = vm_path(cluster, n, TEMPLATES_DIR)?;
        remove_dir(&dir)?;
    }
    let upgrade = upgrade?;
    cluster.log(format!(
        "upgrade: done in {:.1}s; undoing it",
        upgrade.took_s
    ));
    let undo = round(cluster, &tokens, "undo").await?;
    let ok = upgrade.failures.is_empty() && undo.failures.is_empty();
    Ok((serde_json::json!({ "upgrade": upgrade, "undo": undo }), ok))
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}
