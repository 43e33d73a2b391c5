//! Step 6 for one service, at boot and for the node's whole life: bring it
//! to what is on disk. A service that is not running is started; a running
//! one is restarted or reloaded as what it loaded requires
//! ([`super::applied`]); a server's restart goes through the cluster's
//! restart lock ([`super::restart`]). Then the wait until it works, and the
//! record of what it now runs with.

use kraken_hashi::{Consul, Nomad};
use kraken_intent::{NodeSpec, Role};
use kraken_render::{RenderSecrets, Service};
use kraken_settings::Settings;
use kraken_start::{Action, ServiceManager, ServiceStep, StartReport, Systemctl};

use crate::steps::applied::{Applied, Instance, Loaded, on_disk};
use crate::steps::restart::{RestartGate, System};
use crate::steps::served;
use crate::steps::start::unit_of;
use crate::{BootError, tuning};

/// What applying one service did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Started,
    Restarted,
    Reloaded,
    Unchanged,
    /// Reloaded, but still serving an older certificate than its file:
    /// not recorded, so the next round tries again.
    Stale,
}

pub struct Applier<'a> {
    pub settings: &'a Settings,
    pub spec: &'a NodeSpec,
    pub manager: &'a Systemctl,
    pub consul: &'a Consul,
    pub nomad: &'a Nomad,
    /// Present once the cluster can lock (after the first start): a
    /// server's restart without it would be unsafe.
    pub gate: Option<&'a RestartGate>,
    /// The node's private address: where its servers' RPC listens.
    pub private: std::net::Ipv4Addr,
    pub status: &'a (dyn Fn(&str) + Sync),
}

