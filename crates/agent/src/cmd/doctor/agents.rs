//! The Consul and Nomad agents on this node: do they answer, is there a
//! leader, and what only each can tell (Consul's servers and this node's
//! token; Nomad's own health and its management token).

use kraken_hashi::{HashiError, Token};
use kraken_intent::Role;
use kraken_secrets::names;

use super::check::{Check, Context, Level};
use crate::clients;

/// The shape the Consul and Nomad checks share: an agent that answers,
/// a leader, then what only that service can tell.
struct Agent {
    name: &'static str,
    title: &'static str,
    servers: u8,
    no_leader_cause: &'static str,
    no_leader_next: &'static str,
}

impl Agent {
    fn client_failed(&self, e: impl std::fmt::Display) -> Check {
        Check::bad(
            self.name,
            Level::Fail,
            e.to_string(),
            format!(
                "{}.http_addr is wrong or the TLS files are unreadable",
                self.name
            ),
            "check /etc/kraken/agent.toml",
        )
    }

    /// The leader, or the check that says why there is none.
    fn leader(&self, answer: Result<Option<String>, HashiError>) -> Result<String, Check> {
        match answer {
            Ok(Some(leader)) => Ok(leader),
            Ok(None) => Err(Check::bad(
                self.name,
                Level::Fail,
                format!("{} answers but there is no Raft leader", self.title),
                format!(
                    "fewer than a quorum of the {} {} servers are up{}",
                    self.servers, self.title, self.no_leader_cause
                ),
                self.no_leader_next,
            )),
            Err(e) => Err(Check::bad(
                self.name,
                Level::Fail,
                e.to_string(),
                format!(
                    "{} is stopped or not listening where the agent expects",
                    self.title
                ),
                format!("systemctl status {0}; journalctl -u {0} -n 50", self.name),
            )),
        }
    }
}

/// How long a token lives, as its ExpirationTime says.
fn token_life(expiration: Option<&str>) -> String {
    expiration
        .map(|e| format!("expires {e}"))
        .unwrap_or_else(|| "does not expire".into())
}

pub(super) async fn consul(ctx: &mut Context<'_>) -> Check {
    let agent = Agent {
        name: "consul",
        title: "Consul",
        servers: ctx.spec().consul_servers,
        no_leader_cause: ", or they cannot reach each other on 8300/8301",
        no_leader_next: "consul operator raft list-peers; consul members",
    };
    let secrets = ctx.secrets.as_ref();
    let token = |s: Option<&kraken_secrets::Secret>| s.map(|t| Token::new(t.expose()));
    let management =
        secrets.and_then(|s| token(s.initial_management.as_ref().or(s.consul_agent.as_ref())));
    let agent_token = secrets.and_then(|s| token(s.consul_agent.as_ref()));
    let consul = match clients::consul(ctx.settings, management) {
        Ok(c) => c,
        Err(e) => return agent.client_failed(e),
    };
    let leader = match agent.leader(consul.leader().await) {
        Ok(l) => l,
        Err(check) => return check,
    };
    let mut finding = format!("leader {leader}");
    match consul.members().await {
        Ok(members) => {
            let servers: Vec<_> = members.iter().filter(|m| m.is_server()).collect();
            let alive = servers.iter().filter(|m| m.is_alive()).count();
            finding.push_str(&format!(
                ", {alive} of {} expected servers alive, {} members",
                agent.servers,
                members.len()
            ));
            if alive < usize::from(agent.servers) {
                return Check::bad(
                    "consul",
                    Level::Warn,
                    finding,
                    "a Consul server is down or was replaced and not yet joined",
                    "consul members; consul operator raft list-peers",
                );
            }
        }
        Err(e) => finding.push_str(&format!(", members unknown ({e})")),
    }
    // This node's own token: does Consul still know it, and for how long?
    let Some(t) = agent_token else {
        return Check::bad(
            "consul",
            Level::Warn,
            format!("{finding}; this node has no agent token yet"),
            "the bootstrap has not created it",
            "see the bootstrap check",
        );
    };
    let own = crate::steps::node_tokens::has_own_token(ctx.spec());
    let node = ctx.identity().instance_id.clone();
    match consul.with_token(Some(t)).acl_token_self().await {
        // A node that is not a Consul server runs with its own node
        // identity and nothing more: any other token (the servers' shared
        // one, another node's) can act as other nodes.
        Ok(Some(tok)) if own && !is_own_node_token(&tok, &node) => Check::bad(
            "consul",
            Level::Warn,
            format!(
                "{finding}; this node's agent token ({}) is not its own node identity {node} \
                 (identities {:?})",
                tok.accessor_id,
                tok.node_identities
                    .iter()
                    .map(|n| n.node_name.as_str())
                    .collect::<Vec<_>>()
            ),
            "the token was made by hand, or the node carries another node's token",
            "consul acl token read -self; delete that token in Consul and restart kraken-agent \
             (this node's own is derived from consul/node-token-key; the Consul leader's agent \
             makes it within a second of seeing the node)",
        ),
        Ok(Some(tok)) => Check::ok(
            "consul",
            format!(
                "{finding}; agent token valid, {}",
                token_life(tok.expiration_time.as_deref())
            ),
        ),
        Ok(None) => Check::bad(
            "consul",
            Level::Fail,
            format!("{finding}; Consul does not know this node's agent token"),
            "the token was deleted in Consul: a deleted role token stays deleted until its stored secret is rotated (docs/operations.md, Rotating a role token)",
            "consul acl token list | grep kraken; journalctl -u kraken-agent | grep 'stays deleted'",
        ),
        Err(e) => Check::bad(
            "consul",
            Level::Warn,
            format!("{finding}; cannot check the agent token: {e}"),
            "Consul is answering with errors",
            "journalctl -u consul -n 50",
        ),
    }
}

