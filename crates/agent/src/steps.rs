//! The boot steps, each implemented once.

use std::path::Path;
use std::time::Duration;

use kraken_bootstrap::{Bootstrap, LeaseSettings, Phase};
use kraken_discovery::{Backoff, Needed, PeerSource, Peers};
use kraken_hashi::Token;
use kraken_identity::{Identity, IdentityProvider};
use kraken_intent::{NodeSpec, Role, RunsDocker};
use kraken_render::{Change, RenderSecrets, RenderedFile, Renderer, Service};
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;
use kraken_start::{Deadlines, ServiceStep, StartPlan};

use crate::BootError;

/// Step 1.
pub async fn identity<P: IdentityProvider>(provider: &P) -> Result<Identity, BootError> {
    Ok(provider.identity().await?)
}

/// Step 2.
pub fn intent(identity: &Identity, settings: &Settings) -> Result<NodeSpec, BootError> {
    Ok(NodeSpec::from_tags(&identity.tags, &settings.intent)?)
}

/// The servers a node must see before its config is worth writing: a
/// server needs every expected peer of its kind (the first election waits
/// for all of them anyway), any other node one server to join through;
/// gossip finds the rest.
pub fn needed(spec: &NodeSpec) -> Needed {
    Needed {
        consul_servers: if spec.has(Role::ConsulServer) {
            spec.consul_servers.into()
        } else {
            1
        },
        nomad_servers: if spec.has(Role::NomadServer) {
            spec.nomad_servers.into()
        } else if spec.runs_nomad() {
            1
        } else {
            0
        },
    }
}

/// How step 3 treats a missing cluster-wide secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsMode {
    /// `run`: Consul servers create missing cluster secrets (first writer
    /// wins); other nodes, which IAM does not let write, wait for them.
    Boot,
    /// `render` and `doctor`: read what exists, create nothing.
    ReadOnly,
}

/// Step 3: the cluster secrets this node's configs carry: the gossip key,
/// on Consul servers the initial-management token, on Nomad servers
/// Nomad's gossip key, and the role tokens the bootstrap creates, if they
/// exist yet.
pub async fn secrets(
    store: &Store,
    spec: &NodeSpec,
    settings: &Settings,
    mode: SecretsMode,
) -> Result<RenderSecrets, BootError> {
    let server = spec.has(Role::ConsulServer);
    let gossip_key = match mode {
        SecretsMode::Boot if server => Some(
            store
                .get_or_create(names::GOSSIP_KEY, Secret::gossip_key)
                .await?,
        ),
        SecretsMode::Boot => Some(wait_for_secret(store, names::GOSSIP_KEY, settings).await?),
        SecretsMode::ReadOnly => store.get(names::GOSSIP_KEY).await?,
    };
    let initial_management = match mode {
        SecretsMode::Boot if server => Some(
            store
                .get_or_create(names::CONSUL_INITIAL_MANAGEMENT, Secret::random_token)
                .await?,
        ),
        SecretsMode::ReadOnly if server => store.get(names::CONSUL_INITIAL_MANAGEMENT).await?,
        _ => None,
    };
    let nomad_consul = match nomad_role_token(spec) {
        Some(name) => store.get(name).await?,
        None => None,
    };
    // Nomad servers create their own gossip key: they are the only readers,
    // and IAM already lets them create their cluster's Nomad secrets.
    let nomad_gossip_key = match mode {
        SecretsMode::Boot if spec.has(Role::NomadServer) => Some(
            store
                .get_or_create(names::NOMAD_GOSSIP_KEY, Secret::gossip_key)
                .await?,
        ),
        SecretsMode::ReadOnly if spec.has(Role::NomadServer) => {
            store.get(names::NOMAD_GOSSIP_KEY).await?
        }
        _ => None,
    };
    Ok(RenderSecrets {
        gossip_key,
        nomad_gossip_key,
        initial_management,
        consul_agent: store.get(names::CONSUL_AGENT).await?,
        nomad_consul,
    })
}

/// The Consul token this node's Nomad runs with, if it runs Nomad.
pub fn nomad_role_token(spec: &NodeSpec) -> Option<&'static str> {
    if spec.has(Role::NomadServer) {
        Some(names::CONSUL_NOMAD_SERVER)
    } else if spec.has(Role::NomadClient) {
        Some(names::CONSUL_NOMAD_CLIENT)
    } else {
        None
    }
}

/// Whether this node has every token its role installs.
pub fn has_role_tokens(spec: &NodeSpec, secrets: &RenderSecrets) -> bool {
    secrets.consul_agent.is_some() && (!spec.runs_nomad() || secrets.nomad_consul.is_some())
}

