//! `up` and `test`: the cluster booted plainly, and the cluster booted
//! through the faults it must survive without a person.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::checks::{self, Check};
use crate::cluster::Cluster;
use crate::topology::{CLUSTER, Topology};

/// How long a cluster may take to converge on this 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// The bootstrap step after which the lease holder's VM is killed: the
/// Consul phase is half done (policies and the agent token exist, the
/// Nomad tokens do not).
const HOLDER_KILL_STEP: &str = "consul-token-agent";

/// Boots every group at once, waits for the cluster and the web service.
pub async fn up(cluster: &mut Cluster) -> Result<Vec<checks::WebAnswer>> {
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
/// 6. no secret appears in any VM's agent journal.
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

    // Doctor on the real nodes: all ok, then two injected faults.
    doctor_round(cluster).await?;

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

    // 6. Secrets.
    let journals = cluster.check_journals().await?;
    cluster.log(format!("journals: {journals}"));
    Ok(())
}

pub fn print_answers(answers: &[checks::WebAnswer]) {
    for a in answers {
        println!("GET http://{}/ ({}) -> {}", a.address, a.node, a.body);
    }
}

/// The bootstrap state record, read with the management token.
async fn bootstrap_state(cluster: &Cluster) -> Result<serde_json::Value> {
    // Only Consul's token: the Nomad one does not exist until the last step.
    let token = cluster
        .cloud
        .secrets(CLUSTER)
        .await?
        .remove(checks::CONSUL_MANAGEMENT)
        .context("no Consul management token in the store yet")?;
    let mut last_error = None;
    for n in cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_consul_server())
    {
        let url = checks::consul_url(
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

/// `kraken-agent doctor --json` inside a VM: its exit status and the level
/// of each check.
fn doctor(vm: &crate::vm::Vm) -> Result<(i32, BTreeMap<String, String>)> {
    let init = vm.init_pid().context("VM not running")?.to_string();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &init, "-a", "--", "kraken-agent", "doctor", "--json"])
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{}: doctor printed no JSON: {}",
            vm.name,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let levels = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_owned(),
                c["level"].as_str()?.to_owned(),
            ))
        })
        .collect();
    Ok((out.status.code().unwrap_or(-1), levels))
}

/// Every node's doctor says all is well; on a client, Consul stopped and a
/// config edited by hand are each named, and clear once undone.
async fn doctor_round(cluster: &Cluster) -> Result<()> {
    for n in cluster.nodes() {
        let (code, levels) = doctor(n.vm)?;
        if code != 0 {
            bail!("doctor on healthy {} exited {code}: {levels:?}", n.vm.name);
        }
    }
    cluster.log("doctor: every node all ok");
    let client = cluster
        .vms
        .iter()
        .find(|v| v.group == "client" && !v.gone)
        .context("no client running")?;
    client.exec(&["systemctl", "stop", "consul"])?;
    let (code, levels) = doctor(client)?;
    client.exec(&["systemctl", "start", "consul"])?;
    if code != 2 || levels.get("consul").map(String::as_str) != Some("fail") {
        bail!(
            "doctor with Consul stopped on {}: exit {code}, {levels:?}",
            client.name
        );
    }
    cluster.log(format!(
        "doctor: Consul stopped on {} named (consul fail, exit 2)",
        client.name
    ));
    let config = "/etc/nomad.d/nomad.hcl";
    let original = client.read(config).context("reading nomad.hcl")?;
    let path = client.path(config).context("VM not running")?;
    std::fs::write(&path, format!("{original}\n# edited by hand\n"))?;
    let (code, levels) = doctor(client)?;
    std::fs::write(&path, &original)?;
    if code == 0
        || !matches!(
            levels.get("configs").map(String::as_str),
            Some("warn" | "fail")
        )
    {
        bail!(
            "doctor with nomad.hcl edited on {}: exit {code}, {levels:?}",
            client.name
        );
    }
    cluster.log(format!(
        "doctor: the hand edit on {} named (configs {})",
        client.name, levels["configs"]
    ));
    // Consul back and the file restored: healthy again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, levels) = doctor(client)?;
        if code == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "doctor on {} after the faults were undone: exit {code}, {levels:?}",
                client.name
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}
