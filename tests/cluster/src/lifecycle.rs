//! The local cluster plays the autoscaling group: `cluster roll`
//! (an instance refresh, one instance at a time) and `cluster terminate`
//! (scale-in or a spot interruption). moto holds the groups and their
//! hooks; `kraken_testkit::asg::LifecycleFake` serves the two lifecycle
//! calls moto lacks; each VM's IMDS says what AWS's would
//! (`autoscaling/target-lifecycle-state`, `spot/instance-action`).
//! The web service is requested through Consul the whole time.

use std::fs;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use kraken_testkit::asg::{EndedBy, LifecycleFake, LifecycleResult, Outcome};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::Value;

use crate::api::{Tokens, consul_url};
use crate::cluster::{Cluster, MOTO_PORT};
use crate::host;
use crate::traffic::{self, Traffic};
use crate::vm::Vm;
use crate::voters::{Voters, voter_failures, voters};

/// Where the VMs' `AWS_ENDPOINT_URL_AUTO_SCALING` points.
pub const ASG_PORT: u16 = 5003;
/// The agent's default hook names (`[lifecycle]` in agent.toml).
pub const LAUNCHING: &str = "kraken-launching";
pub const TERMINATING: &str = "kraken-terminating";
/// The hooks' heartbeat timeout: the agent heartbeats every 10 s.
const HOOK_TIMEOUT_S: i32 = 60;

/// The group a VM of harness group `name` belongs to (its IMDS carries it
/// as `aws:autoscaling:groupName`, as AWS tags every group's instances).
pub fn asg_name(group: &str) -> String {
    format!("kraken-{group}")
}

/// The groups and their two hooks in moto (again: harmless), and the
/// lifecycle calls served on the hub.
pub async fn autoscaling(cluster: &Cluster) -> Result<LifecycleFake> {
    let moto = format!("http://{}:{MOTO_PORT}", host::HUB_IP);
    let asg = &cluster.cloud.asg;
    let _ = asg
        .create_launch_configuration()
        .launch_configuration_name("kraken")
        .image_id("ami-12c6146b")
        .instance_type("t3.medium")
        .send()
        .await;
    for group in &cluster.groups {
        let name = asg_name(group.name);
        let exists = asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&name)
            .send()
            .await
            .map(|o| !o.auto_scaling_groups().is_empty())
            .unwrap_or(false);
        if !exists {
            // Desired 0: the harness launches the VMs; moto only holds the
            // group and its hooks.
            asg.create_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .launch_configuration_name("kraken")
                .min_size(0)
                .max_size(100)
                .desired_capacity(0)
                .availability_zones(crate::cloud::AVAILABILITY_ZONE)
                .send()
                .await
                .with_context(|| format!("autoscaling:CreateAutoScalingGroup {name} in moto"))?;
        }
        for (hook, transition, default) in [
            (LAUNCHING, "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"),
            (
                TERMINATING,
                "autoscaling:EC2_INSTANCE_TERMINATING",
                "CONTINUE",
            ),
        ] {
            asg.put_lifecycle_hook()
                .auto_scaling_group_name(&name)
                .lifecycle_hook_name(hook)
                .lifecycle_transition(transition)
                .heartbeat_timeout(HOOK_TIMEOUT_S)
                .default_result(default)
                .send()
                .await
                .with_context(|| {
                    format!("autoscaling:PutLifecycleHook {hook} on {name} in moto")
                })?;
        }
    }
    let bind = format!("{}:{ASG_PORT}", host::HUB_IP).parse()?;
    LifecycleFake::serve(bind, &moto)
        .await
        .with_context(|| format!("serving the lifecycle calls on {bind}"))
}

impl Vm {
    /// What IMDS says next (`target_lifecycle_state`, `spot_instance_action`
    /// in imds.json), read again by the VM's IMDS on SIGHUP.
    pub fn set_imds(&mut self, key: &str, value: Value) -> Result<()> {
        let path = self.dir.join("imds.json");
        let mut doc: Value = serde_json::from_slice(&fs::read(&path)?)?;
        doc["instance"][key] = value;
        fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
        host::signal(self.imds_pid, Signal::SIGHUP);
        Ok(())
    }
}

