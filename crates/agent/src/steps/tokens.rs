//! Step 7, second half: this node's own tokens, from the secret store into
//! the configs. The Consul agent token is the Consul servers' shared one on
//! Consul servers, and the node's own on every other node
//! (`steps::node_tokens`).
//!
//! A role token's secret is stored before Consul knows the token (the
//! bootstrap is write-ahead), and Nomad exits at start on a Consul token
//! Consul refuses ("ACL not found"). So a token is taken once Consul knows
//! it, and Nomad starts only then: once, with its token.

use std::time::{Duration, Instant};

use kraken_bootstrap::{State, sha256_hex};
use kraken_discovery::Backoff;
use kraken_hashi::{Consul, Token};
use kraken_intent::{NodeSpec, Role};
use kraken_render::RenderSecrets;
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;

use crate::steps::node_tokens;
use crate::steps::secrets::{
    agent_token_from, agent_token_source, nomad_role_token, wait_for_secret,
};
use crate::{BootError, tuning};

/// Whether this node has every token its role installs.
pub fn has_role_tokens(spec: &NodeSpec, secrets: &RenderSecrets) -> bool {
    secrets.consul_agent.is_some() && (!spec.runs_nomad() || secrets.nomad_consul.is_some())
}

/// Waits until the bootstrap has stored this node's tokens and Consul
/// knows them, and puts them in `secrets`. False when they were there
/// already (nothing to do). `node` is this node's name (its instance id):
/// every node but a Consul server has an agent token of its own, made by
/// the Consul leader's agent once this node's Consul has joined
/// (`steps::node_tokens`).
pub async fn fetch(
    store: &Store,
    spec: &NodeSpec,
    node: &str,
    settings: &Settings,
    consul: &Consul,
    secrets: &mut RenderSecrets,
) -> Result<bool, BootError> {
    if has_role_tokens(spec, secrets) {
        return Ok(false);
    }
    let source = agent_token_source(spec);
    let agent = agent_token_from(spec, node, wait_for_secret(store, source, settings).await?);
    // A node's own token is made within about a second of its Consul
    // joining (`steps::node_tokens`): asked often, of its own Consul.
    if node_tokens::has_own_token(spec) {
        let what = format!(
            "this node's own agent token (derived from {source}; the Consul leader's agent \
             makes it once this node's Consul joined)"
        );
        // At most one RPC to a server a quarter second while a node joins.
        let backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        wait_known(consul, &what, &agent, settings, backoff).await?;
    } else {
        wait_until_known(consul, source, &agent, settings).await?;
    }
    secrets.consul_agent = Some(agent);
    if let Some(name) = nomad_role_token(spec) {
        let token = wait_for_secret(store, name, settings).await?;
        wait_until_known(consul, name, &token, settings).await?;
        secrets.nomad_consul = Some(token);
    }
    Ok(true)
}

/// Re-reads this node's tokens from the store: a rotated secret
/// (`docs/operations.md`) reaches every holder this way. A token missing
/// from the store keeps its current value (the rotation's new one is on
/// its way). True if any changed.
///
/// `state` is the bootstrap state as Consul holds it, when readable: it
/// records the SHA-256 of the secret each role token was made with, so a
/// node whose tokens all match it has nothing to read, and the secret
/// store sees a fleet's reads only after a rotation. A node's own agent
/// token is not in the state: `consul` asks Consul whether it still knows
/// it (a node gone past the grace and back has a new one), and the store
/// is read only when it does not.
pub async fn refresh(
    store: &Store,
    spec: &NodeSpec,
    node: &str,
    consul: Option<&Consul>,
    secrets: &mut RenderSecrets,
    state: Option<&State>,
) -> Result<bool, BootError> {
    let own_unknown = match (node_tokens::has_own_token(spec), &secrets.consul_agent) {
        (false, _) => false,
        (true, None) => true,
        (true, Some(held)) => match consul {
            Some(c) => matches!(
                c.with_token(Some(Token::new(held.expose())))
                    .acl_token_self()
                    .await,
                Ok(None)
            ),
            None => state.is_none(),
        },
    };
    if !own_unknown
        && let Some(state) = state
        && current(spec, secrets, state)
    {
        return Ok(false);
    }
    let mut changed = false;
    let mut take = |slot: &mut Option<Secret>, new: Option<Secret>| {
        if let Some(new) = new
            && slot.as_ref() != Some(&new)
        {
            *slot = Some(new);
            changed = true;
        }
    };
    // One batched read for both.
    let wanted: Vec<&str> = std::iter::once(agent_token_source(spec))
        .chain(nomad_role_token(spec))
        .collect();
    let mut read = store.get_many(&wanted).await?.into_iter();
    let agent = read.next().flatten();
    take(
        &mut secrets.consul_agent,
        agent.map(|s| agent_token_from(spec, node, s)),
    );
    if nomad_role_token(spec).is_some() {
        take(&mut secrets.nomad_consul, read.next().flatten());
    }
    Ok(changed)
}

