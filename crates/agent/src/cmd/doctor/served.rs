//! What the running services actually use: the certificate each TLS port
//! serves (against the file, and its remaining life), and Nomad's link to
//! Consul. A renewal that did not reach a process, or a Nomad that lost
//! Consul, shows here and nowhere on disk.

use kraken_hashi::{ClientTls, Consul, Token};
use kraken_render::{Service, TlsFiles};

use super::check::{Check, Context, Level};
use crate::steps::served::{self, PortCheck};
use crate::steps::start;

fn life(secs: u64) -> String {
    if secs >= 2 * 86_400 {
        format!("{}d", secs / 86_400)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

fn describe(p: &PortCheck) -> String {
    let service = p.service.as_str();
    match (&p.serial, p.remaining_secs) {
        (Some(serial), Some(left)) => format!(
            "{service} {} {} serves {} ({} left{})",
            p.port,
            p.address,
            short(serial),
            life(left),
            if p.current {
                ", the file's"
            } else {
                ", NOT the file's"
            }
        ),
        _ => format!(
            "{service} {} {}: {}",
            p.port,
            p.address,
            p.error.as_deref().unwrap_or("no answer")
        ),
    }
}

/// Enough of a serial to tell certificates apart on one line.
fn short(serial: &str) -> &str {
    &serial[..serial.len().min(11)]
}

pub(super) async fn tls_ports(ctx: &mut Context<'_>) -> Check {
    let (settings, spec) = (ctx.settings, ctx.spec());
    if !settings.tls.enabled {
        return Check::skip("served", "TLS is off ([tls] enabled = false)");
    }
    let private = ctx.identity().private_ipv4;
    let mut ports = served::check(Service::Consul, settings, spec, private).await;
    if spec.runs_nomad() {
        ports.extend(served::check(Service::Nomad, settings, spec, private).await);
    }
    let finding = ports.iter().map(describe).collect::<Vec<_>>().join("; ");
    let stale: Vec<&PortCheck> = ports.iter().filter(|p| p.stale()).collect();
    let expired = ports.iter().any(|p| p.remaining_secs == Some(0));
    let silent = ports.iter().filter(|p| p.serial.is_none()).count();
    if expired || !stale.is_empty() {
        let units: Vec<&str> = stale
            .iter()
            .map(|p| crate::steps::start::unit_of(settings, p.service))
            .collect();
        Check::bad(
            "served",
            Level::Fail,
            finding,
            "a service did not load its renewed certificate (the agent reloads it after each renewal and retries)",
            format!(
                "systemctl reload {}; journalctl -u kraken-agent | grep 'older certificate'",
                if units.is_empty() {
                    settings.consul.unit.clone()
                } else {
                    units.join(" ")
                }
            ),
        )
    } else if silent > 0 {
        Check::bad(
            "served",
            Level::Warn,
            finding,
            "a TLS port does not answer (see the units check)",
            "systemctl status consul nomad",
        )
    } else {
        Check::ok("served", finding)
    }
}

/// Whether Nomad can talk to Consul the way it does: over HTTPS trusting
/// the cluster CA, with no client certificate, with its token; and whether
/// the services Nomad registered for this node pass in Consul.
pub(super) async fn nomad_consul(ctx: &mut Context<'_>) -> Check {
    let (settings, spec) = (ctx.settings, ctx.spec());
    let Some(token) = ctx
        .secrets
        .as_ref()
        .and_then(|s| s.nomad_consul.as_ref())
        .map(|t| Token::new(t.expose()))
    else {
        return Check::skip(
            "nomad-consul",
            "Nomad's Consul token is not in the store yet",
        );
    };
    let tls = if settings.tls.enabled {
        match std::fs::read(TlsFiles::consul(settings).ca) {
            Ok(ca) => Some(ClientTls::from_pem(&ca, None)),
            Err(e) => {
                return Check::bad(
                    "nomad-consul",
                    Level::Fail,
                    format!("cannot read Consul's CA file: {e}"),
                    "the agent has not written this node's TLS files",
                    "journalctl -u kraken-agent -n 50",
                );
            }
        }
    } else {
        None
    };
    let as_nomad = match Consul::with_tls(&settings.consul.http_addr, Some(token), tls.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            return Check::bad(
                "nomad-consul",
                Level::Fail,
                e.to_string(),
                "consul.http_addr is wrong",
                "check /etc/kraken/agent.toml",
            );
        }
    };
    match as_nomad.acl_token_self().await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Check::bad(
                "nomad-consul",
                Level::Fail,
                "Consul does not know Nomad's Consul token",
                "the token was deleted in Consul (revoked); the agent leaves revoked tokens alone",
                "rotate it: docs/operations.md (Rotating a role token)",
            );
        }
        Err(e) => {
            return Check::bad(
                "nomad-consul",
                Level::Fail,
                format!("Consul refuses Nomad's way in: {e}"),
                "Consul's HTTPS demands a client certificate Nomad does not present, or Consul is down",
                "grep -A8 '^  https' /etc/consul.d/consul.hcl; journalctl -u nomad | grep -i consul | tail",
            );
        }
    }
    let name = start::nomad_service_name(spec);
    let node = ctx.identity().instance_id.clone();
    // Nomad registered its service: its side of the link works. How Consul
    // finds Nomad (the checks) is the other direction, shown, not judged
    // here: a fresh registration is critical until its first check.
    let registered = start::nomad_registered(&as_nomad, spec, &node).await;
    let checks = start::nomad_checks(&as_nomad, spec, &node).await;
    match registered.and_then(|r| Ok((r, checks?))) {
        Ok((false, _)) => Check::bad(
            "nomad-consul",
            Level::Warn,
            format!("Nomad's token works, but Nomad has not registered {name} for this node"),
            "Nomad cannot reach Consul, or it has just started",
            "journalctl -u nomad | grep -i consul | tail",
        ),
        Ok((true, checks)) => {
            let mut states: Vec<String> = checks
                .iter()
                .map(|c| format!("{} {}", c.name, c.status))
                .collect();
            states.sort();
            if states.is_empty() {
                // Nomad registers no HTTP check for an HTTPS API that
                // demands client certificates.
                states.push("no checks".into());
            }
            Check::ok(
                "nomad-consul",
                format!(
                    "Nomad's token works over Consul's HTTPS; Nomad has registered {name} for this node ({})",
                    states.join(", ")
                ),
            )
        }
        Err(e) => Check::bad(
            "nomad-consul",
            Level::Warn,
            format!("Nomad's token works; its registrations are unknown: {e}"),
            "Nomad's Consul policy lacks node read, or Consul answers with errors",
            "consul catalog services -node <this node>",
        ),
    }
}
