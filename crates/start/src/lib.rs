//! Step 6 of the boot flow: start the services, in order, and wait until
//! each one works.
//!
//! Consul first (everything registers in it), then Docker on clients, then
//! Nomad. A service whose config changed is restarted; one whose config did
//! not is only started if it is not already running, so re-running the
//! agent on a converged node touches nothing. Every wait has a deadline and
//! fails with what it last saw.

mod systemctl;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::{Duration, Instant};

use kraken_hashi::{Consul, HashiError, Nomad};

pub use systemctl::Systemctl;

/// Control of system services. The systemd implementation shells out to
/// `systemctl`; tests run the same logic with processes they manage.
pub trait ServiceManager {
    /// Whether systemd has unit files on disk newer than what it loaded.
    fn needs_daemon_reload(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<bool, StartError>> + Send;
    fn daemon_reload(&self) -> impl Future<Output = Result<(), StartError>> + Send;
    fn enable(&self, unit: &str) -> impl Future<Output = Result<(), StartError>> + Send;
    fn start(&self, unit: &str) -> impl Future<Output = Result<(), StartError>> + Send;
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), StartError>> + Send;
    /// Asks the service to re-read its config without restarting (SIGHUP
    /// through the unit's `ExecReload=`).
    fn reload(&self, unit: &str) -> impl Future<Output = Result<(), StartError>> + Send;
    fn is_active(&self, unit: &str) -> impl Future<Output = Result<bool, StartError>> + Send;
    /// Read-only: whether the unit is enabled, and its state as systemd
    /// words it ("active", "failed", "inactive", ...).
    fn describe(&self, unit: &str) -> impl Future<Output = Result<UnitState, StartError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what} did not happen within {waited:?}; last seen: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
}

/// A unit as `doctor` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    pub enabled: String,
    pub active: String,
    /// The last lines the unit logged, when it is not active.
    pub recent_log: Vec<String>,
}

/// What to do with one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStep {
    pub unit: String,
    /// Its config changed: a running instance must restart to read it.
    pub config_changed: bool,
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
    let steps: Vec<&ServiceStep> = std::iter::once(&plan.consul)
        .chain(plan.docker.as_ref())
        .chain(plan.nomad.as_ref())
        .collect();
    for step in &steps {
        if manager.needs_daemon_reload(&step.unit).await? {
            manager.daemon_reload().await?;
            report.daemon_reloaded = true;
            break;
        }
    }

    bring_up(manager, &plan.consul, &mut report, status).await?;
    status("waiting for Consul to answer");
    wait_for(
        "Consul to answer on its HTTP API",
        deadlines.answer,
        deadlines.poll,
        || async { consul.leader().await.map(|_| Some(())).map_err(describe) },
    )
    .await?;
    if plan.consul_server {
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

    if let Some(docker) = &plan.docker {
        bring_up(manager, docker, &mut report, status).await?;
        status("waiting for Docker");
        wait_for(
            "Docker to be active",
            deadlines.answer,
            deadlines.poll,
            || async {
                manager
                    .is_active(&docker.unit)
                    .await
                    .map(|active| active.then_some(()))
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
    }

    if let Some(step) = &plan.nomad {
        bring_up(manager, step, &mut report, status).await?;
        status("waiting for Nomad to answer");
        wait_for(
            "Nomad to answer on its HTTP API",
            deadlines.answer,
            deadlines.poll,
            || async { nomad.leader().await.map(|_| Some(())).map_err(describe) },
        )
        .await?;
        if plan.nomad_server {
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
    }
    Ok(report)
}

async fn bring_up<M: ServiceManager>(
    manager: &M,
    step: &ServiceStep,
    report: &mut StartReport,
    status: &(dyn Fn(&str) + Sync),
) -> Result<(), StartError> {
    manager.enable(&step.unit).await?;
    let active = manager.is_active(&step.unit).await?;
    if step.config_changed {
        // Restart, not start, even when not yet active: a unit still
        // "activating" with the old config would otherwise keep it.
        status(&format!("(re)starting {} (its config changed)", step.unit));
        manager.restart(&step.unit).await?;
        report.restarted.push(step.unit.clone());
    } else if active {
        report.already_running.push(step.unit.clone());
    } else {
        status(&format!("starting {}", step.unit));
        manager.start(&step.unit).await?;
        report.started.push(step.unit.clone());
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
