//! The launching hook: the group puts the instance in service (and an
//! instance refresh moves on to the next one) only once this node really
//! serves. A server is a healthy voter in each of its quorums; a client's
//! Nomad node is ready and eligible. If that never happens the group's
//! timeout applies the hook's default result, which is what a node that
//! cannot join deserves.

use std::time::Duration;

use kraken_aws::HookResult;
use kraken_hashi::{AutopilotHealth, Token};
use kraken_intent::Role;
use kraken_secrets::{SecretStore, names};

use super::Context;
use crate::clients;

const POLL: Duration = Duration::from_secs(2);

/// Whether autopilot counts `node` as a healthy voter (Consul names
/// servers by node, Nomad by `<node>.<region>`).
pub fn healthy_voter(health: &AutopilotHealth, node: &str) -> bool {
    health
        .servers
        .iter()
        .any(|s| is_me(&s.name, node) && s.voter && s.healthy)
}

pub(crate) fn is_me(server_name: &str, node: &str) -> bool {
    server_name == node
        || server_name
            .strip_prefix(node)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// What is missing before this node serves, `None` once it does.
async fn not_yet(ctx: &Context) -> Option<String> {
    let node = &ctx.identity.instance_id;
    let token = |s: kraken_secrets::Secret| Some(Token::new(s.expose()));
    let read = |name| async move { ctx.store.get(name).await.ok().flatten() };
    if ctx.spec.has(Role::ConsulServer) {
        let consul = match clients::consul(
            &ctx.settings,
            read(names::CONSUL_SERVER).await.and_then(token),
        ) {
            Ok(c) => c,
            Err(e) => return Some(e.to_string()),
        };
        match consul.autopilot_health().await {
            Ok(h) if healthy_voter(&h, node) => {}
            Ok(_) => return Some("not yet a healthy Consul voter".into()),
            Err(e) => return Some(format!("Consul autopilot: {e}")),
        }
    }
    if ctx.spec.has(Role::NomadServer) {
        let nomad = match clients::nomad(
            &ctx.settings,
            read(names::NOMAD_AGENT).await.and_then(token),
        ) {
            Ok(c) => c,
            Err(e) => return Some(e.to_string()),
        };
        match nomad.autopilot_health().await {
            Ok(h) if healthy_voter(&h, node) => {}
            Ok(_) => return Some("not yet a healthy Nomad voter".into()),
            Err(e) => return Some(format!("Nomad autopilot: {e}")),
        }
    }
    if ctx.spec.has(Role::NomadClient) {
        let Some(drain) = read(names::NOMAD_DRAIN).await else {
            return Some(format!("no {} in the secret store yet", names::NOMAD_DRAIN));
        };
        let nomad = match clients::nomad(&ctx.settings, token(drain)) {
            Ok(c) => c,
            Err(e) => return Some(e.to_string()),
        };
        let found = match nomad.nodes().await {
            Ok(nodes) => nodes.into_iter().find(|n| &n.name == node),
            Err(e) => return Some(format!("Nomad nodes: {e}")),
        };
        let Some(found) = found else {
            return Some("the Nomad node is not registered yet".into());
        };
        match nomad.node_drain(&found.id).await {
            Ok(n) if n.eligible() => {}
            Ok(n) => {
                return Some(format!(
                    "the Nomad node is {} and {}",
                    n.status, n.eligibility
                ));
            }
            Err(e) => return Some(format!("Nomad node: {e}")),
        }
    }
    None
}

/// Waits until the node serves, then completes the launching hook. Returns
/// what happened, for the status file.
pub async fn complete(ctx: Context) -> String {
    let Some(hooks) = ctx.hooks.clone() else {
        return "no autoscaling group: nothing to complete".into();
    };
    let started = std::time::Instant::now();
    let mut last = String::new();
    while let Some(missing) = not_yet(&ctx).await {
        if missing != last {
            log::info!("lifecycle: launching hook waits: {missing}");
            last = missing;
        }
        tokio::time::sleep(POLL).await;
    }
    log::info!(
        "lifecycle: the node serves ({}s after the watch began); completing {}",
        started.elapsed().as_secs(),
        hooks.launching
    );
    hooks.complete(&hooks.launching, HookResult::Continue).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_consul_and_nomad_forms_only() {
        assert!(is_me("i-0abc", "i-0abc"));
        assert!(is_me("i-0abc.global", "i-0abc"));
        assert!(!is_me("i-0abcd.global", "i-0abc"));
        assert!(!is_me("i-0ab", "i-0abc"));
    }
}
