//! Checks of this node's part in the cluster: its secrets, configs and
//! units, and the bootstrap.

use kraken_hashi::Token;
use kraken_intent::Role;
use kraken_render::RenderedFile;
use kraken_secrets::{SecretStore, names};
use kraken_start::{ServiceManager, Systemctl};

use super::check::{Check, Context, DEADLINE, Level};
use crate::clients;
use crate::steps::pki;
use crate::steps::render::render;
use crate::steps::secrets::{
    SecretsMode, agent_token_source, nomad_role_token, secrets as read_secrets,
};

pub(super) async fn secrets(ctx: &mut Context<'_>) -> Check {
    let (spec, settings) = (ctx.spec(), ctx.settings);
    let store = match &ctx.aws().store {
        Ok(store) => store,
        Err(e) => {
            return Check::bad(
                "secrets",
                Level::Fail,
                e.to_string(),
                "the [secrets] settings are invalid",
                "fix /etc/kraken/agent.toml (docs/configuration.md)",
            );
        }
    };
    let node = ctx.identity().instance_id.clone();
    let read = tokio::time::timeout(
        DEADLINE,
        read_secrets(store, spec, &node, settings, SecretsMode::ReadOnly),
    )
    .await;
    let s = match read {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Check::bad(
                "secrets",
                Level::Fail,
                e.to_string(),
                "this node's role may not read its secrets",
                "compare the instance role with docs/secrets.md",
            );
        }
        Err(_) => {
            return Check::bad(
                "secrets",
                Level::Fail,
                "the secret store did not answer",
                "SSM unreachable or throttling",
                "aws ssm describe-parameters --max-items 1",
            );
        }
    };
    let mut missing: Vec<String> = Vec::new();
    let mut missing_name = |n: &str| missing.push(n.to_owned());
    if s.gossip_key.is_none() {
        missing_name(names::GOSSIP_KEY);
    }
    if spec.has(Role::ConsulServer) && s.initial_management.is_none() {
        missing_name(names::CONSUL_INITIAL_MANAGEMENT);
    }
    if spec.has(Role::NomadServer) && s.nomad_gossip_key.is_none() {
        missing_name(names::NOMAD_GOSSIP_KEY);
    }
    if s.consul_agent.is_none() {
        missing_name(agent_token_source(spec));
    }
    if let Some(name) = nomad_role_token(spec)
        && s.nomad_consul.is_none()
    {
        missing_name(name);
    }
    // The intermediates this node issues its certificates with.
    if settings.tls.enabled {
        let authorities =
            std::iter::once(pki::consul_authority(spec)).chain(pki::nomad_authority(spec));
        for authority in authorities {
            let name = pki::secret_name(authority);
            if matches!(store.get(name).await, Ok(None)) {
                missing.push(name.to_owned());
            }
        }
    }
    let check = if missing.is_empty() {
        Check::ok(
            "secrets",
            "every secret this node's role needs is in the store",
        )
    } else {
        Check::bad(
            "secrets",
            Level::Warn,
            format!("not in the store yet: {}", missing.join(", ")),
            "the cluster bootstrap has not finished (see the bootstrap check)",
            format!(
                "aws ssm get-parameters-by-path --path /{}/{} --recursive --query 'Parameters[].Name'",
                settings.secrets.ssm_prefix, spec.cluster
            ),
        )
    };
    ctx.secrets = Some(s);
    check
}

/// Drift: what is on disk against what the agent would write now.
pub(super) fn configs(ctx: &mut Context<'_>) -> Check {
    let (Some(peers), Some(secrets)) = (&ctx.peers, &ctx.secrets) else {
        return Check::skip(
            "configs",
            "peers or secrets unknown: cannot render for comparison",
        );
    };
    let files: Vec<RenderedFile> =
        match render(ctx.identity(), ctx.spec(), peers, ctx.settings, secrets) {
            Ok(f) => f,
            Err(e) => {
                return Check::bad(
                    "configs",
                    Level::Fail,
                    e.to_string(),
                    "a template override is broken",
                    "kraken-agent render --out /tmp/kraken-plan",
                );
            }
        };
    let mut missing = Vec::new();
    let mut drifted = Vec::new();
    let mut modes = Vec::new();
    for f in &files {
        match std::fs::read(&f.path) {
            Err(_) => missing.push(f.path.display().to_string()),
            Ok(bytes) => {
                if bytes != f.contents.as_bytes() {
                    drifted.push(f.path.display().to_string());
                }
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(&f.path)
                    && meta.permissions().mode() & 0o777 != f.mode
                {
                    modes.push(format!(
                        "{} is {:04o}, not {:04o}",
                        f.path.display(),
                        meta.permissions().mode() & 0o777,
                        f.mode
                    ));
                }
            }
        }
    }
    if !missing.is_empty() {
        Check::bad(
            "configs",
            Level::Fail,
            format!("missing: {}", missing.join(", ")),
            "the agent has not rendered this node yet, or it failed before writing",
            "journalctl -u kraken-agent -n 50",
        )
    } else if !drifted.is_empty() || !modes.is_empty() {
        let mut what = Vec::new();
        if !drifted.is_empty() {
            what.push(format!(
                "differ from what the agent renders now: {}",
                drifted.join(", ")
            ));
        }
        what.extend(modes);
        Check::bad(
            "configs",
            Level::Warn,
            what.join("; "),
            "edited by hand, or peers/secrets changed since the last render",
            "kraken-agent render --out /tmp/kraken-plan && diff -r /tmp/kraken-plan <config dir>; systemctl restart kraken-agent to re-render",
        )
    } else {
        Check::ok(
            "configs",
            format!("{} files present, modes right, no drift", files.len()),
        )
    }
}

