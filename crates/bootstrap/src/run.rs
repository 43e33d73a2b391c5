//! The bootstrap protocol: wait for the lease, then run the phase's steps
//! that are not recorded as done, each checked against the lease before it
//! runs and recorded after.

use std::time::Duration;

use kraken_hashi::{ANONYMOUS_TOKEN_ACCESSOR, Consul, Nomad, Token};
use kraken_secrets::Store;
use kraken_secrets::{SecretStore, names};
use serde::Serialize;

use crate::error::BootstrapError;
use crate::lease::{Lease, LeaseSettings};
use crate::policies::{DNS_POLICY, NOMAD_AGENT_POLICY, NOMAD_DRAIN_POLICY, ROLE_TOKENS};
use crate::state::{Phase, State, Step, TokenRecord, now_unix};

/// What one participant did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Steps this node performed.
    pub performed: Vec<String>,
    /// Whether it ever held the lease.
    pub held_lease: bool,
    /// Consul API calls made for the lease and the steps.
    pub consul_calls: u64,
}

/// A test-only crash point: `KRAKEN_TEST_CRASH_AFTER=<step>` makes the
/// process abort right after recording that step, as a power cut would.
pub const CRASH_AFTER_ENV: &str = "KRAKEN_TEST_CRASH_AFTER";

/// One participant of the bootstrap.
pub struct Bootstrap<'a> {
    /// Authenticated: the initial-management token (Consul phase) or the
    /// nomad-server token (Nomad phase).
    pub consul: Consul,
    /// Nomad server API, for the Nomad phase.
    pub nomad: Option<Nomad>,
    pub store: &'a Store,
    pub cluster: String,
    /// This node's name, recorded in the lock and the state log.
    pub node: String,
    pub lease: LeaseSettings,
    /// In-process crash point for tests (see [`CRASH_AFTER_ENV`]): returns
    /// `true` to stop right after the step, as if killed.
    pub crash_after: Option<Step>,
}