impl Applier<'_> {
    /// Whether restarting `service` here costs the cluster a server.
    fn server_system(&self, service: Service) -> Option<System> {
        match service {
            Service::Consul if self.spec.has(Role::ConsulServer) => Some(System::Consul),
            Service::Nomad if self.spec.has(Role::NomadServer) => Some(System::Nomad),
            _ => None,
        }
    }

    /// What `service` needs now, from what its running process loaded;
    /// with that process and what is on disk, when it runs.
    pub async fn action(
        &self,
        applied: &Applied,
        service: Service,
        secrets: &RenderSecrets,
    ) -> Result<(Action, Option<(Instance, Loaded)>), BootError> {
        let unit = unit_of(self.settings, service);
        let Some(instance) = self.manager.main_pid(unit).await?.and_then(Instance::of) else {
            // Not running: bring_up starts it.
            return Ok((Action::Nothing, None));
        };
        let (want, newest) = on_disk(service, self.settings, secrets);
        // Consul re-reads acl.tokens on reload; Nomad's consul block, never.
        let tokens_reload = service == Service::Consul;
        let action = applied.decide(service, &instance, &want, newest, tokens_reload);
        Ok((action, Some((instance, want))))
    }

    /// Whether bringing `services` to what is on disk restarts a running
    /// server (which then needs the restart gate).
    pub async fn restarts_a_server(
        &self,
        applied: &Applied,
        services: &[Service],
        secrets: &RenderSecrets,
    ) -> Result<bool, BootError> {
        for service in services {
            if self.server_system(*service).is_none() {
                continue;
            }
            if let (Action::Restart, Some(_)) = self.action(applied, *service, secrets).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Brings `service` to what is on disk and records it. Returns what it
    /// did.
    pub async fn apply(
        &self,
        applied: &mut Applied,
        service: Service,
        secrets: &RenderSecrets,
        report: &mut StartReport,
    ) -> Result<Outcome, BootError> {
        let (action, running) = self.action(applied, service, secrets).await?;
        let unit = unit_of(self.settings, service).to_owned();
        let was_active = self.manager.is_active(&unit).await?;
        let replaced = match (was_active, action, running) {
            (true, Action::Nothing, Some((instance, loaded))) => {
                // Runs with what is on disk: note it, if it was not (a
                // process started before this agent ran).
                applied.note(service, instance, loaded);
                report.already_running.push(unit);
                return Ok(Outcome::Unchanged);
            }
            (true, Action::Restart, Some((instance, _))) => Some(instance),
            _ => None,
        };
        let replaced = replaced.as_ref();
        let step = ServiceStep {
            unit: unit.clone(),
            action,
        };
        match (self.server_system(service), action, was_active) {
            (Some(system), Action::Restart, true) => {
                let Some(gate) = self.gate else {
                    return Err(BootError::Start(kraken_start::StartError::Command {
                        command: format!("restart {unit}"),
                        status: "refused".into(),
                        stderr: "a running server restarts only under the cluster's restart \
                                 lock, and this node has no token for it yet"
                            .into(),
                    }));
                };
                let guarded = gate
                    .restart(system, self.status, || async {
                        kraken_start::bring_up(self.manager, &step, report, self.status).await?;
                        self.wait_replaced(&unit, replaced).await?;
                        self.wait(service, report).await
                    })
                    .await?;
                log::info!("{unit}: restarted under the restart lock: {guarded:?}");
            }
            _ => {
                kraken_start::bring_up(self.manager, &step, report, self.status).await?;
                self.wait_replaced(&unit, replaced).await?;
                self.wait(service, report).await?;
            }
        }
        if action != Action::Nothing || !was_active {
            // Only what it serves proves what it loaded: a reload it
            // ignored leaves the old certificate on the socket.
            if !self.serves_current(service, &step).await? {
                return Ok(Outcome::Stale);
            }
        }
        // The process that now runs loaded what is on disk.
        if let Some(pid) = self.manager.main_pid(&unit).await?
            && let Some(instance) = Instance::of(pid)
        {
            let (want, _) = on_disk(service, self.settings, secrets);
            applied.record(service, instance, want);
        }
        Ok(match (was_active, action) {
            (false, _) => Outcome::Started,
            (true, Action::Restart) => Outcome::Restarted,
            (true, Action::Reload) => Outcome::Reloaded,
            (true, Action::Nothing) => Outcome::Unchanged,
        })
    }

    /// Whether every TLS port of `service` serves the certificate on disk.
    /// A reload is asynchronous (a signal), so each is given a few seconds
    /// to show; a port still stale after that gets up to two more reloads.
    async fn serves_current(
        &self,
        service: Service,
        step: &ServiceStep,
    ) -> Result<bool, BootError> {
        for reload in 0..3 {
            let mut stale = Vec::new();
            for _ in 0..20 {
                let ports = served::check(service, self.settings, self.spec, self.private).await;
                for p in ports.iter().filter(|p| p.error.is_some()) {
                    log::debug!(
                        "{}: {} {} not checked: {:?}",
                        step.unit,
                        p.port,
                        p.address,
                        p.error
                    );
                }
                stale = ports
                    .iter()
                    .filter(|p| p.stale())
                    .map(|p| {
                        format!(
                            "{} {} serves {}",
                            p.port,
                            p.address,
                            p.serial.as_deref().unwrap_or("?")
                        )
                    })
                    .collect();
                if stale.is_empty() {
                    return Ok(true);
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            log::warn!(
                "{}: still serving an older certificate than its file 5s after {} reload(s): {}",
                step.unit,
                reload + 1,
                stale.join("; ")
            );
            if reload < 2 {
                self.manager.reload(&step.unit).await?;
            }
        }
        Ok(false)
    }

    /// After a restart, until the unit's main process is a new one. The
    /// restart is queued (`--no-block`) and the old process answers on its
    /// API until it has stopped (Nomad's graceful stop takes a moment):
    /// without this, the waits after it would be met by the old process,
    /// and a server's restart lock released before the restart happened.
    async fn wait_replaced(&self, unit: &str, old: Option<&Instance>) -> Result<(), BootError> {
        let Some(old) = old else {
            return Ok(());
        };
        let deadlines = tuning::deadlines(self.settings);
        kraken_start::wait_for(
            &format!(
                "{unit} to run a new process (the old one was PID {})",
                old.pid
            ),
            deadlines.answer,
            std::time::Duration::from_millis(100),
            || async {
                match self.manager.main_pid(unit).await {
                    Ok(Some(pid)) => Ok(Instance::of(pid).filter(|i| i != old).map(|_| ())),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
        .map_err(BootError::from)
    }

    async fn wait(&self, service: Service, report: &mut StartReport) -> Result<(), BootError> {
        let deadlines = tuning::deadlines(self.settings);
        match service {
            Service::Consul => {
                kraken_start::wait_consul(
                    self.consul,
                    self.spec.has(Role::ConsulServer),
                    &deadlines,
                    report,
                    self.status,
                )
                .await?
            }
            Service::Docker => {
                kraken_start::wait_docker(
                    self.manager,
                    &self.settings.docker.unit,
                    &deadlines,
                    self.status,
                )
                .await?
            }
            Service::Nomad => {
                kraken_start::wait_nomad(
                    self.nomad,
                    self.spec.has(Role::NomadServer),
                    &deadlines,
                    report,
                    self.status,
                )
                .await?
            }
            Service::Operator => {}
        }
        Ok(())
    }
}