#[derive(Debug, Serialize)]
pub struct HookReport {
    pub instance: String,
    pub hook: String,
    /// CONTINUE or ABANDON.
    pub result: String,
    /// "completed" by the agent, or "timed_out" (the default result).
    pub by: String,
    pub heartbeats: u32,
    pub seconds: f64,
}

pub fn hook_report(instance: &str, outcome: Option<Outcome>, hook: &str) -> HookReport {
    match outcome {
        Some(o) => HookReport {
            instance: instance.into(),
            hook: o.hook,
            result: match o.result {
                LifecycleResult::Continue => "CONTINUE".into(),
                LifecycleResult::Abandon => "ABANDON".into(),
            },
            by: match o.by {
                EndedBy::Completed => "completed".into(),
                EndedBy::TimedOut => "timed_out".into(),
            },
            heartbeats: o.heartbeats,
            seconds: o.seconds,
        },
        None => HookReport {
            instance: instance.into(),
            hook: hook.into(),
            result: "none".into(),
            by: "still waiting".into(),
            heartbeats: 0,
            seconds: 0.0,
        },
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub verb: String,
    pub requests: u64,
    pub failed_requests: u64,
    pub seconds: f64,
    /// (old, new) VM names.
    pub replaced: Vec<(String, String)>,
    pub voters_before: Voters,
    pub voters_after: Voters,
    pub hooks: Vec<HookReport>,
    /// Each leaving agent's own account (`steps.left` of its status).
    pub left: Vec<Value>,
    pub first_failures: Vec<String>,
    pub failures: Vec<String>,
}

/// The web traffic of one step, added to the report's.
pub fn add_traffic(report: &mut Report, f: traffic::Figures) {
    report.requests += f.requests;
    report.failed_requests += f.failed_requests;
    report.first_failures.extend(f.first_failures);
}

/// Launches a replacement and waits for its launching hook; then the old
/// instance goes through its terminating hook and is destroyed.
async fn replace(
    cluster: &mut Cluster,
    fake: &LifecycleFake,
    old: &str,
    report: &mut Report,
) -> Result<()> {
    let group = cluster
        .vms
        .iter()
        .find(|v| v.name == old && !v.gone)
        .with_context(|| format!("no running VM {old}"))?
        .group
        .clone();
    let asg = asg_name(&group);
    let tokens = cluster.tokens().await?;
    let traffic = Traffic::start(cluster, tokens, 2);
    let new = cluster.launch(&group, None).await?;
    let (new_name, new_id) = (new.name.clone(), new.instance_id.clone());
    fake.begin(&asg, LAUNCHING, &new_id).await?;
    cluster.log(format!(
        "{new_name} launched into {asg}; waiting for its launching hook"
    ));
    let launched = fake.wait_outcome(&new_id, Duration::from_secs(600)).await;
    let ok = launched
        .as_ref()
        .is_some_and(|o| o.result == LifecycleResult::Continue && o.by == EndedBy::Completed);
    report
        .hooks
        .push(hook_report(&new_name, launched, LAUNCHING));
    if !ok {
        report.failures.push(format!(
            "{new_name}: the launching hook was not completed by its agent"
        ));
        add_traffic(report, traffic.finish().await);
        return Ok(());
    }
    terminate_vm(cluster, fake, old, Ending::Hook, report).await?;
    add_traffic(report, traffic.finish().await);
    report.replaced.push((old.to_owned(), new_name));
    Ok(())
}

/// How an instance is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The group's terminating hook (scale-in, an instance refresh).
    Hook,
    /// A spot interruption notice, two minutes ahead.
    Spot,
    /// A clean power-off from inside, with no lifecycle state: an instance
    /// terminated or stopped directly (kraken-leave.service).
    PowerOff,
}

