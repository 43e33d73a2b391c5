//! Step 3: the cluster secrets this node's configs carry.

use std::time::{Duration, Instant};

use kraken_discovery::Backoff;
use kraken_hashi::Consul;
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
    Ok(RenderSecrets {
        gossip_key,
        nomad_gossip_key,
        initial_management,
        consul_agent: store.get(&agent_token_name(spec, node)).await?,
        nomad_consul,
    })
}

/// Where this node's Consul agent token is stored: the Consul servers'
/// shared one, or the node's own (made by the Consul leader's agent with
/// the node's identity, `steps::node_tokens`) on every other node, by its
/// name, the instance id.
pub fn agent_token_name(spec: &NodeSpec, node: &str) -> String {
    if node_tokens::has_own_token(spec) {
        names::consul_node_token(node)
    } else {
        names::CONSUL_AGENT.to_owned()
    }
}

/// Every name step 3 reads on this node named `node` (its secrets, its
/// intermediates with TLS on, and on a client the published server list),
/// for one batched read ([`Store::snapshot`]): a client booting into a
/// running cluster makes one SSM transaction. Only names this node's role
/// may read (`docs/secrets.md`): SSM refuses a whole batch for one denied
/// name.
pub fn boot_names(spec: &NodeSpec, settings: &Settings, node: &str) -> Vec<String> {
    let mut names = vec![names::GOSSIP_KEY.to_owned(), agent_token_name(spec, node)];
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

/// This node's own Consul agent token (`steps::node_tokens`): the Consul
/// leader's agent makes and stores it within about a second of seeing this
/// node join. So the store is read once a second from about then (when
/// this node's Consul, asked locally and for free, sees a leader) for
/// [`OWN_TOKEN_FAST_READS`] reads, then with the backoff of any secret. A
/// blind backoff read it up to 8 s late; a steady read from the start
/// would cost a booting fleet one read a second while its servers are not
/// there yet.
pub async fn wait_for_own_token(
    store: &Store,
    name: &str,
    consul: &Consul,
    settings: &Settings,
) -> Result<Secret, BootError> {
    let waited = tuning::secret_wait(settings);
    let deadline = Instant::now() + waited;
    while !matches!(consul.leader().await, Ok(Some(_))) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The leader's next look at its members, and its store write.
    tokio::time::sleep(OWN_TOKEN_FIRST_READ).await;
    for _ in 0..OWN_TOKEN_FAST_READS {
        if let Some(s) = store.get(name).await? {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(15));
    poll_until(store, name, deadline, waited, backoff).await
}

/// After this node's Consul sees a leader, when its own token is first
/// read: the leader looks at its members every second.
const OWN_TOKEN_FIRST_READ: Duration = Duration::from_millis(1500);

/// Reads a second apart before the backoff: a leader that has not made the
/// token in this long is not there or not done bootstrapping.
const OWN_TOKEN_FAST_READS: u32 = 10;

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
