//! `kraken-agent run`: the boot daemon.
//!
//! Converge once (identity → intent → discovery → render → start), report
//! `READY=1`, then keep watching: re-discover on a timer, rewrite configs
//! whose peers changed, and when a service has no leader, join the servers
//! EC2 knows about now through the agent API, so replaced servers (new
//! addresses) never strand a node.
//!
//! Transient failures (IMDS down, throttling, no leader yet) are retried
//! with backoff; failures only a person can fix end the process with a
//! sysexits code after saying exactly what to fix.

use std::collections::BTreeMap;
use std::time::Duration;

use kraken_discovery::{Ec2Peers, Peers};
use kraken_hashi::{Consul, Nomad, Token};
use kraken_identity::{Identity, ImdsIdentity};
use kraken_intent::NodeSpec;
use kraken_ready::{Notifier, Status, StatusFile};
use kraken_render::{Change, RenderSecrets, Service};
use kraken_secrets::Store;
use kraken_settings::Settings;
use kraken_start::{ServiceManager, Systemctl, start_services};
use serde_json::json;

use crate::{BootError, steps, tls};

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
    authorities: Option<tls::NodeAuthorities>,
    store: Store,
}

fn unit_of(settings: &Settings, service: Service) -> String {
    match service {
        Service::Consul => settings.consul.unit.clone(),
        Service::Nomad => settings.nomad.unit.clone(),
        Service::Docker => settings.docker.unit.clone(),
        Service::Operator => String::new(),
    }
}

impl Agent {
    fn say(&mut self, phase: &str, text: &str) {
        self.notifier.status(text);
        self.status.phase = phase.into();
        self.status.message = text.into();
        self.status_file.write(&mut self.status);
    }

    fn render_and_install(
        &mut self,
        identity: &Identity,
        spec: &NodeSpec,
        peers: &Peers,
        secrets: &RenderSecrets,
    ) -> Result<Vec<(Service, Change)>, BootError> {
        let files = steps::render(identity, spec, peers, &self.settings, secrets)?;
        let changes = steps::install(&files, None)?;
        self.step(
            "render",
            json!(
                files
                    .iter()
                    .zip(&changes)
                    .map(|(f, (_, c))| (f.path.display().to_string(), json!(c)))
                    .collect::<BTreeMap<_, _>>()
            ),
        );
        Ok(changes)
    }

    fn step(&mut self, name: &str, detail: serde_json::Value) {
        self.status.steps.insert(name.into(), detail);
        self.status_file.write(&mut self.status);
    }

    async fn converge_and_watch(&mut self) -> Result<(), BootError> {
        let mut backoff = steps::discovery_backoff(&self.settings);
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
        let summary = format!(
            "converged: {} is a {} node of cluster {}",
            converged.identity.instance_id,
            converged
                .spec
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            converged.spec.cluster
        );
        self.status.phase = "converged".into();
        self.status.message = summary.clone();
        self.status_file.write(&mut self.status);
        self.notifier.ready(&summary);
        self.watch(converged).await
    }

