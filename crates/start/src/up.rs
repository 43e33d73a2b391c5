//! Bringing the services up, in order, and waiting until each works.

use std::future::Future;
use std::time::{Duration, Instant};

use kraken_hashi::{Consul, HashiError, Nomad};

use crate::manager::{ServiceManager, StartError};

/// What a running service needs to use what is on disk now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It runs with what is on disk.
    Nothing,
    /// What changed, it re-reads on SIGHUP (certificates, Consul's tokens).
    Reload,
    /// What changed, it reads only at start.
    Restart,
}

/// What to do with one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStep {
    pub unit: String,
    /// For a running instance; one that is not running is started.
    pub action: Action,
}

/// The services this node runs, in start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPlan {
    pub consul: ServiceStep,
    /// Consul server: wait for a Raft leader, not only for the API.
    pub consul_server: bool,
    pub docker: Option<ServiceStep>,
    pub nomad: Option<ServiceStep>,
    pub nomad_server: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlines {
    /// For a service's API to answer after start.
    pub answer: Duration,
    /// For a server to see a Raft leader (the first election waits for all
    /// expected servers to boot).
    pub leader: Duration,
    pub poll: Duration,
}

/// What `start_services` did, for the status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StartReport {
    pub daemon_reloaded: bool,
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub reloaded: Vec<String>,
    pub already_running: Vec<String>,
    pub consul_leader: Option<String>,
    pub nomad_leader: Option<String>,
}

pub async fn start_services<M: ServiceManager>(
    manager: &M,
    plan: &StartPlan,
    consul: &Consul,
    nomad: &Nomad,
    deadlines: &Deadlines,
    status: &(dyn Fn(&str) + Sync),
) -> Result<StartReport, StartError> {
    let mut report = StartReport::default();
    let units: Vec<&str> = std::iter::once(&plan.consul)
        .chain(plan.docker.as_ref())
        .chain(plan.nomad.as_ref())
        .map(|s| s.unit.as_str())
        .collect();
    daemon_reload_if_needed(manager, &units, &mut report).await?;
    bring_up(manager, &plan.consul, &mut report, status).await?;
    wait_consul(consul, plan.consul_server, deadlines, &mut report, status).await?;
    if let Some(docker) = &plan.docker {
        bring_up(manager, docker, &mut report, status).await?;
        wait_docker(manager, &docker.unit, deadlines, status).await?;
    }
    if let Some(step) = &plan.nomad {
        bring_up(manager, step, &mut report, status).await?;
        wait_nomad(nomad, plan.nomad_server, deadlines, &mut report, status).await?;
    }
    Ok(report)
}

/// `systemctl daemon-reload` once, if any of `units` has unit files newer
/// than what systemd loaded.
pub async fn daemon_reload_if_needed<M: ServiceManager>(
    manager: &M,
    units: &[&str],
    report: &mut StartReport,
) -> Result<(), StartError> {
    for unit in units {
        if manager.needs_daemon_reload(unit).await? {
            manager.daemon_reload().await?;
            report.daemon_reloaded = true;
            break;
        }
    }
    Ok(())
}

/// Until Consul answers and, on a server, there is a Raft leader.
pub async fn wait_consul(
    consul: &Consul,
    server: bool,
    deadlines: &Deadlines,
    report: &mut StartReport,
    status: &(dyn Fn(&str) + Sync),
) -> Result<(), StartError> {
    status("waiting for Consul to answer");
    wait_for(
        "Consul to answer on its HTTP API",
        deadlines.answer,
        deadlines.poll,
        || async { consul.leader().await.map(|_| Some(())).map_err(describe) },
    )
    .await?;
    if server {
        status("waiting for a Consul leader");
        report.consul_leader = Some(
            wait_for(
                "a Consul Raft leader",
                deadlines.leader,
                deadlines.poll,
                || async { consul.leader().await.map_err(describe) },
            )
            .await?,
        );
    }
    Ok(())
}

pub async fn wait_docker<M: ServiceManager>(
    manager: &M,
    unit: &str,
    deadlines: &Deadlines,
    status: &(dyn Fn(&str) + Sync),
) -> Result<(), StartError> {
    status("waiting for Docker");
    wait_for(
        "Docker to be active",
        deadlines.answer,
        deadlines.poll,
        || async {
            manager
                .is_active(unit)
                .await
                .map(|active| active.then_some(()))
                .map_err(|e| e.to_string())
        },
    )
    .await
}

/// Until Nomad answers and, on a server, there is a Raft leader.
pub async fn wait_nomad(
    nomad: &Nomad,
    server: bool,
    deadlines: &Deadlines,
    report: &mut StartReport,
    status: &(dyn Fn(&str) + Sync),
) -> Result<(), StartError> {
    status("waiting for Nomad to answer");
    wait_for(
        "Nomad to answer on its HTTP API",
        deadlines.answer,
        deadlines.poll,
        || async { nomad.leader().await.map(|_| Some(())).map_err(describe) },
    )
    .await?;
    if server {
        status("waiting for a Nomad leader");
        report.nomad_leader = Some(
            wait_for(
                "a Nomad Raft leader",
                deadlines.leader,
                deadlines.poll,
                || async { nomad.leader().await.map_err(describe) },
            )
            .await?,
        );
    }
    Ok(())
}

/// Enables the unit, starts it if it is not running, and otherwise does
/// what `step.action` says.
pub async fn bring_up<M: ServiceManager>(
    manager: &M,
    step: &ServiceStep,
    report: &mut StartReport,
    status: &(dyn Fn(&str) + Sync),
) -> Result<(), StartError> {
    manager.enable(&step.unit).await?;
    let active = manager.is_active(&step.unit).await?;
    match step.action {
        // Restart, not start, even when not yet active: a unit still
        // "activating" with the old config would otherwise keep it.
        Action::Restart => {
            status(&format!("(re)starting {} (its config changed)", step.unit));
            manager.restart(&step.unit).await?;
            report.restarted.push(step.unit.clone());
        }
        _ if !active => {
            status(&format!("starting {}", step.unit));
            manager.start(&step.unit).await?;
            report.started.push(step.unit.clone());
        }
        Action::Reload => {
            status(&format!("reloading {}", step.unit));
            manager.reload(&step.unit).await?;
            report.reloaded.push(step.unit.clone());
        }
        Action::Nothing => report.already_running.push(step.unit.clone()),
    }
    Ok(())
}

fn describe(e: HashiError) -> String {
    e.to_string()
}

/// Polls `check` until it yields `Some`, or fails after `timeout` with the
/// last thing it saw.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: F,
) -> Result<T, StartError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let started = Instant::now();
    let mut last;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "not yet".to_owned(),
            Err(e) => last = e,
        }
        if started.elapsed() >= timeout {
            return Err(StartError::Timeout {
                what: what.to_owned(),
                waited: timeout,
                last,
            });
        }
        tokio::time::sleep(poll.min(timeout.saturating_sub(started.elapsed()))).await;
    }
}
