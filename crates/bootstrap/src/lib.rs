//! Step 7 of the boot flow: the one-time cluster bootstrap, done exactly
//! once by whichever node holds the lease.
//!
//! Each step is idempotent and recorded in `kraken/<cluster>/bootstrap/state`
//! once done; a holder that dies loses its session, and the next holder
//! resumes after the last recorded step. Secrets are written to the secret
//! store *before* Consul or Nomad learn them (write-ahead): a crash between
//! the two leaves a stored secret for the next holder to finish with, never
//! a token nobody knows.

mod lease;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use kraken_hashi::{ANONYMOUS_TOKEN_ACCESSOR, Consul, HashiError, Nomad, NomadBootstrap, Token};
use kraken_secrets::{Secret, SecretError, SecretStore, Store};
use serde::{Deserialize, Serialize};

pub use lease::{Lease, LeaseSettings};

pub use kraken_secrets::names;

/// The Consul role tokens: secret name, description, policy. None has an
/// expiry (`docs/operations.md`, token policy): a token that expires takes
/// the cluster down with it; the agent recreates a missing one instead.
const ROLE_TOKENS: [(&str, &str, &str); 3] = [
    (names::CONSUL_AGENT, "kraken: Consul agents", "kraken-agent"),
    (
        names::CONSUL_NOMAD_SERVER,
        "kraken: Nomad servers",
        "kraken-nomad-server",
    ),
    (
        names::CONSUL_NOMAD_CLIENT,
        "kraken: Nomad clients",
        "kraken-nomad-client",
    ),
];

/// The Consul ACL policies the bootstrap creates: name, description, rules
/// (`@CLUSTER@` stands for the cluster's name).
const POLICIES: [(&str, &str, &str); 4] = [
    (
        "kraken-agent",
        "Consul agents of kraken nodes",
        include_str!("../policies/kraken-agent.hcl"),
    ),
    (
        "kraken-nomad-server",
        "Nomad servers of kraken nodes",
        include_str!("../policies/nomad-server.hcl"),
    ),
    (
        "kraken-nomad-client",
        "Nomad clients of kraken nodes",
        include_str!("../policies/nomad-client.hcl"),
    ),
    (
        DNS_POLICY,
        "Anonymous DNS lookups",
        include_str!("../policies/dns.hcl"),
    ),
];

/// The anonymous token's policy.
const DNS_POLICY: &str = "kraken-dns";

/// The two halves of the bootstrap: the Consul half needs a Consul server
/// (it authenticates with the initial-management token), the Nomad half a
/// Nomad server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Consul,
    Nomad,
}

/// One bootstrap step. The order is the order they run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    ConsulPolicies,
    ConsulAgentToken,
    ConsulNomadServerToken,
    ConsulNomadClientToken,
    ConsulAnonymousDns,
    NomadAclBootstrap,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::ConsulPolicies,
        Step::ConsulAgentToken,
        Step::ConsulNomadServerToken,
        Step::ConsulNomadClientToken,
        Step::ConsulAnonymousDns,
        Step::NomadAclBootstrap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::ConsulPolicies => "consul-policies",
            Step::ConsulAgentToken => "consul-token-agent",
            Step::ConsulNomadServerToken => "consul-token-nomad-server",
            Step::ConsulNomadClientToken => "consul-token-nomad-client",
            Step::ConsulAnonymousDns => "consul-anonymous-dns",
            Step::NomadAclBootstrap => "nomad-acl-bootstrap",
        }
    }

    pub fn phase(self) -> Phase {
        match self {
            Step::NomadAclBootstrap => Phase::Nomad,
            _ => Phase::Consul,
        }
    }
}

/// What is recorded under `kraken/<cluster>/bootstrap/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Names of the steps done.
    pub done: BTreeSet<String>,
    /// Who did what, in order: "<step> by <node> at <unix time>".
    #[serde(default)]
    pub log: Vec<String>,
}

impl State {
    pub fn is_done(&self, step: Step) -> bool {
        self.done.contains(step.name())
    }