    async fn converge(&mut self) -> Result<Converged, BootError> {
        let settings = self.settings.clone();
        self.say("starting", "reading instance identity from IMDS");
        let provider = ImdsIdentity::new(
            steps::imds_settings(&settings),
            steps::aws_settings(&settings),
        );
        let identity = steps::identity(&provider).await?;
        self.step(
            "identity",
            json!({
                "instance_id": identity.instance_id,
                "region": identity.region,
                "availability_zone": identity.availability_zone,
                "private_ipv4": identity.private_ipv4,
                "tags_source": identity.tags_source,
            }),
        );
        let spec = steps::intent(&identity, &settings)?;
        self.step("intent", serde_json::to_value(&spec).unwrap_or_default());

        let sdk = kraken_aws::sdk_config(&identity.region, &steps::aws_settings(&settings)).await;
        self.say("starting", "reading the cluster secrets");
        let store = Store::from_settings(
            &settings.secrets,
            &spec.cluster,
            &sdk,
            &kraken_aws::ApiCalls::default(),
        )?;
        let mut secrets =
            steps::secrets(&store, &spec, &settings, steps::SecretsMode::Boot).await?;

        let calls = kraken_aws::ApiCalls::default();
        let ec2 = Ec2Peers::new(kraken_aws::ec2_client(&sdk, &calls), calls);
        self.say(
            "waiting",
            &format!("discovering the servers of cluster {}", spec.cluster),
        );
        let peers = if steps::uses_cloud_auto_join(&spec, &settings) {
            log::info!("discovery: left to Consul's and Nomad's cloud auto-join");
            Peers::default()
        } else {
            let mut backoff = steps::discovery_backoff(&settings);
            let notifier = self.notifier.clone();
            let peers =
                steps::discover_until_enough(&ec2, &spec, &mut backoff, &|s| notifier.status(s))
                    .await;
            self.status.ec2_api_calls = ec2.api_calls() + provider.ec2_calls();
            let peers = peers?;
            log::info!(
                "discovery: {} EC2 API calls so far",
                self.status.ec2_api_calls
            );
            peers
        };
        self.step(
            "discovery",
            serde_json::to_value(&peers).unwrap_or_default(),
        );

        let authorities = if settings.tls.enabled {
            self.say("starting", "reading this node's certificate authorities");
            tls::authorities(&store, &spec, &settings, steps::SecretsMode::Boot).await?
        } else {
            None
        };
        let leaves = match &authorities {
            Some(a) => tls::ensure_leaves(&identity, &spec, &settings, a)?,
            None => Vec::new(),
        };
        self.step("tls", serde_json::to_value(&leaves).unwrap_or_default());

        self.say("starting", "rendering configs");
        let changes = self.render_and_install(&identity, &spec, &peers, &secrets)?;

        let plan = steps::start_plan(&spec, &changes, &settings);
        let consul = tls::consul_client(&settings, None)?;
        let nomad = tls::nomad_client(&settings, None)?;
        let manager = Systemctl::new(&settings.start.systemctl);
        let notifier = self.notifier.clone();
        let report = start_services(
            &manager,
            &plan,
            &consul,
            &nomad,
            &steps::deadlines(&settings),
            &|s| notifier.status(s),
        )
        .await?;
        self.step("start", serde_json::to_value(&report).unwrap_or_default());
        // A service that was already running and kept its config still
        // serves the certificate it loaded: a reload makes it read the new
        // one without a restart.
        for leaf in leaves.iter().filter(|l| l.change.needs_restart()) {
            let unit = unit_of(&settings, leaf.service);
            if report.already_running.contains(&unit) {
                self.say(
                    "starting",
                    &format!("{unit}: loading its new certificate (reload)"),
                );
                manager.reload(&unit).await?;
            }
        }

        // Step 7, then this node's own tokens.
        let notifier = self.notifier.clone();
        let reports = steps::bootstrap(
            &settings,
            &spec,
            &identity.instance_id,
            &store,
            &secrets,
            &|s| notifier.status(s),
        )
        .await?;
        self.step(
            "bootstrap",
            serde_json::to_value(&reports).unwrap_or_default(),
        );
        if !steps::has_role_tokens(&spec, &secrets) {
            self.say(
                "waiting",
                "waiting for this node's tokens in the secret store",
            );
            secrets.consul_agent = Some(
                steps::wait_for_secret(&store, kraken_secrets::names::CONSUL_AGENT, &settings)
                    .await?,
            );
            if let Some(name) = steps::nomad_role_token(&spec) {
                secrets.nomad_consul = Some(steps::wait_for_secret(&store, name, &settings).await?);
            }
            let changes = self.render_and_install(&identity, &spec, &peers, &secrets)?;
            let changed = |svc| {
                changes
                    .iter()
                    .any(|(s, c): &(Service, Change)| *s == svc && c.needs_restart())
            };
            // Consul re-reads acl.tokens on reload; Nomad's Consul token
            // needs a restart.
            if changed(Service::Consul) {
                self.say("starting", "installing the Consul agent token (reload)");
                manager.reload(&settings.consul.unit).await?;
            }
            if changed(Service::Nomad) {
                self.say("starting", "installing Nomad's Consul token (restart)");
                manager.restart(&settings.nomad.unit).await?;
                let deadlines = steps::deadlines(&settings);
                kraken_start::wait_for(
                    "Nomad to answer after installing its token",
                    deadlines.answer,
                    deadlines.poll,
                    || async {
                        nomad
                            .leader()
                            .await
                            .map(|_| Some(()))
                            .map_err(|e| e.to_string())
                    },
                )
                .await?;
            }
        }
        self.step("tokens", serde_json::json!({ "installed": true }));
        self.secrets = secrets;
        let nomad_token = if spec.has(kraken_intent::Role::NomadServer) {
            kraken_secrets::SecretStore::get(&store, kraken_secrets::names::NOMAD_MANAGEMENT)
                .await?
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

    /// After convergence: keep the configs' peer lists current and rejoin
    /// live servers when a service has lost its leader. Never restarts a
    /// healthy service for a peer-list change: the running agents learn
    /// membership by gossip, the file only matters at their next start.
    async fn watch(&mut self, mut node: Converged) -> Result<(), BootError> {
        let settings = self.settings.clone();
        // `agent/join` needs `agent:write` under default-deny ACLs: the
        // management tokens on servers, the agent token elsewhere.
        let token = |s: Option<&kraken_secrets::Secret>| s.map(|t| Token::new(t.expose()));
        let consul_token = token(
            self.secrets
                .initial_management
                .as_ref()
                .or(self.secrets.consul_agent.as_ref()),
        );
        let nomad_token = token(node.nomad_token.as_ref());
        let mut consul = tls::consul_client(&settings, consul_token.clone())?;
        let mut nomad = tls::nomad_client(&settings, nomad_token.clone())?;
        let manager = Systemctl::new(&settings.start.systemctl);
        let period = Duration::from_secs(settings.discovery.refresh_secs.max(1));
        let token_period = Duration::from_secs(settings.bootstrap.token_check_secs.max(1));
        let mut tokens_checked = std::time::Instant::now();
        let auto_join = steps::uses_cloud_auto_join(&node.spec, &settings);
        loop {
            tokio::time::sleep(period).await;
            if tokens_checked.elapsed() >= token_period {
                tokens_checked = std::time::Instant::now();
                let secrets = self.secrets.clone();
                match steps::repair_tokens(
                    &settings,
                    &node.spec,
                    &node.identity.instance_id,
                    &node.store,
                    &secrets,
                )
                .await
                {
                    Ok(repaired) if !repaired.is_empty() => {
                        log::info!("recreated Consul tokens: {}", repaired.join(", "));
                        self.step("token-repair", json!({ "recreated": repaired }));
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("token check failed, trying again later: {e}"),
                }
            }
            if let Some(authorities) = &node.authorities
                && self.renew(&node, authorities, &manager).await
            {
                // The clients present the certificate they read when made.
                consul = tls::consul_client(&settings, consul_token.clone())?;
                nomad = tls::nomad_client(&settings, nomad_token.clone())?;
            }
            if auto_join {
                // Consul and Nomad track their servers themselves.
                continue;
            }
            let peers = match steps::discover(&node.ec2, &node.spec).await {
                Ok(p) => p,
                Err(e) if e.is_transient() => {
                    log::warn!("{e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.status.ec2_api_calls = node.ec2.api_calls();
            self.status_file.write(&mut self.status);
            if peers != node.peers {
                log::info!("servers changed: {:?} -> {:?}", node.peers, peers);
                let secrets = self.secrets.clone();
                self.render_and_install(&node.identity, &node.spec, &peers, &secrets)?;
                self.step(
                    "discovery",
                    serde_json::to_value(&peers).unwrap_or_default(),
                );
                node.peers = peers;
            }
            self.rejoin(&consul, &nomad, &node).await;
        }
    }

    /// Renews the leaf certificates that are due and reloads the services
    /// that use them (no restart: both re-read their TLS files on SIGHUP).
    /// A failure is logged and tried again at the next tick: the current
    /// certificates still have a third of their life. True if any changed.
    async fn renew(
        &mut self,
        node: &Converged,
        authorities: &tls::NodeAuthorities,
        manager: &Systemctl,
    ) -> bool {
        let started = std::time::Instant::now();
        let leaves =
            match tls::ensure_leaves(&node.identity, &node.spec, &self.settings, authorities) {
                Ok(l) => l,
                Err(e) => {
                    log::warn!("certificate renewal failed, retrying at the next check: {e}");
                    self.status.last_error = Some(e.to_string());
                    self.status_file.write(&mut self.status);
                    return false;
                }
            };
        let mut renewed = false;
        for leaf in leaves.iter().filter(|l| l.change.needs_restart()) {
            let unit = unit_of(&self.settings, leaf.service);
            match manager.reload(&unit).await {
                Ok(()) => log::info!(
                    "{unit}: renewed certificate {} loaded by reload in {}ms",
                    leaf.serial,
                    started.elapsed().as_millis()
                ),
                Err(e) => log::warn!("{unit}: reload after certificate renewal failed: {e}"),
            }
            renewed = true;
        }
        if renewed {
            self.step("tls", serde_json::to_value(&leaves).unwrap_or_default());
        }
        renewed
    }

    async fn rejoin(&mut self, consul: &Consul, nomad: &Nomad, node: &Converged) {
        if let Ok(None) = consul.leader().await {
            for ip in &node.peers.consul_servers {
                match consul.join(&ip.to_string()).await {
                    Ok(()) => log::info!("Consul had no leader; joined {ip}"),
                    Err(e) => log::warn!("Consul had no leader; joining {ip} failed: {e}"),
                }
            }
        }
        if node.spec.has(kraken_intent::Role::NomadServer)
            && let Ok(None) = nomad.leader().await
        {
            for ip in &node.peers.nomad_servers {
                match nomad.join(&ip.to_string()).await {
                    Ok(()) => log::info!("Nomad had no leader; joined {ip}"),
                    Err(e) => log::warn!("Nomad had no leader; joining {ip} failed: {e}"),
                }
            }
        }
    }
}