impl Bootstrap<'_> {
    pub(crate) fn lock_key(&self) -> String {
        crate::state::lock_key(&self.cluster)
    }

    pub(crate) fn state_key(&self) -> String {
        crate::state::key(&self.cluster)
    }

    pub async fn read_state(&self) -> Result<(State, u64), BootstrapError> {
        crate::state::read(&self.consul, &self.cluster).await
    }

    /// Runs `phase` to completion, unless another node already has. Waits
    /// for the lease as long as needed; returns what this node did.
    pub async fn run(&self, phase: Phase) -> Result<Report, BootstrapError> {
        // A leader election or a lost lease interrupts an attempt; the
        // recorded state makes the next attempt resume where it stopped.
        let mut delay = Duration::from_millis(500);
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            match self.attempt(phase).await {
                Err(e) if e.is_transient() => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > Duration::from_secs(300) {
                        return Err(e);
                    }
                    log::warn!("bootstrap ({phase:?} phase): {e}; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }

    async fn attempt(&self, phase: Phase) -> Result<Report, BootstrapError> {
        let mut report = Report::default();
        let (state, _) = self.read_state().await?;
        report.consul_calls += 1;
        if self.settled(phase, &state).await? {
            return Ok(report);
        }
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = || calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = || async {
            count();
            let (state, _) = self.read_state().await?;
            self.settled(phase, &state).await
        };
        let acquired = Lease::acquire(
            &self.consul,
            &self.lock_key(),
            &self.node,
            &self.lease,
            stop,
            &calls,
        )
        .await;
        let lease_calls = || calls.load(std::sync::atomic::Ordering::Relaxed);
        let Some(mut lease) = acquired? else {
            report.consul_calls += lease_calls();
            return Ok(report);
        };
        report.held_lease = true;
        let result = self.run_held(phase, &mut lease, &mut report).await;
        if result.is_ok() {
            lease.release().await;
        }
        report.consul_calls += lease_calls();
        result.map(|()| report)
    }

    /// Whether `phase` needs nothing more. A Nomad phase recorded as done
    /// is not settled when Nomad no longer knows the stored management
    /// token: every Nomad server was replaced with its data, and Consul
    /// (where the state lives) kept its own.
    async fn settled(&self, phase: Phase, state: &State) -> Result<bool, BootstrapError> {
        if !state.phase_done(phase) {
            return Ok(false);
        }
        Ok(!(phase == Phase::Nomad && self.nomad_lost_its_acls().await?))
    }

    async fn nomad_lost_its_acls(&self) -> Result<bool, BootstrapError> {
        let (Some(nomad), Some(management)) =
            (&self.nomad, self.store.get(names::NOMAD_MANAGEMENT).await?)
        else {
            return Ok(false);
        };
        let known = nomad
            .with_token(Some(Token::new(management.expose())))
            .acl_token_self()
            .await
            .map_err(BootstrapError::nomad(
                "check the stored Nomad management token",
            ))?;
        Ok(known.is_none())
    }

    async fn run_held(
        &self,
        phase: Phase,
        lease: &mut Lease,
        report: &mut Report,
    ) -> Result<(), BootstrapError> {
        let (state, index) = self.read_state().await?;
        if state.phase_done(phase) && !self.settled(phase, &state).await? {
            // Its steps are undone with Nomad's data: forget them, under
            // the lease, and run them again.
            log::warn!("Nomad no longer knows its management token: its ACL steps run again");
            let mut state = state;
            for step in Step::ALL.iter().filter(|s| s.phase() == phase) {
                state.done.remove(step.name());
            }
            let body = serde_json::to_vec(&state).expect("state serialises");
            if !self
                .consul
                .kv_cas(&self.state_key(), &body, index)
                .await
                .map_err(BootstrapError::consul("record a bootstrap step"))?
            {
                return Err(BootstrapError::LeaseLost {
                    key: self.lock_key(),
                });
            }
        }
        for step in Step::ALL.into_iter().filter(|s| s.phase() == phase) {
            // The state is re-read under the lease: the previous holder may
            // have done more than we saw while waiting.
            let (state, index) = self.read_state().await?;
            report.consul_calls += 1;
            if state.is_done(step) {
                continue;
            }
            lease.check().await?;
            let made = tokio::select! {
                r = self.perform(step) => r?,
                () = lease.lost() => {
                    return Err(BootstrapError::LeaseLost { key: self.lock_key() });
                }
            };
            lease.check().await?;
            self.record(step, state, index, made).await?;
            report.consul_calls += 2;
            report.performed.push(step.name().to_owned());
            log::info!("bootstrap step {} done by {}", step.name(), self.node);
            if self.crash_after == Some(step)
                || std::env::var(CRASH_AFTER_ENV).is_ok_and(|s| s == step.name())
            {
                return Err(BootstrapError::CrashPoint { step: step.name() });
            }
        }
        Ok(())
    }

    async fn record(
        &self,
        step: Step,
        mut state: State,
        index: u64,
        made: Option<(&'static str, TokenRecord)>,
    ) -> Result<(), BootstrapError> {
        state.done.insert(step.name().to_owned());
        if let Some((name, record)) = made {
            state.tokens.insert(name.to_owned(), record);
        }
        state.log.push(format!(
            "{} by {} at {}",
            step.name(),
            self.node,
            now_unix()
        ));
        let body = serde_json::to_vec(&state).expect("state serialises");
        let written = self
            .consul
            .kv_cas(&self.state_key(), &body, index)
            .await
            .map_err(BootstrapError::consul("record a bootstrap step"))?;
        if written {
            Ok(())
        } else {
            // Only the holder writes the state; a changed index means we
            // are not the holder any more.
            Err(BootstrapError::LeaseLost {
                key: self.lock_key(),
            })
        }
    }

    /// Runs one step; a step that makes a Consul role token returns its
    /// record.
    async fn perform(
        &self,
        step: Step,
    ) -> Result<Option<(&'static str, TokenRecord)>, BootstrapError> {
        // A leader election mid-step answers 500 "No cluster leader": every
        // step is idempotent, so it is simply tried again.
        let mut delay = Duration::from_millis(500);
        loop {
            match self.perform_once(step).await {
                Err(e) if e.is_transient() && !matches!(e, BootstrapError::LeaseLost { .. }) => {
                    log::warn!("bootstrap step {}: {e}; retrying", step.name());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    async fn perform_once(
        &self,
        step: Step,
    ) -> Result<Option<(&'static str, TokenRecord)>, BootstrapError> {
        match step {
            Step::ConsulPolicies => {
                crate::policies::ensure(&self.consul, &self.consul, &self.cluster).await?;
                Ok(None)
            }
            Step::ConsulAgentToken => self.made(ROLE_TOKENS[0]).await,
            Step::ConsulNomadServerToken => self.made(ROLE_TOKENS[1]).await,
            Step::ConsulNomadClientToken => self.made(ROLE_TOKENS[2]).await,
            Step::ConsulAnonymousDns => {
                self.consul
                    .acl_token_set_policies(
                        ANONYMOUS_TOKEN_ACCESSOR,
                        "Anonymous Token",
                        &[DNS_POLICY],
                    )
                    .await
                    .map_err(BootstrapError::consul(
                        "give the anonymous token its DNS policy",
                    ))?;
                Ok(None)
            }
            Step::ConsulServerToken => {
                // Its policy is newer than clusters whose policies step an
                // older agent ran.
                crate::policies::ensure(&self.consul, &self.consul, &self.cluster).await?;
                self.made(ROLE_TOKENS[3]).await
            }
            Step::ConsulMetricsToken => {
                // The scraper's token: its policy is newer still.
                crate::policies::ensure(&self.consul, &self.consul, &self.cluster).await?;
                self.made(ROLE_TOKENS[4]).await
            }
            Step::NomadAclBootstrap => self.nomad_bootstrap().await.map(|()| None),
            Step::NomadAgentToken => self
                .nomad_token(names::NOMAD_AGENT, NOMAD_AGENT_POLICY)
                .await
                .map(|()| None),
            Step::NomadDrainToken => self
                .nomad_token(names::NOMAD_DRAIN, NOMAD_DRAIN_POLICY)
                .await
                .map(|()| None),
            Step::NomadWorkloadIdentity => {
                let done = self.workload_identity().await?;
                log::info!("workload identity to Consul: {done:?}");
                Ok(None)
            }
        }
    }

    async fn made(
        &self,
        (name, description, policy): (&'static str, &str, &str),
    ) -> Result<Option<(&'static str, TokenRecord)>, BootstrapError> {
        let record = self.role_token(name, description, policy).await?;
        Ok(Some((name, record)))
    }
}
