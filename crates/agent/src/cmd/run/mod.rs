//! `kraken-agent run`: the boot daemon.
//!
//! Converge once (the boot flow, step by step: [`converge`]), report
//! `READY=1`, then keep the node right for its whole life ([`watch`]).
//! Transient failures (IMDS down, throttling, no leader yet) are retried
//! with backoff; failures only a person can fix end the process with a
//! sysexits code after saying exactly what to fix.

mod converge;
mod prepare;
mod reregister;
mod servers;
mod snapshots;
mod state;
mod watch;

use std::time::Duration;

use kraken_identity::ImdsIdentity;
use kraken_ready::{Notifier, Status, StatusFile};
use kraken_render::RenderSecrets;
use kraken_settings::Settings;
use kraken_start::Systemctl;

use crate::steps::applied::Applied;
use crate::steps::lifecycle;
use crate::{BootError, tuning};
use state::Agent;

/// Runs until SIGTERM (exit 0) or a failure retrying cannot fix.
pub async fn run(settings: Settings) -> Result<(), BootError> {
    let notifier = Notifier::new();
    let _watchdog = notifier.spawn_watchdog();
    let status_file = StatusFile::new(&settings.paths.status_dir);
    let mut status = Status {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        phase: "starting".into(),
        ..Status::default()
    };
    status_file.write(&mut status);
    let metrics = match agent_metrics(&settings).await {
        Ok(m) => m,
        Err(e) => {
            // Metrics are for watching the node, not for running it.
            log::warn!("{e}");
            None
        }
    };

    let mut agent = Agent {
        manager: Systemctl::new(&settings.start.systemctl),
        applied: Applied::load(&settings.paths.status_dir),
        settings,
        secrets: RenderSecrets::default(),
        notifier,
        status_file,
        status,
        distrust_published: false,
        snapshot_schedule: Default::default(),
        drain_token: None,
        node_tokens_started: false,
    };
    if let Some(address) = metrics {
        agent.record(
            "metrics",
            serde_json::json!({ "address": address.to_string() }),
        );
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    // `kraken-agent leave` (a person, or kraken-leave.service at
    // power-off) asks this process to leave: it owns the services.
    let mut asked = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
    let manager = Systemctl::new(&agent.settings.start.systemctl);
    // From the first moment: a termination notice can come in the middle
    // of the boot, and then the boot stops where it is.
    let imds = ImdsIdentity::new(tuning::imds(&agent.settings), tuning::aws(&agent.settings));
    let poll = Duration::from_secs(agent.settings.lifecycle.poll_secs);
    let result = tokio::select! {
        r = converge_and_watch(&mut agent) => r,
        departure = async {
            tokio::select! {
                d = lifecycle::departure(&imds, poll) => d,
                _ = asked.recv() => match manager.shutdown().await {
                    Some(kraken_start::Shutdown::PowerOff) => lifecycle::Departure::PowerOff,
                    _ => lifecycle::Departure::Requested,
                },
            }
        } => {
            agent.leave(&departure).await;
            // Stay (and keep the watchdog fed) until the instance goes:
            // exiting would let a restart of this unit join it again.
            term.recv().await;
            agent.notifier.stopping();
            Ok(())
        }
        _ = term.recv() => {
            agent.notifier.stopping();
            log::info!("SIGTERM: stopping; the services keep running");
            Ok(())
        }
    };
    if let Err(e) = &result {
        agent.status.phase = "failed".into();
        agent.status.last_error = Some(e.to_string());
        agent.status_file.write(&mut agent.status);
        agent.notifier.status(&format!("failed: {e}"));
    }
    result
}

async fn converge_and_watch(agent: &mut Agent) -> Result<(), BootError> {
    let mut backoff = tuning::discovery_backoff(&agent.settings);
    let converged = loop {
        match agent.converge().await {
            Ok(c) => break c,
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                agent.status.last_error = Some(e.to_string());
                agent.say("waiting", &format!("{e}; retrying in {}s", delay.as_secs()));
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    };
    agent.status.converged_unix = Some(kraken_ready::now_unix());
    crate::metrics::converged();
    agent.status.last_error = None;
    let roles: Vec<&str> = converged.spec.roles.iter().map(|r| r.as_str()).collect();
    let summary = format!(
        "converged: {} is a {} node of cluster {}",
        converged.identity.instance_id,
        roles.join("+"),
        converged.spec.cluster
    );
    agent.status.phase = "converged".into();
    agent.status.message = summary.clone();
    agent.status_file.write(&mut agent.status);
    agent.notifier.ready(&summary);
    agent.watch(converged).await
}

/// The agent's metrics endpoint (`[metrics] address`), when it is on.
async fn agent_metrics(settings: &Settings) -> Result<Option<std::net::SocketAddr>, String> {
    let Some(address) = settings.metrics.listen() else {
        return Ok(None);
    };
    let bound = crate::metrics::serve(address).await.map_err(|e| {
        format!(
            "metrics: cannot listen on {address} ({e}); the agent runs without its metrics \
             endpoint: free the port or change [metrics] address in agent.toml"
        )
    })?;
    log::info!("metrics: serving http://{bound}/metrics");
    Ok(Some(bound))
}

impl Agent {
    /// The node leaves the cluster (`steps::lifecycle::leave`); the report
    /// goes to the status file for `doctor` and the logs.
    async fn leave(&mut self, departure: &lifecycle::Departure) {
        self.say(
            "leaving",
            &format!("leaving the cluster: {}", departure.describe()),
        );
        let mut delay = Duration::from_secs(1);
        let ctx = loop {
            match lifecycle::Context::load(&self.settings).await {
                Ok(ctx) => break ctx,
                Err(e) => {
                    log::warn!("lifecycle: reading what leaving needs: {e}; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        let progress = self.progress();
        let report = lifecycle::leave::leave(&ctx, &self.manager, departure, &progress).await;
        self.record("left", &report);
        self.say(
            crate::cmd::leave::LEFT,
            &format!("left the cluster: {}", departure.describe()),
        );
    }
}