/// The old instance's way out: the group's terminating hook (or a spot
/// notice, or a power-off), then the VM goes when the hook ends (or the
/// notice's time).
async fn terminate_vm(
    cluster: &mut Cluster,
    fake: &LifecycleFake,
    name: &str,
    how: Ending,
    report: &mut Report,
) -> Result<()> {
    if how == Ending::PowerOff {
        return crate::poweroff::power_off(cluster, fake, name, report).await;
    }
    let vm = cluster
        .vms
        .iter_mut()
        .find(|v| v.name == name && !v.gone)
        .with_context(|| format!("no running VM {name}"))?;
    let id = vm.instance_id.clone();
    let asg = asg_name(&vm.group);
    let started = Instant::now();
    if how == Ending::Spot {
        // Two minutes, as EC2 gives; the VM goes then, drained or not.
        let at = SystemTime::now() + Duration::from_secs(120);
        let action =
            kraken_fake_imds::SpotInstanceAction::at(kraken_fake_imds::SpotAction::Terminate, at);
        vm.set_imds("spot_instance_action", serde_json::to_value(action)?)?;
        cluster.log(format!(
            "{name}: spot interruption notice (terminate in 120 s)"
        ));
        let left = wait_left(cluster, name, Duration::from_secs(120)).await;
        report.hooks.push(HookReport {
            instance: name.into(),
            hook: "spot/instance-action".into(),
            result: if left {
                "left".into()
            } else {
                "did not leave".into()
            },
            by: "agent".into(),
            heartbeats: 0,
            seconds: started.elapsed().as_secs_f64(),
        });
        if !left {
            report.failures.push(format!(
                "{name}: did not leave the cluster within the notice"
            ));
        }
    } else {
        fake.begin(&asg, TERMINATING, &id).await?;
        vm.set_imds("target_lifecycle_state", Value::from("Terminated"))?;
        cluster.log(format!(
            "{name}: terminating; waiting for its terminating hook"
        ));
        let timeout =
            kraken_testkit::asg::global_timeout(Duration::from_secs(HOOK_TIMEOUT_S as u64));
        let outcome = fake.wait_outcome(&id, timeout).await;
        let completed = outcome.as_ref().is_some_and(|o| o.by == EndedBy::Completed);
        report.hooks.push(hook_report(name, outcome, TERMINATING));
        if !completed {
            report
                .failures
                .push(format!("{name}: the terminating hook timed out"));
        }
        // The agent writes its account right after completing the hook.
        wait_left(cluster, name, Duration::from_secs(15)).await;
    }
    let account = cluster
        .vms
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.agent_status())
        .and_then(|s| s.steps.get("left").cloned());
    match account {
        Some(left) => {
            if left["drain"]["complete"] == false {
                report.failures.push(format!(
                    "{name}: the drain did not finish before its deadline"
                ));
            }
            if left["errors"].as_array().is_some_and(|e| !e.is_empty()) {
                report
                    .failures
                    .push(format!("{name}: leaving had errors: {}", left["errors"]));
            }
            report.left.push(serde_json::json!({ name: left }));
        }
        None => report
            .failures
            .push(format!("{name}: its agent did not record leaving")),
    }
    cluster.kill(name).await?;
    Ok(())
}

/// Serf's status of member `id` as a Consul server sees it (1 alive,
/// 3 left, 4 failed).
pub async fn consul_member_status(cluster: &Cluster, tokens: &Tokens, id: &str) -> Option<i64> {
    for node in cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_consul_server())
    {
        let url = consul_url(&node.vm.address, "/v1/agent/members");
        if let Ok((200, m)) = cluster.api.get(&url, tokens.consul_header()).await {
            return m
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["Name"] == id)
                .and_then(|m| m["Status"].as_i64());
        }
    }
    None
}

