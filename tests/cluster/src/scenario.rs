//! `up` and `test`: the cluster booted plainly, and the cluster booted
//! through the faults it must survive without a person.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::api;
use crate::checks::Check;
use crate::cluster::Cluster;
use crate::faults;
use crate::topology::{CLUSTER, Topology};
use crate::upgrade;
use crate::web::WebAnswer;

/// How long a cluster may take to converge on this 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// The bootstrap step after which the lease holder's VM is killed: the
/// Consul phase is half done (policies and the agent token exist, the
/// Nomad tokens do not).
const HOLDER_KILL_STEP: &str = "consul-token-agent";

/// Boots every group at once, waits for the cluster and the web service.
pub async fn up(cluster: &mut Cluster) -> Result<Vec<WebAnswer>> {
    let groups: Vec<&'static str> = cluster.groups.iter().map(|g| g.name).collect();
    for g in groups {
        cluster.launch_group(g).await?;
    }
    print_checks(&cluster.wait_ready("cluster", READY_TIMEOUT).await?);
    cluster.deploy_web().await?;
    let answers = cluster.wait_web(Duration::from_secs(180)).await?;
    Ok(answers)
}

pub fn print_checks(checks: &[Check]) {
    for c in checks {
        eprintln!("  {c}");
    }
}

/// The fault scenario, on one cluster lifetime:
/// 1. the clients boot first and wait for servers that do not exist yet;
/// 2. the servers boot one by one, with pauses;
/// 3. the bootstrap lease holder's VM is killed half-way through the
///    bootstrap, and an autoscaling group would replace it: a new instance
///    with a new address boots;
/// 4. the cluster converges: every check, then the web service;
/// 5. a server is destroyed after the bootstrap and replaced by a new
///    instance with a new address: the cluster heals, with the web service
///    still answering;
/// 6. every server's agent is upgraded at once (`upgrade`), then back;
/// 7. no secret appears in any VM's agent journal.
pub async fn test(cluster: &mut Cluster) -> Result<()> {
    if cluster.topology != Topology::Small {
        bail!("`cluster test` runs the small topology");
    }
    // 1. Clients first.
    cluster.launch_group("client").await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    for vm in cluster.vms.iter().filter(|v| v.group == "client") {
        let status = vm
            .agent_status()
            .with_context(|| format!("{}: the agent wrote no status in 20 s", vm.name))?;
        if status.converged_unix.is_some() {
            bail!("{} converged with no servers", vm.name);
        }
        cluster.log(format!(
            "{} waits, as it should: {}",
            vm.name, status.message
        ));
    }

    // 2. Servers one by one; every one would stop right after the step
    // (only the lease holder gets there).
    let mut crashing = cluster.user_data.clone();
    crashing
        .env
        .insert("KRAKEN_TEST_CRASH_AFTER".into(), HOLDER_KILL_STEP.into());
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
        cluster.launch("server", Some(&crashing)).await?;
    }

    // 3. Kill the lease holder once it has done the step.
    let holder = wait_for_holder(cluster, Duration::from_secs(400)).await?;
    let name = cluster
        .vms
        .iter()
        .find(|v| v.instance_id == holder && !v.gone)
        .map(|v| v.name.clone())
        .with_context(|| format!("the lease holder {holder} is not a running VM"))?;
    cluster.log(format!(
        "{name} ({holder}) holds the bootstrap lease after {HOLDER_KILL_STEP}"
    ));
    cluster.kill(&name).await?;
    cluster.launch("server", None).await?;

    // 4. Converge.
    let checks = cluster
        .wait_ready("after the lease holder's death", READY_TIMEOUT)
        .await?;
    print_checks(&checks);
    let state = bootstrap_state(cluster).await?;
    cluster.log(format!("bootstrap log: {}", state["log"]));
    cluster.deploy_web().await?;
    let answers = cluster.wait_web(Duration::from_secs(180)).await?;
    print_answers(&answers);

    // Doctor on the real nodes: all ok, then the faults it must name.
    faults::doctor_round(cluster).await?;
    cluster
        .wait_ready("after the doctor faults", READY_TIMEOUT)
        .await?;

    // 5. Replace a server that is not the one the next checks start from.
    let victim = cluster
        .vms
        .iter()
        .filter(|v| v.group == "server" && !v.gone)
        .nth(1)
        .map(|v| v.name.clone())
        .context("no second running server")?;
    cluster.kill(&victim).await?;
    cluster.launch("server", None).await?;
    let checks = cluster
        .wait_ready("after a server's replacement", READY_TIMEOUT)
        .await?;
    print_checks(&checks);
    let answers = cluster.wait_web(Duration::from_secs(180)).await?;
    print_answers(&answers);

    // 6. Every server's agent upgraded at once, then back.
    let (report, ok) = upgrade::run(cluster).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !ok {
        bail!("the server upgrade failed: {}", report_failures(&report));
    }

    // 7. Secrets.
    let journals = cluster.check_journals().await?;
    cluster.log(format!("journals: {journals}"));
    Ok(())
}

fn report_failures(report: &serde_json::Value) -> String {
    ["upgrade", "undo"]
        .iter()
        .flat_map(|phase| {
            report[phase]["failures"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |f| format!("{phase}: {}", f.as_str().unwrap_or_default()))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn print_answers(answers: &[WebAnswer]) {
    for a in answers {
        println!("GET http://{}/ ({}) -> {}", a.address, a.node, a.body);
    }
}

/// The bootstrap state record, read with the management token.
async fn bootstrap_state(cluster: &Cluster) -> Result<serde_json::Value> {
    cluster.ensure_tls()?;
    // Only Consul's token: the Nomad one does not exist until the last step.
    let token = cluster
        .cloud
        .secrets(CLUSTER)
        .await?
        .remove(kraken_secrets::names::CONSUL_INITIAL_MANAGEMENT)
        .context("no Consul management token in the store yet")?;
    let mut last_error = None;
    for n in cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_consul_server())
    {
        let url = api::consul_url(
            &n.vm.address,
            &format!("/v1/kv/kraken/{CLUSTER}/bootstrap/state?raw=true"),
        );
        match cluster
            .api
            .get(&url, Some(("X-Consul-Token", &token)))
            .await
        {
            Ok((200, body)) => return Ok(body),
            Ok((status, _)) => last_error = Some(anyhow::anyhow!("{url}: HTTP {status}")),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no Consul server is running")))
}

/// The node (instance id) that recorded [`HOLDER_KILL_STEP`].
async fn wait_for_holder(cluster: &Cluster, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(state) = bootstrap_state(cluster).await {
            let entry = state["log"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str())
                .find_map(|l| l.strip_prefix(&format!("{HOLDER_KILL_STEP} by ")));
            if let Some(rest) = entry {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned());
            }
        }
        if Instant::now() > deadline {
            cluster.print_agents();
            bail!(
                "no node did the bootstrap step {HOLDER_KILL_STEP} in {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