/// Whether `token` is the node token the Consul leader's agent makes for
/// `node`: that node's identity alone.
fn is_own_node_token(token: &kraken_hashi::AclToken, node: &str) -> bool {
    kraken_bootstrap::node_of(token) == Some(node)
}

pub(super) async fn nomad(ctx: &mut Context<'_>) -> Check {
    let agent = Agent {
        name: "nomad",
        title: "Nomad",
        servers: ctx.spec().nomad_servers,
        no_leader_cause: "",
        no_leader_next: "nomad server members",
    };
    // On Nomad servers the management token, to show its life.
    let management = if ctx.spec().has(Role::NomadServer) {
        ctx.stored_token(names::NOMAD_MANAGEMENT).await
    } else {
        None
    };
    let nomad = match clients::nomad(ctx.settings, None) {
        Ok(n) => n,
        Err(e) => return agent.client_failed(e),
    };
    let leader = match agent.leader(nomad.leader().await) {
        Ok(l) => l,
        Err(check) => return check,
    };
    let health = match nomad.agent_health().await {
        Ok(h) => h,
        Err(e) => {
            return Check::bad(
                "nomad",
                Level::Warn,
                format!("leader {leader}; health unknown: {e}"),
                "Nomad answers with errors",
                "journalctl -u nomad -n 50",
            );
        }
    };
    let unhealthy: Vec<String> = ["server", "client"]
        .iter()
        .filter(|k| health[**k].is_object() && health[**k]["ok"] != true)
        .map(|k| {
            format!(
                "{k}: {}",
                health[*k]["message"].as_str().unwrap_or("not ok")
            )
        })
        .collect();
    if !unhealthy.is_empty() {
        return Check::bad(
            "nomad",
            Level::Fail,
            format!("leader {leader}; {}", unhealthy.join(", ")),
            "this Nomad agent reports itself unhealthy",
            "nomad node status -self; journalctl -u nomad -n 50",
        );
    }
    let mut finding = format!("leader {leader}; this agent healthy");
    if let Some(token) = management {
        match nomad.with_token(Some(token)).acl_token_self().await {
            Ok(Some(t)) => finding.push_str(&format!(
                "; management token valid, {}",
                token_life(t["ExpirationTime"].as_str())
            )),
            Ok(None) => {
                return Check::bad(
                    "nomad",
                    Level::Fail,
                    format!(
                        "{finding}; Nomad does not know the management token in the secret store"
                    ),
                    "the token was deleted in Nomad",
                    "nomad acl token list; docs/operations.md (Nomad was bootstrapped by hand)",
                );
            }
            Err(e) => finding.push_str(&format!("; management token unknown ({e})")),
        }
    }
    Check::ok("nomad", finding)
}
