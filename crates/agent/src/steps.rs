//! The boot steps, each implemented once.

use std::path::Path;
use std::time::Duration;

use kraken_discovery::{Backoff, Needed, PeerSource, Peers};
use kraken_identity::{Identity, IdentityProvider};
use kraken_intent::{NodeSpec, Role, Settings};
use kraken_render::{Change, RenderedFile, Renderer, Service};
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

/// Step 4, once.
pub async fn discover<S: PeerSource>(source: &S, spec: &NodeSpec) -> Result<Peers, BootError> {
    Ok(source.discover(&spec.cluster).await?)
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
) -> Result<Vec<RenderedFile>, BootError> {
    let renderer = Renderer::new(settings.paths.templates_dir.as_deref())?;
    Ok(renderer.render(identity, spec, peers, settings)?)
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
        docker: spec.has(Role::NomadClient).then(|| ServiceStep {
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
