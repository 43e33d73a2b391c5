//! Step 3: the cluster secrets this node's configs carry.

use std::time::{Duration, Instant};

use kraken_discovery::Backoff;
use kraken_intent::{NodeSpec, Role};
use kraken_render::RenderSecrets;
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;

use crate::steps::{discovery, follow, node_tokens, pki};
use crate::{BootError, tuning};

/// How step 3 treats a missing cluster-wide secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsMode {
    /// `run`: Consul servers create missing cluster secrets (first writer
    /// wins); other nodes, which IAM does not let write, wait for them.
    Boot,
    /// `render` and `doctor`: read what exists, create nothing.
    ReadOnly,
}

/// The gossip key, on Consul servers the initial-management token, on
/// Nomad servers Nomad's gossip key, and the role tokens the bootstrap
/// creates, if they exist yet.
pub async fn secrets(
    store: &Store,
    spec: &NodeSpec,
    node: &str,
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
    let mut consul_agent = own_agent_token(store, spec, node).await?;
    if mode == SecretsMode::Boot
        && node_tokens::has_own_token(spec)
        && let Some(token) = &consul_agent
    {
        // A derived token exists before Consul knows it: the configs carry
        // it only once Consul does (`tokens::fetch` waits for that). Asked
        // of the local Consul, when it runs (the agent restarted, not the
        // node): then it keeps its token and is not restarted without it.
        let known = match crate::clients::consul(settings, None) {
            Ok(c) => matches!(
                c.with_token(Some(kraken_hashi::Token::new(token.expose())))
                    .acl_token_self()
                    .await,
                Ok(Some(_))
            ),
            Err(_) => false,
        };
        if !known {
            consul_agent = None;
        }
    }
    Ok(RenderSecrets {
        gossip_key,
        nomad_gossip_key,
        initial_management,
        consul_agent,
        nomad_consul,
    })
}

/// Where this node's Consul agent token comes from: the Consul servers'
/// shared one (stored), or, on every other node, the key its own is
/// derived from (`steps::node_tokens`).
pub fn agent_token_source(spec: &NodeSpec) -> &'static str {
    if node_tokens::has_own_token(spec) {
        names::NODE_TOKEN_KEY
    } else {
        names::CONSUL_AGENT
    }
}

/// This node's Consul agent token, if its source is in the store: the
/// servers' shared one, or the node's own derived from the node-token key
/// and its name, the instance id (`node`). Whether Consul knows it yet is
/// another matter (`tokens::wait_until_known`).
pub async fn own_agent_token(
    store: &Store,
    spec: &NodeSpec,
    node: &str,
) -> Result<Option<Secret>, BootError> {
    let stored = store.get(agent_token_source(spec)).await?;
    Ok(stored.map(|s| agent_token_from(spec, node, s)))
}

/// The agent token from what [`agent_token_source`] names.
pub fn agent_token_from(spec: &NodeSpec, node: &str, source: Secret) -> Secret {
    if node_tokens::has_own_token(spec) {
        Secret::derived_token(&source, node)
    } else {
        source
    }
}

/// Every name step 3 reads on this node named `node` (its secrets, its
/// intermediates with TLS on, and on a client the published server list),
/// for one batched read ([`Store::snapshot`]): a client booting into a
/// running cluster makes one SSM transaction. Only names this node's role
/// may read (`docs/secrets.md`): SSM refuses a whole batch for one denied
/// name.
pub fn boot_names(spec: &NodeSpec, settings: &Settings) -> Vec<String> {
    let mut names = vec![
        names::GOSSIP_KEY.to_owned(),
        agent_token_source(spec).to_owned(),
    ];
    names.extend(role_names(spec, settings).into_iter().map(str::to_owned));
    names
}

fn role_names(spec: &NodeSpec, settings: &Settings) -> Vec<&'static str> {
    let mut names = Vec::new();
    let consul_server = spec.has(Role::ConsulServer);
    if consul_server {
        names.push(names::CONSUL_INITIAL_MANAGEMENT);
    }
    if spec.has(Role::NomadServer) {
        names.push(names::NOMAD_GOSSIP_KEY);
    }
    names.extend(nomad_role_token(spec));
    if settings.tls.enabled {
        if consul_server {
            // The CA and every intermediate: a Consul server makes any
            // that is missing.
            names.push(names::PKI_CA);
            names.extend(kraken_pki::Authority::ALL.map(pki::secret_name));
        } else {
            names.push(pki::secret_name(pki::consul_authority(spec)));
            names.extend(pki::nomad_authority(spec).map(pki::secret_name));
        }
    }
    if !follow::is_server(spec) && !discovery::uses_cloud_auto_join(spec, settings) {
        names.push(names::SERVERS);
    }
    names
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

/// Waits, with backoff, until `name` exists in the store: a secret another
/// node makes (the gossip key, the role tokens of the bootstrap).
pub async fn wait_for_secret(
    store: &Store,
    name: &str,
    settings: &Settings,
) -> Result<Secret, BootError> {
    let waited = tuning::secret_wait(settings);
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    poll_until(store, name, Instant::now() + waited, waited, backoff).await
}

async fn poll_until(
    store: &Store,
    name: &str,
    deadline: Instant,
    waited: Duration,
    mut backoff: Backoff,
) -> Result<Secret, BootError> {
    loop {
        if let Some(s) = store.get(name).await? {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(BootError::SecretAbsent {
                name: name.to_owned(),
                location: store.location(name).unwrap_or_default(),
                waited,
            });
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
