//! Servers are a quorum: a Consul or Nomad server restarts only while its
//! node holds the cluster's restart lock, and releases it only once the
//! cluster is healthy again (a leader, autopilot healthy, the failure
//! tolerance it had before). So whatever makes servers restart at once (a
//! new agent version on every server, a changed policy, peers or token), no
//! two of them are down together.
//!
//! The lock is a Consul session with a TTL and no node health check: it
//! outlives a restart of this node's own Consul (whose agent it was made
//! through), and dies with this agent if the agent dies, after the TTL.

use std::future::Future;
use std::time::{Duration, Instant};

use kraken_bootstrap::{Lease, LeaseSettings};
use kraken_hashi::{AutopilotHealth, Consul, HashiError, Nomad};

use crate::BootError;

/// Which servers a restart is of: each has its own quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Consul,
    Nomad,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Consul => "Consul",
            System::Nomad => "Nomad",
        }
    }
}

/// What is needed to restart this node's servers safely.
pub struct RestartGate {
    /// For the lock and Consul's health: a token with `key_prefix
    /// kraken/<cluster>/` write, `session` write and `operator:read`.
    pub consul: Consul,
    /// For Nomad's health (`operator:read`), on Nomad servers.
    pub nomad: Option<Nomad>,
    pub cluster: String,
    pub node: String,
    pub consul_servers: u8,
    pub nomad_servers: u8,
    /// How long the cluster may take to be healthy again.
    pub settle: Duration,
}

/// What one guarded restart saw, for the status file and the logs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Guarded {
    pub waited_for_lock_ms: u64,
    pub failure_tolerance_before: Option<u32>,
    pub healthy_after_ms: u64,
    pub without_lock: bool,
}

const LOCK_TTL: Duration = Duration::from_secs(30);
/// With no leader there is no lock to take, and no quorum left to lose.
const NO_LEADER_GRACE: Duration = Duration::from_secs(30);

impl RestartGate {
    fn key(&self) -> String {
        format!("kraken/{}/restart/lock", self.cluster)
    }

    pub(crate) async fn health(&self, system: System) -> Result<AutopilotHealth, HashiError> {
        match (system, &self.nomad) {
            (System::Consul, _) => self.consul.autopilot_health().await,
            (System::Nomad, Some(nomad)) => nomad.autopilot_health().await,
            (System::Nomad, None) => self.consul.autopilot_health().await,
        }
    }

    pub(crate) fn expected(&self, system: System) -> u32 {
        u32::from(match system {
            System::Consul => self.consul_servers,
            System::Nomad => self.nomad_servers,
        })
    }