/// Step 7: the one-time bootstrap, for the phases this node's roles take
/// part in. A Nomad server waits for the Consul phase (it needs the token
/// that phase creates to take the lease).
pub async fn bootstrap(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    store: &Store,
    secrets: &RenderSecrets,
    status: &(dyn Fn(&str) + Sync),
) -> Result<Vec<kraken_bootstrap::Report>, BootError> {
    let consul = crate::tls::consul_client(settings, None)?;
    let lease = LeaseSettings {
        ttl: Duration::from_secs(settings.bootstrap.lease_ttl_secs),
        lock_delay: Duration::from_secs(settings.bootstrap.lock_delay_secs),
        ..LeaseSettings::default()
    };
    let mut reports = Vec::new();
    if spec.has(Role::ConsulServer) {
        let management = secrets
            .initial_management
            .as_ref()
            .map(|s| Token::new(s.expose()));
        status("bootstrap: Consul ACL policies and tokens");
        let b = Bootstrap {
            consul: consul.with_token(management),
            nomad: None,
            store,
            cluster: spec.cluster.clone(),
            node: node.to_owned(),
            lease: lease.clone(),
            crash_after: None,
        };
        reports.push(b.run(Phase::Consul).await?);
    }
    if spec.has(Role::NomadServer) {
        status("bootstrap: waiting for the Nomad servers' Consul token");
        let token = wait_for_secret(store, names::CONSUL_NOMAD_SERVER, settings).await?;
        status("bootstrap: Nomad ACLs");
        let b = Bootstrap {
            consul: consul.with_token(Some(Token::new(token.expose()))),
            nomad: Some(crate::tls::nomad_client(settings, None)?),
            store,
            cluster: spec.cluster.clone(),
            node: node.to_owned(),
            lease,
            crash_after: None,
        };
        reports.push(b.run(Phase::Nomad).await?);
    }
    Ok(reports)
}

/// Token upkeep after the bootstrap, on Consul servers: recreates any role
/// token Consul has lost (see `Bootstrap::repair_tokens`). Other nodes
/// cannot (no management token) and do nothing.
pub async fn repair_tokens(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    store: &Store,
    secrets: &RenderSecrets,
) -> Result<Vec<&'static str>, BootError> {
    let Some(management) = secrets.initial_management.as_ref() else {
        return Ok(Vec::new());
    };
    if !spec.has(Role::ConsulServer) {
        return Ok(Vec::new());
    }
    let consul = crate::tls::consul_client(settings, Some(Token::new(management.expose())))?;
    let b = Bootstrap {
        consul,
        nomad: None,
        store,
        cluster: spec.cluster.clone(),
        node: node.to_owned(),
        lease: LeaseSettings::default(),
        crash_after: None,
    };
    Ok(b.repair_tokens().await?)
}