    pub fn phase_done(&self, phase: Phase) -> bool {
        Step::ALL
            .iter()
            .filter(|s| s.phase() == phase)
            .all(|s| self.is_done(*s))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("could not {action}: {source}")]
    Consul {
        action: &'static str,
        source: HashiError,
    },
    #[error("could not {action}: {source}")]
    Nomad {
        action: &'static str,
        source: HashiError,
    },
    #[error("bootstrap secret: {0}")]
    Secret(#[from] SecretError),
    #[error(
        "the bootstrap lease {key} was lost (the session expired or the lock key was deleted); \
         stopped before the next step, another node will resume"
    )]
    LeaseLost { key: String },
    #[error(
        "Nomad's ACLs were bootstrapped before, but not with the management token in the secret \
         store ({location}): someone ran `nomad acl bootstrap` by hand. Find that token, then \
         store it there (or reset Nomad's ACL bootstrap: `nomad acl bootstrap -reset-index`, see \
         docs/operations.md) and restart kraken-agent"
    )]
    NomadBootstrappedByHand { location: String },
    #[error("stopped at the test crash point after step {step}")]
    CrashPoint { step: &'static str },
    #[error("bootstrap state at {key} is not valid JSON: {detail}")]
    BadState { key: String, detail: String },
}

impl BootstrapError {
    fn consul(action: &'static str) -> impl FnOnce(HashiError) -> BootstrapError {
        move |source| BootstrapError::Consul { action, source }
    }

    fn nomad(action: &'static str) -> impl FnOnce(HashiError) -> BootstrapError {
        move |source| BootstrapError::Nomad { action, source }
    }