/// Until the VM's agent says it left (its status file).
async fn wait_left(cluster: &Cluster, name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let left = cluster
            .vms
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.agent_status())
            .is_some_and(|s| s.phase == "left");
        if left {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

pub fn new_report(verb: String) -> Report {
    Report {
        verb,
        requests: 0,
        failed_requests: 0,
        seconds: 0.0,
        replaced: Vec::new(),
        voters_before: Voters::default(),
        voters_after: Voters::default(),
        hooks: Vec::new(),
        left: Vec::new(),
        first_failures: Vec::new(),
        failures: Vec::new(),
    }
}

/// Every check the verbs end with: no failed request, voters exactly the
/// running servers, no failed member.
pub async fn finish(cluster: &Cluster, report: &mut Report, started: Instant) -> Result<()> {
    let tokens = cluster.tokens().await?;
    report.voters_after = voters(cluster, &tokens).await;
    report.seconds = started.elapsed().as_secs_f64();
    report
        .failures
        .extend(voter_failures(cluster, &report.voters_after));
    if report.failed_requests > 0 {
        report
            .failures
            .push(format!("{} web requests failed", report.failed_requests));
    }
    Ok(())
}

/// `cluster roll --group server|client|all`.
pub async fn roll(cluster: &mut Cluster, groups: &[&str]) -> Result<Report> {
    let started = Instant::now();
    let fake = autoscaling(cluster).await?;
    let mut report = new_report(format!("roll {}", groups.join(",")));
    report.voters_before = voters(cluster, &cluster.tokens().await?).await;
    for group in groups {
        let old: Vec<String> = cluster
            .vms
            .iter()
            .filter(|v| !v.gone && v.group == *group)
            .map(|v| v.name.clone())
            .collect();
        if old.is_empty() {
            bail!("no running VM in group {group}");
        }
        for name in old {
            replace(cluster, &fake, &name, &mut report).await?;
            if !report.failures.is_empty() {
                break;
            }
        }
        if !report.failures.is_empty() {
            break;
        }
    }
    finish(cluster, &mut report, started).await?;
    fake.shutdown().await;
    Ok(report)
}

/// `cluster terminate NODE [--spot|--poweroff]`: scale-in (no
/// replacement), a spot interruption, or a power-off without a hook.
pub async fn terminate(cluster: &mut Cluster, name: &str, how: Ending) -> Result<Report> {
    let started = Instant::now();
    let fake = autoscaling(cluster).await?;
    let mut report = new_report(format!(
        "terminate {name}{}",
        match how {
            Ending::Hook => "",
            Ending::Spot => " --spot",
            Ending::PowerOff => " --poweroff",
        }
    ));
    let tokens = cluster.tokens().await?;
    report.voters_before = voters(cluster, &tokens).await;
    let traffic = Traffic::start(cluster, tokens, 2);
    terminate_vm(cluster, &fake, name, how, &mut report).await?;
    add_traffic(&mut report, traffic.finish().await);
    finish(cluster, &mut report, started).await?;
    fake.shutdown().await;
    Ok(report)
}

/// `cluster launch GROUP`: scale-out by one, through the launching hook.
pub async fn launch(cluster: &mut Cluster, group: &str) -> Result<Report> {
    let started = Instant::now();
    let fake = autoscaling(cluster).await?;
    let mut report = new_report(format!("launch {group}"));
    let tokens = cluster.tokens().await?;
    report.voters_before = voters(cluster, &tokens).await;
    let traffic = Traffic::start(cluster, tokens, 2);
    launch_through_hook(cluster, &fake, group, &mut report).await?;
    add_traffic(&mut report, traffic.finish().await);
    finish(cluster, &mut report, started).await?;
    fake.shutdown().await;
    Ok(report)
}

/// One more instance of `group`, through the group's launching hook, which
/// its agent must complete: the new VM's name.
pub async fn launch_through_hook(
    cluster: &mut Cluster,
    fake: &LifecycleFake,
    group: &str,
    report: &mut Report,
) -> Result<String> {
    let vm = cluster.launch(group, None).await?;
    let (name, id) = (vm.name.clone(), vm.instance_id.clone());
    fake.begin(&asg_name(group), LAUNCHING, &id).await?;
    let outcome = fake.wait_outcome(&id, Duration::from_secs(600)).await;
    if !outcome.as_ref().is_some_and(|o| o.by == EndedBy::Completed) {
        report.failures.push(format!(
            "{name}: the launching hook was not completed by its agent"
        ));
    }
    report.hooks.push(hook_report(&name, outcome, LAUNCHING));
    Ok(name)
}