/// Waits, with backoff, until `name` exists in the store.
pub async fn wait_for_secret(
    store: &Store,
    name: &'static str,
    settings: &Settings,
) -> Result<Secret, BootError> {
    let deadline =
        std::time::Instant::now() + Duration::from_secs(settings.bootstrap.token_wait_secs);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    loop {
        if let Some(s) = store.get(name).await? {
            return Ok(s);
        }
        if std::time::Instant::now() >= deadline {
            return Err(BootError::Start(kraken_start::StartError::Timeout {
                what: format!("secret {name} to be created by the bootstrap"),
                waited: Duration::from_secs(settings.bootstrap.token_wait_secs),
                last: format!("absent at {}", store.location(name).unwrap_or_default()),
            }));
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

pub(crate) fn hashi_err(e: kraken_hashi::HashiError) -> BootError {
    BootError::Start(kraken_start::StartError::Command {
        command: "connect".into(),
        status: "bad address".into(),
        stderr: e.to_string(),
    })
}

/// Step 4, once.
pub async fn discover<S: PeerSource>(source: &S, spec: &NodeSpec) -> Result<Peers, BootError> {
    Ok(source.discover(&spec.cluster).await?)
}

/// Whether Consul and Nomad find their servers themselves (cloud auto-join
/// strings for every kind of server this node needs): then step 4 is
/// skipped and the configs carry the strings instead of addresses.
pub fn uses_cloud_auto_join(spec: &NodeSpec, settings: &Settings) -> bool {
    let needed = needed(spec);
    (needed.consul_servers == 0 || settings.discovery.consul_auto_join.is_some())
        && (needed.nomad_servers == 0 || settings.discovery.nomad_auto_join.is_some())
}

/// Step 4, until enough servers are found: refreshes with jittered
/// backoff, reporting each shortfall through `status`.
pub async fn discover_until_enough<S: PeerSource>(
    source: &S,
    spec: &NodeSpec,
    backoff: &mut Backoff,
    status: &(dyn Fn(&str) + Sync),
) -> Result<Peers, BootError> {
    let needed = needed(spec);
    loop {
        let result = discover(source, spec).await;
        let wait = match &result {
            Ok(peers) => match peers.shortfall(needed) {
                None => return result,
                Some(short) => {
                    let delay = backoff.next_delay();
                    status(&format!(
                        "waiting for servers of cluster {}: {short}; looking again in {}s",
                        spec.cluster,
                        delay.as_secs()
                    ));
                    delay
                }
            },
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                status(&format!("{e}; retrying in {}s", delay.as_secs()));
                delay
            }
            Err(_) => return result,
        };
        tokio::time::sleep(wait).await;
    }
}

/// Step 5: render every file this node needs.
pub fn render(
    identity: &Identity,
    spec: &NodeSpec,
    peers: &Peers,
    settings: &Settings,
    secrets: &RenderSecrets,
) -> Result<Vec<RenderedFile>, BootError> {
    let renderer = Renderer::new(settings.paths.templates_dir.as_deref())?;
    Ok(renderer.render(identity, spec, peers, settings, secrets)?)
}

/// Step 5: write the rendered files. With `out_dir`, into that directory
/// under their plain names and without changing owners (a dry run);
/// otherwise to their real paths, owned as configured.
pub fn install(
    files: &[RenderedFile],
    out_dir: Option<&Path>,
) -> Result<Vec<(Service, Change)>, BootError> {
    // Resolve every owner before writing anything: a missing user should
    // not leave half the configs new and half old.
    let mut targets = Vec::with_capacity(files.len());
    for file in files {
        match out_dir {
            Some(dir) => targets.push((dir.join(file.file_name()), None)),
            None => {
                let owner = kraken_render::resolve_owner(&file.path, &file.owner, &file.group)?;
                targets.push((file.path.clone(), Some(owner)));
            }
        }
    }
    let mut changes = Vec::with_capacity(files.len());
    for (file, (path, owner)) in files.iter().zip(targets) {
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|source| kraken_render::WriteError::Io {
                op: "create directory",
                path: parent.to_owned(),
                source,
            })?;
        }
        let change =
            kraken_render::write_atomic(&path, file.contents.as_bytes(), file.mode, owner)?;
        log::info!("{}: {change:?}", path.display());
        changes.push((file.service, change));
    }
    Ok(changes)
}

/// Step 6's plan: which units, and which must restart for new configs.
pub fn start_plan(
    spec: &NodeSpec,
    changes: &[(Service, Change)],
    settings: &Settings,
) -> StartPlan {
    let changed = |s: Service| {
        changes
            .iter()
            .any(|(svc, c)| *svc == s && c.needs_restart())
    };
    StartPlan {
        consul: ServiceStep {
            unit: settings.consul.unit.clone(),
            config_changed: changed(Service::Consul),
        },
        consul_server: spec.has(Role::ConsulServer),
        docker: settings.runs_docker(spec).then(|| ServiceStep {
            unit: settings.docker.unit.clone(),
            config_changed: changed(Service::Docker),
        }),
        nomad: spec.runs_nomad().then(|| ServiceStep {
            unit: settings.nomad.unit.clone(),
            config_changed: changed(Service::Nomad),
        }),
        nomad_server: spec.has(Role::NomadServer),
    }
}

pub fn deadlines(settings: &Settings) -> Deadlines {
    Deadlines {
        answer: Duration::from_secs(settings.start.answer_timeout_secs),
        leader: Duration::from_secs(settings.start.leader_timeout_secs),
        poll: Duration::from_millis(500),
    }
}

pub fn imds_settings(settings: &Settings) -> kraken_identity::ImdsSettings {
    kraken_identity::ImdsSettings {
        connect_timeout: Duration::from_millis(settings.imds.connect_timeout_ms),
        read_timeout: Duration::from_millis(settings.imds.read_timeout_ms),
        attempts: settings.imds.attempts,
    }
}

pub fn aws_settings(settings: &Settings) -> kraken_aws::AwsSettings {
    kraken_aws::AwsSettings {
        max_attempts: settings.aws.max_attempts,
        max_backoff: Duration::from_secs(settings.aws.max_backoff_secs),
        attempt_timeout: Duration::from_secs(settings.aws.attempt_timeout_secs),
        ..kraken_aws::AwsSettings::default()
    }
}

pub fn discovery_backoff(settings: &Settings) -> Backoff {
    Backoff::new(
        Duration::from_secs(settings.discovery.retry_min_secs),
        Duration::from_secs(settings.discovery.retry_max_secs),
    )
}