    /// Runs `restart` (the restart itself and the wait for the service to
    /// answer) under the lock, then waits until `system` is healthy again.
    pub async fn restart<F, Fut>(
        &self,
        system: System,
        status: &(dyn Fn(&str) + Sync),
        restart: F,
    ) -> Result<Guarded, BootError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), BootError>>,
    {
        let mut report = Guarded::default();
        let started = Instant::now();
        status(&format!(
            "waiting for the cluster's restart lock to restart this {} server",
            system.name()
        ));
        let lease = self.lock(status).await?;
        report.waited_for_lock_ms = started.elapsed().as_millis() as u64;
        report.without_lock = lease.is_none();
        // Under the lock, nobody else is restarting: what autopilot says now
        // is what this restart may cost.
        let before = if lease.is_some() {
            Some(self.tolerant_enough(system, status).await?)
        } else {
            None
        };
        report.failure_tolerance_before = before;
        let outcome = restart().await;
        let settled = Instant::now();
        let healthy = match &outcome {
            Ok(()) => self.wait_healthy(system, before.unwrap_or(0), status).await,
            Err(_) => Ok(()),
        };
        report.healthy_after_ms = settled.elapsed().as_millis() as u64;
        if let Some(mut lease) = lease {
            lease.release().await;
        }
        outcome?;
        healthy?;
        log::info!(
            "{} server restarted under the restart lock: waited {}ms for it, healthy again {}ms after",
            system.name(),
            report.waited_for_lock_ms,
            report.healthy_after_ms
        );
        Ok(report)
    }

    /// The lock, or `None` when the cluster has had no leader for a while
    /// (nothing left to protect, and no way to lock).
    pub(crate) async fn lock(
        &self,
        status: &(dyn Fn(&str) + Sync),
    ) -> Result<Option<Lease>, BootError> {
        let settings = LeaseSettings {
            ttl: LOCK_TTL,
            lock_delay: Duration::from_secs(1),
            wait: Duration::from_secs(10),
            node_health: false,
            purpose: "restart lock",
        };
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let leaderless_since = Instant::now();
        loop {
            let attempt = Lease::acquire(
                &self.consul,
                &self.key(),
                &self.node,
                &settings,
                || async { Ok(false) },
                &calls,
            )
            .await;
            match attempt {
                Ok(lease) => return Ok(lease),
                Err(e) if e.is_transient() => {
                    let leader = self.consul.leader().await.ok().flatten();
                    if leader.is_none() && leaderless_since.elapsed() > NO_LEADER_GRACE {
                        log::warn!(
                            "restarting without the restart lock: Consul has had no leader for \
                             {}s, so no quorum is left to protect ({e})",
                            leaderless_since.elapsed().as_secs()
                        );
                        return Ok(None);
                    }
                    status(&format!("restart lock: {e}; trying again"));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until losing one server costs no quorum; returns the failure
    /// tolerance then. A lone server has none to lose.
    async fn tolerant_enough(
        &self,
        system: System,
        status: &(dyn Fn(&str) + Sync),
    ) -> Result<u32, BootError> {
        if self.expected(system) <= 1 {
            return Ok(0);
        }
        let deadline = Instant::now() + self.settle;
        loop {
            let last = match self.health(system).await {
                Ok(h) if h.failure_tolerance >= 1 => return Ok(h.failure_tolerance),
                Ok(h) => format!("failure tolerance {}", h.failure_tolerance),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(BootError::Start(kraken_start::StartError::Timeout {
                    what: format!(
                        "the {} servers to tolerate one restart (another server is down?)",
                        system.name()
                    ),
                    waited: self.settle,
                    last,
                }));
            }
            status(&format!(
                "not restarting this {} server yet: {last}",
                system.name()
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn wait_healthy(
        &self,
        system: System,
        before: u32,
        status: &(dyn Fn(&str) + Sync),
    ) -> Result<(), BootError> {
        status(&format!(
            "waiting for the {} servers to be healthy again",
            system.name()
        ));
        let settle = self.settle;
        kraken_start::wait_for(
            &format!("the {} servers to be healthy again", system.name()),
            settle,
            Duration::from_millis(500),
            || async {
                match self.health(system).await {
                    Ok(h) if h.has_leader() && h.healthy && h.failure_tolerance >= before => {
                        Ok(Some(()))
                    }
                    Ok(h) => Err(format!(
                        "leader: {}, healthy: {}, failure tolerance {} (was {before})",
                        h.has_leader(),
                        h.healthy,
                        h.failure_tolerance
                    )),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
        .map_err(BootError::from)
    }
}

/// The gate for this node's server restarts: on servers, with the servers'
/// own Consul token (or, before the bootstrap made it, the management
/// token Consul servers hold), and for Nomad's health the agent's Nomad
/// token (or Nomad's management token). `None` on a node that runs no
/// server, or a Nomad server whose Consul server token does not exist yet:
/// its restarts wait for it.
pub async fn gate(
    settings: &kraken_settings::Settings,
    spec: &kraken_intent::NodeSpec,
    node: &str,
    store: &kraken_secrets::Store,
    secrets: &kraken_render::RenderSecrets,
) -> Result<Option<RestartGate>, BootError> {
    use kraken_intent::Role;
    use kraken_secrets::{SecretStore, names};
    if !spec.has(Role::ConsulServer) && !spec.has(Role::NomadServer) {
        return Ok(None);
    }
    let token = |s: kraken_secrets::Secret| kraken_hashi::Token::new(s.expose());
    let lock_token = match store.get(names::CONSUL_SERVER).await? {
        Some(t) => Some(token(t)),
        None => secrets.initial_management.clone().map(token),
    };
    let Some(lock_token) = lock_token else {
        return Ok(None);
    };
    let nomad = if spec.has(Role::NomadServer) {
        let health = match store.get(names::NOMAD_AGENT).await? {
            Some(t) => Some(t),
            None => store.get(names::NOMAD_MANAGEMENT).await?,
        };
        Some(crate::clients::nomad(settings, health.map(token))?)
    } else {
        None
    };
    Ok(Some(RestartGate {
        consul: crate::clients::consul(settings, Some(lock_token))?,
        nomad,
        cluster: spec.cluster.clone(),
        node: node.to_owned(),
        consul_servers: spec.consul_servers,
        nomad_servers: spec.nomad_servers,
        settle: Duration::from_secs(settings.start.leader_timeout_secs),
    }))
}