    /// Worth trying again: a lost lease, a leader election, an
    /// unreachable agent, throttling.
    pub fn is_transient(&self) -> bool {
        match self {
            BootstrapError::Consul { source, .. } | BootstrapError::Nomad { source, .. } => {
                lease::transient(source)
            }
            BootstrapError::Secret(e) => e.is_transient(),
            BootstrapError::LeaseLost { .. } => true,
            BootstrapError::NomadBootstrappedByHand { .. }
            | BootstrapError::BadState { .. }
            | BootstrapError::CrashPoint { .. } => false,
        }
    }
}

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
    fn lock_key(&self) -> String {
        format!("kraken/{}/bootstrap/lock", self.cluster)
    }

    fn state_key(&self) -> String {
        format!("kraken/{}/bootstrap/state", self.cluster)
    }

    pub async fn read_state(&self) -> Result<(State, u64), BootstrapError> {
        let (pair, _) = self
            .consul
            .kv_get(&self.state_key(), None)
            .await
            .map_err(BootstrapError::consul("read the bootstrap state"))?;
        match pair {
            None => Ok((State::default(), 0)),
            Some(p) => serde_json::from_slice(&p.value)
                .map(|s| (s, p.modify_index))
                .map_err(|e| BootstrapError::BadState {
                    key: self.state_key(),
                    detail: e.to_string(),
                }),
        }
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
        if state.phase_done(phase) {
            return Ok(report);
        }
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = || calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = || async {
            count();
            Ok::<bool, BootstrapError>(self.read_state().await?.0.phase_done(phase))
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

    async fn run_held(
        &self,
        phase: Phase,
        lease: &mut Lease,
        report: &mut Report,
    ) -> Result<(), BootstrapError> {
        for step in Step::ALL.into_iter().filter(|s| s.phase() == phase) {
            // The state is re-read under the lease: the previous holder may
            // have done more than we saw while waiting.
            let (state, index) = self.read_state().await?;
            report.consul_calls += 1;
            if state.is_done(step) {
                continue;
            }
            lease.check().await?;
            tokio::select! {
                r = self.perform(step) => r?,
                () = lease.lost() => {
                    return Err(BootstrapError::LeaseLost { key: self.lock_key() });
                }
            }
            lease.check().await?;
            self.record(step, state, index).await?;
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

    async fn record(&self, step: Step, mut state: State, index: u64) -> Result<(), BootstrapError> {
        state.done.insert(step.name().to_owned());
        state.log.push(format!(
            "{} by {} at {}",
            step.name(),
            self.node,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
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

    async fn perform(&self, step: Step) -> Result<(), BootstrapError> {
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

    async fn perform_once(&self, step: Step) -> Result<(), BootstrapError> {
        let c = &self.consul;
        let policy = |file: &str| file.replace("@CLUSTER@", &self.cluster);
        match step {
            Step::ConsulPolicies => {
                for (name, description, rules) in POLICIES {
                    c.acl_policy_ensure(name, description, &policy(rules))
                        .await
                        .map_err(BootstrapError::consul("create an ACL policy"))?;
                }
                Ok(())
            }
            Step::ConsulAgentToken => {
                let (name, description, policy) = ROLE_TOKENS[0];
                self.token(name, description, policy).await
            }
            Step::ConsulNomadServerToken => {
                let (name, description, policy) = ROLE_TOKENS[1];
                self.token(name, description, policy).await
            }
            Step::ConsulNomadClientToken => {
                let (name, description, policy) = ROLE_TOKENS[2];
                self.token(name, description, policy).await
            }
            Step::ConsulAnonymousDns => {
                c.acl_token_set_policies(
                    ANONYMOUS_TOKEN_ACCESSOR,
                    "Anonymous Token",
                    &[DNS_POLICY],
                )
                .await
                .map_err(BootstrapError::consul(
                    "give the anonymous token its DNS policy",
                ))?;
                Ok(())
            }
            Step::NomadAclBootstrap => self.nomad_bootstrap().await,
        }
    }

    /// Write-ahead: the SecretID goes to the store first, then Consul
    /// learns it. A SecretID already in use was created by an earlier
    /// holder that died before recording the step.
    /// Token upkeep, on a timer after the bootstrap: every Consul role
    /// token whose SecretID is in the store but which Consul no longer
    /// knows (deleted or revoked by hand, lost with a snapshot restore) is
    /// created again with the same SecretID, so no node needs a new config.
    /// Racing Consul servers are harmless: the second create finds the
    /// SecretID in use and confirms it. Needs the management token (Consul
    /// servers); does nothing before the Consul phase is done. Returns the
    /// names of the tokens it recreated.
    pub async fn repair_tokens(&self) -> Result<Vec<&'static str>, BootstrapError> {
        let (state, _) = self.read_state().await?;
        if !state.phase_done(Phase::Consul) {
            return Ok(Vec::new());
        }
        let mut repaired = Vec::new();
        for (name, description, policy) in ROLE_TOKENS {
            let Some(secret) = self.store.get(name).await? else {
                continue;
            };
            let known = self
                .consul
                .with_token(Some(Token::new(secret.expose())))
                .acl_token_self()
                .await
                .map_err(BootstrapError::consul("check a role token"))?;
            if known.is_none() {
                log::warn!("Consul token {name} is gone from Consul; creating it again");
                self.token(name, description, policy).await?;
                repaired.push(name);
            }
        }
        Ok(repaired)
    }

    async fn token(
        &self,
        name: &str,
        description: &str,
        policy: &str,
    ) -> Result<(), BootstrapError> {
        let secret = self.store.get_or_create(name, Secret::random_token).await?;
        let token = Token::new(secret.expose());
        match self
            .consul
            .acl_token_create(&token, description, &[policy])
            .await
            .map_err(BootstrapError::consul("create an ACL token"))?
        {
            Some(_) => Ok(()),
            None => {
                // Confirm the existing token is the stored one.
                let known = self
                    .consul
                    .with_token(Some(token))
                    .acl_token_self()
                    .await
                    .map_err(BootstrapError::consul("confirm an existing ACL token"))?;
                match known {
                    Some(_) => Ok(()),
                    None => Err(BootstrapError::Consul {
                        action: "create an ACL token",
                        source: HashiError::Decode {
                            service: "Consul",
                            url: format!("/v1/acl/token ({name})"),
                            detail: "Consul says the SecretID is in use but does not accept it"
                                .into(),
                        },
                    }),
                }
            }
        }
    }

    async fn nomad_bootstrap(&self) -> Result<(), BootstrapError> {
        let nomad = self
            .nomad
            .as_ref()
            .expect("the Nomad phase is run with a Nomad client");
        let secret = self
            .store
            .get_or_create(names::NOMAD_MANAGEMENT, Secret::random_token)
            .await?;
        let token = Token::new(secret.expose());
        match nomad
            .acl_bootstrap(&token)
            .await
            .map_err(BootstrapError::nomad("bootstrap Nomad's ACLs"))?
        {
            NomadBootstrap::Done => Ok(()),
            NomadBootstrap::AlreadyDone => {
                let works = nomad
                    .with_token(Some(token))
                    .acl_token_self()
                    .await
                    .map_err(BootstrapError::nomad(
                        "check the stored Nomad management token",
                    ))?;
                if works.is_some() {
                    Ok(())
                } else {
                    Err(BootstrapError::NomadBootstrappedByHand {
                        location: self
                            .store
                            .location(names::NOMAD_MANAGEMENT)
                            .unwrap_or_else(|_| names::NOMAD_MANAGEMENT.to_owned()),
                    })
                }
            }
        }
    }
}