pub(super) async fn units(ctx: &mut Context<'_>) -> Check {
    let (spec, settings) = (ctx.spec(), ctx.settings);
    let manager = Systemctl::new(&settings.start.systemctl);
    let mut units = vec![settings.consul.unit.as_str()];
    if spec.runs_docker(&settings.docker) {
        units.push(settings.docker.unit.as_str());
    }
    if spec.runs_nomad() {
        units.push(settings.nomad.unit.as_str());
    }
    let mut bad = Vec::new();
    let mut log = Vec::new();
    for unit in &units {
        match manager.describe(unit).await {
            Ok(state) if state.enabled == "enabled" && state.active == "active" => {}
            Ok(state) => {
                bad.push(format!("{unit} is {} and {}", state.enabled, state.active));
                // systemd's own lines already begin with the unit's name.
                log.extend(state.recent_log.iter().map(|l| {
                    if l.starts_with(&format!("{unit}:")) {
                        l.clone()
                    } else {
                        format!("{unit}: {l}")
                    }
                }));
            }
            Err(e) => bad.push(format!("{unit}: {e}")),
        }
    }
    if bad.is_empty() {
        return Check::ok("units", format!("{} enabled and active", units.join(", ")));
    }
    let cause = if log.is_empty() {
        "the unit is stopped, or the agent has not started it yet".to_owned()
    } else {
        format!("last log lines: {}", log.join(" | "))
    };
    Check::bad(
        "units",
        Level::Fail,
        bad.join("; "),
        cause,
        format!(
            "systemctl status {}; journalctl -u {} -n 50",
            units.join(" "),
            units[0]
        ),
    )
}

pub(super) async fn bootstrap(ctx: &mut Context<'_>) -> Check {
    let spec = ctx.spec();
    // The state is readable with the management token (Consul servers) or
    // the Nomad servers' token; other roles see the outcome, not the state.
    let management = ctx.secrets.as_ref().and_then(|s| {
        s.initial_management
            .as_ref()
            .map(|t| Token::new(t.expose()))
    });
    let token = match management {
        Some(t) if spec.has(Role::ConsulServer) => Some(t),
        _ if spec.has(Role::NomadServer) => ctx.stored_token(names::CONSUL_NOMAD_SERVER).await,
        _ => None,
    };
    let Some(token) = token else {
        return Check::skip(
            "bootstrap",
            "this role cannot read the bootstrap state; the secrets check shows its outcome",
        );
    };
    let Ok(consul) = clients::consul(ctx.settings, Some(token)) else {
        return Check::skip("bootstrap", "consul.http_addr is not valid");
    };
    let key = format!("kraken/{}/bootstrap/", spec.cluster);
    let state = consul.kv_get(&format!("{key}state"), None).await;
    let lock = consul.kv_get(&format!("{key}lock"), None).await;
    let (state, lock) = match (state, lock) {
        (Ok((state, _)), Ok((lock, _))) => (state, lock),
        (Err(e), _) | (_, Err(e)) => {
            return Check::bad(
                "bootstrap",
                Level::Warn,
                format!("cannot read the bootstrap state: {e}"),
                "Consul unreachable or the token lacks access",
                format!("consul kv get {key}state"),
            );
        }
    };
    let state: kraken_bootstrap::State = state
        .and_then(|p| serde_json::from_slice(&p.value).ok())
        .unwrap_or_default();
    let done = kraken_bootstrap::Step::ALL
        .iter()
        .filter(|s| state.is_done(**s))
        .count();
    let holder = lock
        .filter(|p| p.session.is_some())
        .map(|p| String::from_utf8_lossy(&p.value).into_owned());
    let total = kraken_bootstrap::Step::ALL.len();
    match (done == total, holder) {
        (true, _) => Check::ok(
            "bootstrap",
            format!("done ({})", state.log.last().cloned().unwrap_or_default()),
        ),
        (false, Some(h)) => Check::bad(
            "bootstrap",
            Level::Warn,
            format!("in progress: {done} of {total} steps, lease held by {h}"),
            "a node is bootstrapping the cluster now",
            format!("consul kv get {key}state   (again in a minute)"),
        ),
        (false, None) => Check::bad(
            "bootstrap",
            Level::Warn,
            format!("{done} of {total} steps done and nobody holds the lease"),
            "no server has run the bootstrap yet, or the last holder failed; its journal says why",
            "journalctl -u kraken-agent | grep bootstrap",
        ),
    }
}
