//! What `run` keeps between steps: the agent's state, what a convergence
//! produced, and the helpers every step of `run` uses to report and to
//! bring services to what is on disk.

use std::collections::BTreeMap;

use kraken_discovery::{Budgeted, Ec2Peers, Peers};
use kraken_identity::Identity;
use kraken_intent::NodeSpec;
use kraken_ready::{Notifier, Status, StatusFile};
use kraken_render::{Change, RenderSecrets, Service};
use kraken_secrets::Store;
use kraken_settings::Settings;
use kraken_start::{StartReport, Systemctl};
use serde_json::json;

use crate::steps::applied::Applied;
use crate::steps::apply::{Applier, Outcome};
use crate::steps::pki::NodeAuthorities;
use crate::steps::render;
use crate::steps::restart::{self, RestartGate};
use crate::{BootError, clients};

pub(super) struct Agent {
    pub settings: Settings,
    pub manager: Systemctl,
    /// What each running service has loaded.
    pub applied: Applied,
    /// What the configs carry, once converged.
    pub secrets: RenderSecrets,
    pub notifier: Notifier,
    pub status_file: StatusFile,
    pub status: Status,
    /// A convergence that took its servers from the published list failed
    /// (the list may be stale: its addresses leading nowhere keep Consul
    /// from answering): the next one asks EC2.
    pub distrust_published: bool,
    /// Scheduled snapshots, on servers (`[snapshots]`).
    pub snapshot_schedule: super::snapshots::Schedule,
    /// On clients: the token the re-registration check reads Nomad's node
    /// list with (`super::reregister`), read from the store once.
    pub drain_token: Option<kraken_secrets::Secret>,
    /// On Consul servers: the node tokens' task runs (once per process).
    pub node_tokens_started: bool,
}

/// What one convergence produced, for the watch loop.
pub(super) struct Converged {
    pub identity: Identity,
    pub spec: NodeSpec,
    pub peers: Peers,
    /// EC2, through the node's call budget.
    pub ec2: Budgeted<Ec2Peers>,
    /// Where the servers come from now (Consul on clients).
    pub follow: crate::steps::follow::Follow,
    /// This node's intermediates, with TLS on: the watch loop renews the
    /// leaf certificates with them.
    pub authorities: Option<NodeAuthorities>,
    pub store: Store,
    /// The agent's own tokens on servers (routine calls never use a
    /// management token), read at converge and at every token check.
    pub own: OwnTokens,
    /// On Consul servers: the server list this node last published or
    /// found published, while its Consul leads.
    pub published: Option<crate::steps::published::Published>,
}

impl Converged {
    /// The store for one token check: on servers, with every token the
    /// check reads fetched in one batch (`steps::tokens::check_names`); a
    /// failed batch is logged and the check reads one by one.
    pub async fn check_store(&self) -> Store {
        let names = crate::steps::tokens::check_names(&self.spec);
        if names.is_empty() {
            return self.store.clone();
        }
        match self.store.snapshot(&names).await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("reading the token check's secrets in one batch: {e}");
                self.store.clone()
            }
        }
    }
}

#[derive(Default)]
pub(super) struct OwnTokens {
    pub consul_server: Option<kraken_secrets::Secret>,
    pub nomad_agent: Option<kraken_secrets::Secret>,
}

impl OwnTokens {
    pub async fn read(spec: &NodeSpec, store: &Store) -> Result<OwnTokens, BootError> {
        use kraken_intent::Role;
        use kraken_secrets::{SecretStore, names};
        let server = spec.has(Role::ConsulServer) || spec.has(Role::NomadServer);
        let nomad = spec.has(Role::NomadServer);
        // One batched read for both (none on clients).
        let wanted: Vec<&str> = [(server, names::CONSUL_SERVER), (nomad, names::NOMAD_AGENT)]
            .into_iter()
            .filter_map(|(want, name)| want.then_some(name))
            .collect();
        if wanted.is_empty() {
            return Ok(OwnTokens::default());
        }
        let mut read = store.get_many(&wanted).await?.into_iter();
        Ok(OwnTokens {
            consul_server: if server { read.next().flatten() } else { None },
            nomad_agent: if nomad { read.next().flatten() } else { None },
        })
    }
}

impl Agent {
    pub fn say(&mut self, phase: &str, text: &str) {
        self.notifier.status(text);
        self.status.phase = phase.into();
        self.status.message = text.into();
        self.status_file.write(&mut self.status);
    }

    pub fn record(&mut self, name: &str, detail: impl serde::Serialize) {
        let detail = serde_json::to_value(detail).unwrap_or_default();
        self.status.steps.insert(name.into(), detail);
        self.status_file.write(&mut self.status);
    }

    /// A status callback for the steps' long waits.
    pub fn progress(&self) -> impl Fn(&str) + Sync + use<> {
        let notifier = self.notifier.clone();
        move |s: &str| notifier.status(s)
    }

    pub fn render_and_install(
        &mut self,
        identity: &Identity,
        spec: &NodeSpec,
        peers: &Peers,
    ) -> Result<Vec<(Service, Change)>, BootError> {
        let files = render::render(identity, spec, peers, &self.settings, &self.secrets)?;
        let changes = render::install(&files, None)?;
        let detail: BTreeMap<_, _> = files
            .iter()
            .zip(&changes)
            .map(|(f, (_, c))| (f.path.display().to_string(), json!(c)))
            .collect();
        self.record("render", detail);
        Ok(changes)
    }

    /// Brings each of `services` to what is on disk (step 6), with this
    /// node's server restarts under the cluster's restart lock.
    pub async fn apply(
        &mut self,
        identity: &Identity,
        spec: &NodeSpec,
        store: &Store,
        services: &[Service],
    ) -> Result<BTreeMap<Service, Outcome>, BootError> {
        let consul = clients::consul(&self.settings, None)?;
        let nomad = clients::nomad(&self.settings, None)?;
        let progress = self.progress();
        let mut applier = Applier {
            settings: &self.settings,
            spec,
            manager: &self.manager,
            consul: &consul,
            nomad: &nomad,
            gate: None,
            private: identity.private_ipv4,
            status: &progress,
        };
        // The gate reads tokens from the store: only when a server restarts.
        let gate: Option<RestartGate> = if applier
            .restarts_a_server(&self.applied, services, &self.secrets)
            .await?
        {
            restart::gate(
                &self.settings,
                spec,
                &identity.instance_id,
                store,
                &self.secrets,
            )
            .await?
        } else {
            None
        };
        applier.gate = gate.as_ref();
        let mut report = StartReport::default();
        let mut outcomes = BTreeMap::new();
        for service in services {
            let outcome = applier
                .apply(&mut self.applied, *service, &self.secrets, &mut report)
                .await?;
            if outcome != Outcome::Unchanged {
                log::info!("{service:?}: {outcome:?}");
                crate::metrics::action(*service, &format!("{outcome:?}").to_lowercase());
            }
            outcomes.insert(*service, outcome);
        }
        if outcomes.values().any(|o| *o != Outcome::Unchanged) {
            self.record("start", &report);
        }
        Ok(outcomes)
    }
}
