//! `kraken-agent run`: the boot daemon.
//!
//! Converge once (the boot flow, step by step), report `READY=1`, then keep
//! watching ([`watch`]). Transient failures (IMDS down, throttling, no
//! leader yet) are retried with backoff; failures only a person can fix end
//! the process with a sysexits code after saying exactly what to fix.

mod watch;

use std::collections::BTreeMap;

use kraken_discovery::{Ec2Peers, Peers};
use kraken_identity::{Identity, ImdsIdentity};
use kraken_intent::{NodeSpec, Role};
use kraken_ready::{Notifier, Status, StatusFile};
use kraken_render::{Change, RenderSecrets, Service};
use kraken_secrets::{SecretStore, Store};
use kraken_settings::Settings;
use kraken_start::{StartReport, Systemctl, start_services};
use serde_json::json;

use crate::steps::pki::{self, LeafReport, NodeAuthorities};
use crate::steps::secrets::SecretsMode;
use crate::steps::{bootstrap, discovery, node, render, secrets, start, tokens};
use crate::{BootError, clients, tuning};

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

    let mut agent = Agent {
        manager: Systemctl::new(&settings.start.systemctl),
        settings,
        secrets: RenderSecrets::default(),
        notifier,
        status_file,
        status,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let result = tokio::select! {
        r = agent.converge_and_watch() => r,
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

struct Agent {
    settings: Settings,
    manager: Systemctl,
    /// What the configs carry, once converged.
    secrets: RenderSecrets,
    notifier: Notifier,
    status_file: StatusFile,
    status: Status,
}

/// What one convergence produced, for the watch loop.
struct Converged {
    identity: Identity,
    spec: NodeSpec,
    peers: Peers,
    ec2: Ec2Peers,
    /// Nomad's management token, on Nomad servers: `agent/join` needs
    /// `agent:write` once ACLs are on.
    nomad_token: Option<kraken_secrets::Secret>,
    /// This node's intermediates, with TLS on: the watch loop renews the
    /// leaf certificates with them.
    authorities: Option<NodeAuthorities>,
    store: Store,
}

impl Agent {
    fn say(&mut self, phase: &str, text: &str) {
        self.notifier.status(text);
        self.status.phase = phase.into();
        self.status.message = text.into();
        self.status_file.write(&mut self.status);
    }

    fn record(&mut self, name: &str, detail: impl serde::Serialize) {
        let detail = serde_json::to_value(detail).unwrap_or_default();
        self.status.steps.insert(name.into(), detail);
        self.status_file.write(&mut self.status);
    }

    /// A status callback for the steps' long waits.
    fn progress(&self) -> impl Fn(&str) + Sync + use<> {
        let notifier = self.notifier.clone();
        move |s: &str| notifier.status(s)
    }

    async fn converge_and_watch(&mut self) -> Result<(), BootError> {
        let mut backoff = tuning::discovery_backoff(&self.settings);
        let converged = loop {
            match self.converge().await {
                Ok(c) => break c,
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    self.status.last_error = Some(e.to_string());
                    self.say("waiting", &format!("{e}; retrying in {}s", delay.as_secs()));
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.status.converged_unix = Some(kraken_ready::now_unix());
        self.status.last_error = None;
        let roles: Vec<&str> = converged.spec.roles.iter().map(|r| r.as_str()).collect();
        let summary = format!(
            "converged: {} is a {} node of cluster {}",
            converged.identity.instance_id,
            roles.join("+"),
            converged.spec.cluster
        );
        self.status.phase = "converged".into();
        self.status.message = summary.clone();
        self.status_file.write(&mut self.status);
        self.notifier.ready(&summary);
        self.watch(converged).await
    }

    /// The boot flow, once. Render → start → bootstrap → tokens → render
    /// again is inherent: the bootstrap needs running services, and makes
    /// the tokens the configs then carry.
    async fn converge(&mut self) -> Result<Converged, BootError> {
        let settings = self.settings.clone();
        // Steps 1 and 2.
        self.say("starting", "reading instance identity from IMDS");
        let provider = ImdsIdentity::new(tuning::imds(&settings), tuning::aws(&settings));
        let identity = node::identity(&provider).await?;
        self.record(
            "identity",
            json!({
                "instance_id": identity.instance_id,
                "region": identity.region,
                "availability_zone": identity.availability_zone,
                "private_ipv4": identity.private_ipv4,
                "tags_source": identity.tags_source,
            }),
        );
        let spec = node::intent(&identity, &settings)?;
        self.record("intent", &spec);

        // Step 3.
        let sdk = kraken_aws::sdk_config(&identity.region, &tuning::aws(&settings)).await;
        self.say("starting", "reading the cluster secrets");
        let store = Store::from_settings(
            &settings.secrets,
            &spec.cluster,
            &sdk,
            &kraken_aws::ApiCalls::default(),
        )?;
        let mut secrets = secrets::secrets(&store, &spec, &settings, SecretsMode::Boot).await?;

        // Step 4.
        let calls = kraken_aws::ApiCalls::default();
        let ec2 = Ec2Peers::new(kraken_aws::ec2_client(&sdk, &calls), calls);
        let peers = self.discover(&ec2, &spec, provider.ec2_calls()).await?;

        // Steps 3 and 5 for certificates, then 5 for configs.
        let (authorities, leaves) = self.certificates(&store, &identity, &spec).await?;
        self.say("starting", "rendering configs");
        let changes = self.render_and_install(&identity, &spec, &peers, &secrets)?;

        // Step 6.
        self.start(&spec, &changes, &leaves).await?;

        // Step 7, then this node's own tokens.
        let reports = bootstrap::bootstrap(
            &settings,
            &spec,
            &identity.instance_id,
            &store,
            &secrets,
            &self.progress(),
        )
        .await?;
        self.record("bootstrap", &reports);
        if !tokens::has_role_tokens(&spec, &secrets) {
            self.say(
                "waiting",
                "waiting for this node's tokens in the secret store",
            );
        }
        if tokens::fetch(&store, &spec, &settings, &mut secrets).await? {
            let changes = self.render_and_install(&identity, &spec, &peers, &secrets)?;
            let nomad = clients::nomad(&settings, None)?;
            tokens::load(&self.manager, &settings, &changes, &nomad, &self.progress()).await?;
        }
        self.record("tokens", json!({ "installed": true }));
        self.secrets = secrets;
        let nomad_token = if spec.has(Role::NomadServer) {
            store.get(kraken_secrets::names::NOMAD_MANAGEMENT).await?
        } else {
            None
        };
        Ok(Converged {
            identity,
            spec,
            peers,
            ec2,
            nomad_token,
            authorities,
            store,
        })
    }

    /// Step 4, until enough servers are found (or skipped for cloud
    /// auto-join).
    async fn discover(
        &mut self,
        ec2: &Ec2Peers,
        spec: &NodeSpec,
        identity_calls: u64,
    ) -> Result<Peers, BootError> {
        self.say(
            "waiting",
            &format!("discovering the servers of cluster {}", spec.cluster),
        );
        let peers = if discovery::uses_cloud_auto_join(spec, &self.settings) {
            log::info!("discovery: left to Consul's and Nomad's cloud auto-join");
            Peers::default()
        } else {
            let mut backoff = tuning::discovery_backoff(&self.settings);
            let peers =
                discovery::discover_until_enough(ec2, spec, &mut backoff, &self.progress()).await;
            self.status.ec2_api_calls = ec2.api_calls() + identity_calls;
            let peers = peers?;
            log::info!(
                "discovery: {} EC2 API calls so far",
                self.status.ec2_api_calls
            );
            peers
        };
        self.record("discovery", &peers);
        Ok(peers)
    }

    /// The node's intermediates and its leaf certificates, with TLS on.
    async fn certificates(
        &mut self,
        store: &Store,
        identity: &Identity,
        spec: &NodeSpec,
    ) -> Result<(Option<NodeAuthorities>, Vec<LeafReport>), BootError> {
        let authorities = if self.settings.tls.enabled {
            self.say("starting", "reading this node's certificate authorities");
            pki::authorities(store, spec, &self.settings, SecretsMode::Boot).await?
        } else {
            None
        };
        let leaves = match &authorities {
            Some(a) => pki::ensure_leaves(identity, spec, &self.settings, a)?,
            None => Vec::new(),
        };
        self.record("tls", &leaves);
        Ok((authorities, leaves))
    }

    fn render_and_install(
        &mut self,
        identity: &Identity,
        spec: &NodeSpec,
        peers: &Peers,
        secrets: &RenderSecrets,
    ) -> Result<Vec<(Service, Change)>, BootError> {
        let files = render::render(identity, spec, peers, &self.settings, secrets)?;
        let changes = render::install(&files, None)?;
        let detail: BTreeMap<_, _> = files
            .iter()
            .zip(&changes)
            .map(|(f, (_, c))| (f.path.display().to_string(), json!(c)))
            .collect();
        self.record("render", detail);
        Ok(changes)
    }

    /// Step 6: start what is not running, restart what has a new config,
    /// and make running services load renewed certificates.
    async fn start(
        &mut self,
        spec: &NodeSpec,
        changes: &[(Service, Change)],
        leaves: &[LeafReport],
    ) -> Result<StartReport, BootError> {
        let settings = &self.settings;
        let plan = start::start_plan(spec, changes, settings);
        let consul = clients::consul(settings, None)?;
        let nomad = clients::nomad(settings, None)?;
        let report = start_services(
            &self.manager,
            &plan,
            &consul,
            &nomad,
            &tuning::deadlines(settings),
            &self.progress(),
        )
        .await?;
        self.record("start", &report);
        // A service that was already running and kept its config still
        // serves the certificate it loaded: a reload makes it read the new
        // one without a restart.
        for leaf in leaves.iter().filter(|l| l.change.needs_restart()) {
            let unit = start::unit_of(&self.settings, leaf.service).to_owned();
            if report.already_running.contains(&unit) {
                self.say(
                    "starting",
                    &format!("{unit}: loading its new certificate (reload)"),
                );
                kraken_start::ServiceManager::reload(&self.manager, &unit).await?;
            }
        }
        Ok(report)
    }
}