/// Whether every role token this node holds is the one the bootstrap
/// state records (same secret digest). A token the state does not record
/// is not known to be current. A node's own agent token is not a role
/// token (`refresh` asks Consul about it).
fn current(spec: &NodeSpec, secrets: &RenderSecrets, state: &State) -> bool {
    let matches = |name: &str, held: &Option<Secret>| {
        held.as_ref().is_some_and(|s| {
            state
                .tokens
                .get(name)
                .is_some_and(|r| r.secret_sha256 == sha256_hex(s.expose()))
        })
    };
    (node_tokens::has_own_token(spec) || matches(names::CONSUL_AGENT, &secrets.consul_agent))
        && nomad_role_token(spec).is_none_or(|name| matches(name, &secrets.nomad_consul))
}

/// What a server's token check reads every time: its own tokens, and on
/// Consul servers the role tokens the upkeep checks. A client's check
/// reads nothing unless its tokens were rotated (`steps::tokens::refresh`).
pub fn check_names(spec: &NodeSpec) -> Vec<&'static str> {
    let mut names = Vec::new();
    if crate::steps::follow::is_server(spec) {
        names.push(names::CONSUL_SERVER);
    }
    if spec.has(Role::NomadServer) {
        names.push(names::NOMAD_AGENT);
        // The Nomad leader's upkeep (workload identity, teams).
        names.push(names::NOMAD_MANAGEMENT);
    }
    if spec.has(Role::ConsulServer) {
        names.extend(kraken_bootstrap::ROLE_TOKENS.map(|(name, _, _)| name));
    }
    names
}

/// Polls until Consul accepts `token` (created by the bootstrap after its
/// secret was stored), for as long as a secret may take to appear.
pub async fn wait_until_known(
    consul: &Consul,
    name: &str,
    token: &Secret,
    settings: &Settings,
) -> Result<(), BootError> {
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let what = format!("the token {name} (the bootstrap makes it)");
    wait_known(consul, &what, token, settings, backoff).await
}

async fn wait_known(
    consul: &Consul,
    what: &str,
    token: &Secret,
    settings: &Settings,
    mut backoff: Backoff,
) -> Result<(), BootError> {
    let waited = tuning::secret_wait(settings);
    let deadline = Instant::now() + waited;
    let consul = consul.with_token(Some(Token::new(token.expose())));
    loop {
        let last = match consul.acl_token_self().await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => "ACL not found".to_owned(),
            Err(e) if e.is_transient() => e.to_string(),
            Err(e) => return Err(BootError::hashi("check a role token with Consul")(e)),
        };
        if Instant::now() >= deadline {
            return Err(BootError::Start(kraken_start::StartError::Timeout {
                what: format!("Consul to know {what}"),
                waited,
                last,
            }));
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_bootstrap::TokenRecord;

    fn record(secret: &str) -> TokenRecord {
        TokenRecord {
            accessor: "a".into(),
            secret_sha256: sha256_hex(secret),
        }
    }

    #[test]
    fn tokens_are_current_only_when_every_held_one_matches_the_state() {
        let spec = |roles: &str| {
            let tags = [("kraken:cluster", "blue"), ("kraken:roles", roles)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            NodeSpec::from_tags(&tags, &Settings::default().intent).unwrap()
        };
        let server = spec("consul-server,nomad-client");
        let held = RenderSecrets {
            consul_agent: Some(Secret::new("agent-1")),
            nomad_consul: Some(Secret::new("client-1")),
            ..Default::default()
        };
        let mut state = State::default();
        assert!(!current(&server, &held, &state), "nothing recorded");
        state
            .tokens
            .insert(names::CONSUL_AGENT.into(), record("agent-1"));
        assert!(
            !current(&server, &held, &state),
            "the Nomad one not recorded"
        );
        state
            .tokens
            .insert(names::CONSUL_NOMAD_CLIENT.into(), record("client-1"));
        assert!(current(&server, &held, &state));
        // A client's agent token is its own: the shared one's record is
        // not about it.
        let client = spec("nomad-client");
        state
            .tokens
            .insert(names::CONSUL_AGENT.into(), record("agent-2"));
        assert!(current(&client, &held, &state));
        // Rotated: the state records the new secret's digest.
        assert!(!current(&server, &held, &state));
        let none = RenderSecrets::default();
        assert!(!current(&server, &none, &state), "nothing held");
        assert!(!current(&client, &none, &state), "nothing held");
    }
}
