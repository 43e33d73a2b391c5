//! `kraken-agent doctor`: what is wrong with this node, and what to do.
//!
//! Read-only: every check calls the same step code `run` does, with short
//! deadlines, and changes nothing (no secret is created, no file written,
//! no service touched). One line per check; for a warning or failure, the
//! likely cause and the next command to run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kraken_discovery::Ec2Peers;
use kraken_hashi::Token;
use kraken_identity::{Identity, ImdsIdentity};
use kraken_intent::{NodeSpec, Role, RunsDocker};
use kraken_render::{RenderSecrets, RenderedFile};
use kraken_secrets::{SecretStore, Store, names};
use kraken_settings::Settings;
use kraken_start::{ServiceManager, Systemctl};
use serde::Serialize;

use crate::steps;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Not run: what it needs failed earlier.
    Skip,
    Warn,
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Skip => "skip",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub finding: String,
    /// Likely cause, for warn and fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The next thing to run or change, for warn and fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl Check {
    fn ok(name: &'static str, finding: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Ok,
            finding: finding.into(),
            cause: None,
            next: None,
        }
    }

    fn bad(
        name: &'static str,
        level: Level,
        finding: impl Into<String>,
        cause: impl Into<String>,
        next: impl Into<String>,
    ) -> Check {
        Check {
            name,
            level,
            finding: finding.into(),
            cause: Some(cause.into()),
            next: Some(next.into()),
        }
    }

    fn skip(name: &'static str, why: &str) -> Check {
        Check {
            name,
            level: Level::Skip,
            finding: format!("not checked: {why}"),
            cause: None,
            next: None,
        }
    }
}

/// The exit status: 0 all ok, 1 warnings, 2 any failure.
pub fn exit_code(checks: &[Check]) -> u8 {
    match checks.iter().map(|c| c.level).max() {
        Some(Level::Fail) => 2,
        Some(Level::Warn) => 1,
        _ => 0,
    }
}

pub fn print(checks: &[Check]) {
    for c in checks {
        println!("{:<4}  {:<12} {}", c.level.word(), c.name, c.finding);
        if let Some(cause) = &c.cause {
            println!("      {:<12} cause: {cause}", "");
        }
        if let Some(next) = &c.next {
            println!("      {:<12} next:  {next}", "");
        }
    }
}

/// Every check's deadline: doctor never hangs.
const DEADLINE: Duration = Duration::from_secs(8);

async fn timed<F: Future<Output = Check>>(name: &'static str, f: F) -> Check {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(c) => c,
        Err(_) => Check::bad(
            name,
            Level::Fail,
            format!("no answer within {}s", DEADLINE.as_secs()),
            "the service or API it asks is hung or unreachable",
            "run the check's command by hand (see docs/operations.md)",
        ),
    }
}

pub async fn doctor(settings: &Settings) -> Vec<Check> {
    let mut checks = Vec::new();

    // Identity with short limits: a person is waiting.
    let mut imds_settings = steps::imds_settings(settings);
    imds_settings.attempts = imds_settings.attempts.min(2);
    imds_settings.read_timeout = imds_settings.read_timeout.min(Duration::from_secs(2));
    let provider = ImdsIdentity::new(imds_settings, steps::aws_settings(settings));
    let identity = match tokio::time::timeout(DEADLINE, steps::identity(&provider)).await {
        Ok(Ok(id)) => {
            checks.push(Check::ok(
                "imds",
                format!(
                    "{} {} in {} (tags from {})",
                    id.instance_id,
                    id.private_ipv4,
                    id.availability_zone,
                    match id.tags_source {
                        kraken_identity::TagsSource::InstanceMetadata => "instance metadata",
                        kraken_identity::TagsSource::DescribeInstances => "ec2:DescribeInstances",
                        kraken_identity::TagsSource::NodeFile => "a node file",
                    }
                ),
            ));
            Some(id)
        }
        Ok(Err(e)) => {
            checks.push(Check::bad(
                "imds",
                Level::Fail,
                e.to_string(),
                "IMDS disabled on the instance, IMDSv2 blocked, or (inside a container) a PUT response hop limit of 1",
                "curl -sX PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60'; \
                 aws ec2 describe-instances --instance-ids <id> --query 'Reservations[].Instances[].MetadataOptions'",
            ));
            None
        }
        Err(_) => {
            checks.push(Check::bad(
                "imds",
                Level::Fail,
                "no answer from the instance metadata service",
                "IMDS unreachable; in a container, the hop limit is the usual cause",
                "aws ec2 modify-instance-metadata-options --instance-id <id> --http-put-response-hop-limit 2",
            ));
            None
        }
    };
    let Some(identity) = identity else {
        for name in [
            "tags",
            "aws",
            "discovery",
            "secrets",
            "configs",
            "units",
            "consul",
            "nomad",
            "bootstrap",
        ] {
            checks.push(Check::skip(name, "the instance identity is unknown"));
        }
        host_checks(settings, None, &mut checks).await;
        return checks;
    };

    let spec = match steps::intent(&identity, settings) {
        Ok(spec) => {
            let roles: Vec<&str> = spec.roles.iter().map(|r| r.as_str()).collect();
            checks.push(Check::ok(
                "tags",
                format!("cluster {}, roles {}", spec.cluster, roles.join(",")),
            ));
            spec
        }
        Err(e) => {
            checks.push(Check::bad(
                "tags",
                Level::Fail,
                e.to_string().replace('\n', " "),
                "an instance tag is missing or malformed (docs/tags.md)",
                format!(
                    "aws ec2 describe-tags --filters Name=resource-id,Values={} ; fix with aws ec2 create-tags, then systemctl restart kraken-agent",
                    identity.instance_id
                ),
            ));
            for name in [
                "aws",
                "discovery",
                "secrets",
                "configs",
                "units",
                "consul",
                "nomad",
                "bootstrap",
            ] {
                checks.push(Check::skip(name, "the tags do not describe a node"));
            }
            host_checks(settings, None, &mut checks).await;
            return checks;
        }
    };

    let sdk = kraken_aws::sdk_config(&identity.region, &steps::aws_settings(settings)).await;
    let calls = kraken_aws::ApiCalls::default();
    let ec2 = kraken_aws::ec2_client(&sdk, &calls);
    let store = Store::from_settings(&settings.secrets, &spec.cluster, &sdk, &calls);

    checks.push(timed("aws", aws_check(&ec2, &store, &identity)).await);
    checks.push(timed("clock", clock_check(&ec2)).await);

    let peers = match tokio::time::timeout(
        DEADLINE,
        steps::discover(&Ec2Peers::new(ec2.clone(), calls.clone()), &spec),
    )
    .await
    {
        Ok(Ok(peers)) => {
            let needed = steps::needed(&spec);
            let found = format!(
                "{} Consul servers, {} Nomad servers (expected {} and {})",
                peers.consul_servers.len(),
                peers.nomad_servers.len(),
                spec.consul_servers,
                spec.nomad_servers
            );
            checks.push(match peers.shortfall(needed) {
                None => Check::ok("discovery", found),
                Some(short) => Check::bad(
                    "discovery",
                    Level::Warn,
                    short,
                    "servers not running, or their kraken:cluster / kraken:roles tags differ",
                    format!(
                        "aws ec2 describe-instances --filters Name=tag:kraken:cluster,Values={} Name=instance-state-name,Values=running",
                        spec.cluster
                    ),
                ),
            });
            Some(peers)
        }
        Ok(Err(e)) => {
            checks.push(Check::bad(
                "discovery",
                Level::Fail,
                e.to_string(),
                "the EC2 API refused or failed the query",
                "see the aws check; docs/iam.md",
            ));
            None
        }
        Err(_) => {
            checks.push(Check::bad(
                "discovery",
                Level::Fail,
                "ec2:DescribeInstances did not answer",
                "no route to the EC2 endpoint, or it is throttling",
                "aws ec2 describe-instances --max-items 1",
            ));
            None
        }
    };

    let secrets = match &store {
        Ok(store) => {
            let (check, secrets) = secrets_check(store, &spec, settings).await;
            checks.push(check);
            secrets
        }
        Err(e) => {
            checks.push(Check::bad(
                "secrets",
                Level::Fail,
                e.to_string(),
                "the [secrets] settings are invalid",
                "fix /etc/kraken/agent.toml (docs/configuration.md)",
            ));
            None
        }
    };

    match (&peers, &secrets) {
        (Some(peers), Some(secrets)) => {
            checks.push(configs_check(&identity, &spec, peers, settings, secrets))
        }
        _ => checks.push(Check::skip(
            "configs",
            "peers or secrets unknown: cannot render for comparison",
        )),
    }

    let manager = Systemctl::new(&settings.start.systemctl);
    checks.push(timed("units", units_check(&manager, &spec, settings)).await);

    let consul_token = secrets.as_ref().and_then(|s| {
        s.initial_management
            .as_ref()
            .or(s.consul_agent.as_ref())
            .map(|t| Token::new(t.expose()))
    });
    let agent_token = secrets
        .as_ref()
        .and_then(|s| s.consul_agent.as_ref().map(|t| Token::new(t.expose())));
    checks.push(
        timed(
            "consul",
            consul_check(settings, &spec, consul_token.clone(), agent_token),
        )
        .await,
    );
    if spec.runs_nomad() {
        // On Nomad servers the management token, to show its life.
        let nomad_token = match &store {
            Ok(store) if spec.has(Role::NomadServer) => {
                stored_token(store, names::NOMAD_MANAGEMENT).await
            }
            _ => None,
        };
        checks.push(timed("nomad", nomad_check(settings, &spec, nomad_token)).await);
    }
    checks.push(
        timed(
            "bootstrap",
            bootstrap_check(settings, &spec, &store, consul_token),
        )
        .await,
    );
    host_checks(settings, Some(&spec), &mut checks).await;
    checks
}

async fn aws_check(
    ec2: &aws_sdk_ec2::Client,
    store: &Result<Store, kraken_secrets::SecretError>,
    identity: &Identity,
) -> Check {
    // DryRun asks IAM without doing anything.
    let ec2_ok = match ec2.describe_instances().dry_run(true).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            use aws_sdk_ec2::error::ProvideErrorMetadata;
            if e.code() == Some("DryRunOperation") {
                Ok(())
            } else {
                Err(kraken_aws::Failure::classify(&e).describe("ec2:DescribeInstances"))
            }
        }
    };
    let ssm_ok = match store {
        Ok(store) => store
            .get(names::GOSSIP_KEY)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match (ec2_ok, ssm_ok) {
        (Ok(()), Ok(())) => Check::ok(
            "aws",
            "credentials work; ec2:DescribeInstances and the secret store are allowed",
        ),
        (ec2, ssm) => {
            let problems: Vec<String> = [ec2.err(), ssm.err()].into_iter().flatten().collect();
            Check::bad(
                "aws",
                Level::Fail,
                problems.join("; "),
                "the instance role lacks a permission, or no credentials reach the agent",
                format!(
                    "aws sts get-caller-identity; compare the role of {} with docs/iam.md and docs/secrets.md",
                    identity.instance_id
                ),
            )
        }
    }
}

/// Skew against AWS's own clock (the `Date` of an API answer): AWS rejects
/// signed requests more than 5 minutes off, and Raft and TLS suffer long
/// before that.
async fn clock_check(ec2: &aws_sdk_ec2::Client) -> Check {
    let date = match ec2.describe_instances().dry_run(true).send().await {
        Ok(_) => None,
        Err(e) => e
            .raw_response()
            .and_then(|r| r.headers().get("date"))
            .map(str::to_owned),
    };
    let kernel = kernel_clock_synchronised();
    let Some(date) = date.and_then(|d| httpdate_to_unix(&d)) else {
        return Check::skip("clock", "no dated answer from AWS to compare with");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let skew = now - date as f64;
    let sync = if kernel {
        "synchronised"
    } else {
        "not synchronised"
    };
    let finding = format!("{skew:+.0}s from AWS's clock; kernel says {sync}");
    if skew.abs() >= 30.0 {
        Check::bad(
            "clock",
            Level::Fail,
            finding,
            "no time synchronisation",
            "chronyc tracking; timedatectl timesync-status",
        )
    } else if skew.abs() >= 3.0 {
        Check::bad(
            "clock",
            Level::Warn,
            finding,
            "time synchronisation drifting",
            "chronyc tracking",
        )
    } else {
        Check::ok("clock", finding)
    }
}

fn kernel_clock_synchronised() -> bool {
    // SAFETY: ntp_adjtime with modes = 0 only reads the kernel's state into
    // a zeroed struct we own.
    unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        libc::ntp_adjtime(&mut t) != libc::TIME_ERROR
    }
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_to_unix(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

async fn secrets_check(
    store: &Store,
    spec: &NodeSpec,
    settings: &Settings,
) -> (Check, Option<RenderSecrets>) {
    let read = tokio::time::timeout(
        DEADLINE,
        steps::secrets(store, spec, settings, steps::SecretsMode::ReadOnly),
    )
    .await;
    match read {
        Ok(Ok(s)) => {
            let mut missing = Vec::new();
            if s.gossip_key.is_none() {
                missing.push(names::GOSSIP_KEY);
            }
            if spec.has(Role::ConsulServer) && s.initial_management.is_none() {
                missing.push(names::CONSUL_INITIAL_MANAGEMENT);
            }
            if spec.has(Role::NomadServer) && s.nomad_gossip_key.is_none() {
                missing.push(names::NOMAD_GOSSIP_KEY);
            }
            if s.consul_agent.is_none() {
                missing.push(names::CONSUL_AGENT);
            }
            if let Some(name) = steps::nomad_role_token(spec)
                && s.nomad_consul.is_none()
            {
                missing.push(name);
            }
            // The intermediates this node issues its certificates with.
            if settings.tls.enabled {
                let authorities = std::iter::once(crate::tls::consul_authority(spec))
                    .chain(crate::tls::nomad_authority(spec));
                for authority in authorities {
                    let name = crate::tls::secret_name(authority);
                    if matches!(store.get(name).await, Ok(None)) {
                        missing.push(name);
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
            (check, Some(s))
        }
        Ok(Err(e)) => (
            Check::bad(
                "secrets",
                Level::Fail,
                e.to_string(),
                "this node's role may not read its secrets",
                "compare the instance role with docs/secrets.md",
            ),
            None,
        ),
        Err(_) => (
            Check::bad(
                "secrets",
                Level::Fail,
                "the secret store did not answer",
                "SSM unreachable or throttling",
                "aws ssm describe-parameters --max-items 1",
            ),
            None,
        ),
    }
}

/// Drift: what is on disk against what the agent would write now.
fn configs_check(
    identity: &Identity,
    spec: &NodeSpec,
    peers: &kraken_discovery::Peers,
    settings: &Settings,
    secrets: &RenderSecrets,
) -> Check {
    let files: Vec<RenderedFile> = match steps::render(identity, spec, peers, settings, secrets) {
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

async fn units_check<M: ServiceManager>(
    manager: &M,
    spec: &NodeSpec,
    settings: &Settings,
) -> Check {
    let mut units = vec![settings.consul.unit.as_str()];
    if settings.runs_docker(spec) {
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
        Check::ok("units", format!("{} enabled and active", units.join(", ")))
    } else {
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
}

async fn consul_check(
    settings: &Settings,
    spec: &NodeSpec,
    token: Option<Token>,
    agent_token: Option<Token>,
) -> Check {
    let consul = match crate::tls::consul_client(settings, token) {
        Ok(c) => c,
        Err(e) => {
            return Check::bad(
                "consul",
                Level::Fail,
                e.to_string(),
                "consul.http_addr is wrong or the TLS files are unreadable",
                "check /etc/kraken/agent.toml",
            );
        }
    };
    let leader = match consul.leader().await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Check::bad(
                "consul",
                Level::Fail,
                "Consul answers but there is no Raft leader",
                format!(
                    "fewer than a quorum of the {} Consul servers are up, or they cannot reach each other on 8300/8301",
                    spec.consul_servers
                ),
                "consul operator raft list-peers; consul members",
            );
        }
        Err(e) => {
            return Check::bad(
                "consul",
                Level::Fail,
                e.to_string(),
                "Consul is stopped or not listening where the agent expects",
                "systemctl status consul; journalctl -u consul -n 50",
            );
        }
    };
    let mut finding = format!("leader {leader}");
    match consul.members().await {
        Ok(members) => {
            let servers: Vec<_> = members.iter().filter(|m| m.is_server()).collect();
            let alive = servers.iter().filter(|m| m.is_alive()).count();
            finding.push_str(&format!(
                ", {alive} of {} expected servers alive, {} members",
                spec.consul_servers,
                members.len()
            ));
            if alive < usize::from(spec.consul_servers) {
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
    match agent_token {
        None => Check::bad(
            "consul",
            Level::Warn,
            format!("{finding}; this node has no agent token yet"),
            "the bootstrap has not created it",
            "see the bootstrap check",
        ),
        Some(t) => match consul.with_token(Some(t)).acl_token_self().await {
            Ok(Some(tok)) => {
                let life = tok
                    .expiration_time
                    .map(|e| format!("expires {e}"))
                    .unwrap_or_else(|| "does not expire".into());
                Check::ok("consul", format!("{finding}; agent token valid, {life}"))
            }
            Ok(None) => Check::bad(
                "consul",
                Level::Fail,
                format!("{finding}; Consul does not know this node's agent token"),
                "the token was deleted in Consul; the agent on a Consul server recreates it within bootstrap.token_check_secs",
                "consul acl token list | grep kraken; journalctl -u kraken-agent | grep 'recreated Consul tokens'",
            ),
            Err(e) => Check::bad(
                "consul",
                Level::Warn,
                format!("{finding}; cannot check the agent token: {e}"),
                "Consul is answering with errors",
                "journalctl -u consul -n 50",
            ),
        },
    }
}

async fn nomad_check(settings: &Settings, spec: &NodeSpec, management: Option<Token>) -> Check {
    let nomad = match crate::tls::nomad_client(settings, None) {
        Ok(n) => n,
        Err(e) => {
            return Check::bad(
                "nomad",
                Level::Fail,
                e.to_string(),
                "nomad.http_addr is wrong or the TLS files are unreadable",
                "check /etc/kraken/agent.toml",
            );
        }
    };
    let leader = match nomad.leader().await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Check::bad(
                "nomad",
                Level::Fail,
                "Nomad answers but there is no leader",
                format!(
                    "fewer than a quorum of the {} Nomad servers are up",
                    spec.nomad_servers
                ),
                "nomad server members",
            );
        }
        Err(e) => {
            return Check::bad(
                "nomad",
                Level::Fail,
                e.to_string(),
                "Nomad is stopped or not listening where the agent expects",
                "systemctl status nomad; journalctl -u nomad -n 50",
            );
        }
    };
    match nomad.agent_health().await {
        Ok(h) => {
            let unhealthy: Vec<String> = ["server", "client"]
                .iter()
                .filter(|k| h[**k].is_object() && h[**k]["ok"] != true)
                .map(|k| format!("{k}: {}", h[*k]["message"].as_str().unwrap_or("not ok")))
                .collect();
            if unhealthy.is_empty() {
                let mut finding = format!("leader {leader}; this agent healthy");
                if let Some(token) = management {
                    match nomad.with_token(Some(token)).acl_token_self().await {
                        Ok(Some(t)) => finding.push_str(&format!(
                            "; management token valid, {}",
                            t["ExpirationTime"]
                                .as_str()
                                .map(|e| format!("expires {e}"))
                                .unwrap_or_else(|| "does not expire".into())
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
            } else {
                Check::bad(
                    "nomad",
                    Level::Fail,
                    format!("leader {leader}; {}", unhealthy.join(", ")),
                    "this Nomad agent reports itself unhealthy",
                    "nomad node status -self; journalctl -u nomad -n 50",
                )
            }
        }
        Err(e) => Check::bad(
            "nomad",
            Level::Warn,
            format!("leader {leader}; health unknown: {e}"),
            "Nomad answers with errors",
            "journalctl -u nomad -n 50",
        ),
    }
}

async fn bootstrap_check(
    settings: &Settings,
    spec: &NodeSpec,
    store: &Result<Store, kraken_secrets::SecretError>,
    token: Option<Token>,
) -> Check {
    // The state is readable with the management token (Consul servers) or
    // the Nomad servers' token; other roles see the outcome, not the state.
    let token = match token {
        Some(t) if spec.has(Role::ConsulServer) => Some(t),
        _ => match store {
            Ok(store) if spec.has(Role::NomadServer) => {
                stored_token(store, names::CONSUL_NOMAD_SERVER).await
            }
            _ => None,
        },
    };
    let Some(token) = token else {
        return Check::skip(
            "bootstrap",
            "this role cannot read the bootstrap state; the secrets check shows its outcome",
        );
    };
    let Ok(consul) = crate::tls::consul_client(settings, Some(token)) else {
        return Check::skip("bootstrap", "consul.http_addr is not valid");
    };
    let key = format!("kraken/{}/bootstrap/", spec.cluster);
    let state = consul.kv_get(&format!("{key}state"), None).await;
    let lock = consul.kv_get(&format!("{key}lock"), None).await;
    match (state, lock) {
        (Ok((state, _)), Ok((lock, _))) => {
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
        (Err(e), _) | (_, Err(e)) => Check::bad(
            "bootstrap",
            Level::Warn,
            format!("cannot read the bootstrap state: {e}"),
            "Consul unreachable or the token lacks access",
            format!("consul kv get {key}state"),
        ),
    }
}

/// Checks of this machine rather than the cluster: certificates, Docker's
/// disk, OOM kills.
async fn host_checks(settings: &Settings, spec: Option<&NodeSpec>, checks: &mut Vec<Check>) {
    checks.push(tls_check(settings));
    if spec.is_none_or(|s| settings.runs_docker(s)) {
        checks.push(docker_disk_check(settings));
    }
    checks.push(oom_check());
}

/// Every certificate in the Consul and Nomad config directories, with the
/// life it has left. A leaf is a problem once it is well past the point
/// the agent renews it (the agent is not renewing); a CA is a warning
/// `tls.ca_warn_days` ahead (rotating it takes planning: docs/operations.md).
fn tls_check(settings: &Settings) -> Check {
    let mut files = Vec::new();
    for dir in [
        &settings.paths.consul_config_dir,
        &settings.paths.nomad_config_dir,
    ] {
        collect_pem(dir, 2, &mut files);
    }
    files.sort();
    let now = std::time::SystemTime::now();
    let days = |d: std::time::Duration| d.as_secs() / 86_400;
    let life = |d: std::time::Duration| {
        if d.as_secs() >= 2 * 86_400 {
            format!("{}d", days(d))
        } else {
            format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() % 3600 / 60)
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut parts = Vec::new();
    let mut expired = Vec::new();
    let mut overdue = Vec::new();
    let mut ca_soon = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (i, der) in kraken_pki::certificates(&text).iter().enumerate() {
            // The same CA appears in several files: count it once.
            if !seen.insert(der.clone()) {
                continue;
            }
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                continue;
            };
            let Ok(info) = kraken_pki::inspect_der(der, "") else {
                continue;
            };
            let left = info.remaining(now);
            let name = match path.file_name() {
                Some(f) if i == 0 => f.to_string_lossy().into_owned(),
                Some(f) => format!("{} #{}", f.to_string_lossy(), i + 1),
                None => path.display().to_string(),
            };
            let what = if cert.is_ca() {
                format!("CA {}", cert.subject())
            } else {
                info.dns_names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| cert.subject().to_string())
            };
            parts.push(format!("{name} ({what}) {}", life(left)));
            let lifetime = info
                .not_after
                .duration_since(info.not_before)
                .unwrap_or_default();
            if left.is_zero() {
                expired.push(format!("{} ({what})", path.display()));
            } else if cert.is_ca() {
                if days(left) < settings.tls.ca_warn_days {
                    ca_soon.push(format!("{what} expires in {} days", days(left)));
                }
            } else if left < lifetime.mul_f64((1.0 - settings.tls.renew_fraction) * 0.75) {
                overdue.push(format!(
                    "{} ({what}) has {} left",
                    path.display(),
                    life(left)
                ));
            }
        }
    }
    if parts.is_empty() {
        return Check::ok(
            "tls",
            "no certificates in the Consul or Nomad config directories",
        );
    }
    let finding = parts.join("; ");
    if !expired.is_empty() {
        Check::bad(
            "tls",
            Level::Fail,
            format!("expired: {}; {finding}", expired.join(", ")),
            "the certificate was not renewed (is kraken-agent running?)",
            "systemctl status kraken-agent; journalctl -u kraken-agent | grep -i certificate",
        )
    } else if !overdue.is_empty() {
        Check::bad(
            "tls",
            Level::Warn,
            format!("past its renewal time: {}; {finding}", overdue.join(", ")),
            "kraken-agent renews leaf certificates at tls.renew_fraction of their life and has not",
            "systemctl status kraken-agent; journalctl -u kraken-agent | grep -i certificate",
        )
    } else if !ca_soon.is_empty() {
        Check::bad(
            "tls",
            Level::Warn,
            format!("{}; {finding}", ca_soon.join(", ")),
            "the cluster CA is not renewed automatically",
            "rotate the cluster CA (docs/operations.md, \"Rotating the cluster CA\")",
        )
    } else {
        Check::ok("tls", finding)
    }
}

/// A token from the secret store, if this node may read it. A refusal or
/// an outage is not this check's finding: the `secrets` check reports it.
async fn stored_token(store: &Store, name: &str) -> Option<Token> {
    store
        .get(name)
        .await
        .ok()
        .flatten()
        .map(|s| Token::new(s.expose()))
}

fn collect_pem(dir: &Path, depth: u8, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && depth > 0 {
            collect_pem(&p, depth - 1, out);
        } else if p.extension().is_some_and(|x| x == "pem" || x == "crt") {
            out.push(p);
        }
    }
}

fn docker_disk_check(settings: &Settings) -> Check {
    let root = settings
        .docker
        .data_root
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/docker"));
    let stat = match nix::sys::statvfs::statvfs(&root) {
        Ok(s) => s,
        Err(e) => {
            return Check::bad(
                "docker-disk",
                Level::Warn,
                format!("cannot read {}: {e}", root.display()),
                "Docker is not installed or its data root moved",
                "docker info --format '{{.DockerRootDir}}'",
            );
        }
    };
    let used = use_percent(&stat);
    let finding = format!("{} is {used:.0}% full", root.display());
    if used >= 90.0 {
        Check::bad(
            "docker-disk",
            Level::Fail,
            finding,
            "images, stopped containers or unrotated logs fill the disk",
            "docker system df; docker system prune; check log rotation in /etc/docker/daemon.json",
        )
    } else if used >= 80.0 {
        Check::bad(
            "docker-disk",
            Level::Warn,
            finding,
            "the disk is filling up",
            "docker system df",
        )
    } else {
        Check::ok("docker-disk", finding)
    }
}

/// Use% as `df` computes it, so doctor and `df` on the node agree: used
/// over what non-root users could have (used + available), rounded up. The
/// blocks reserved for root count neither way; taking them as used (1 -
/// available/total) reads a file system with a large reserve as far fuller
/// than `df` shows.
fn use_percent(stat: &nix::sys::statvfs::Statvfs) -> f64 {
    df_use_percent(stat.blocks(), stat.blocks_free(), stat.blocks_available())
}

fn df_use_percent(blocks: u64, free: u64, available: u64) -> f64 {
    let used = blocks.saturating_sub(free) as f64;
    let usable = used + available as f64;
    if usable > 0.0 {
        (100.0 * used / usable).ceil()
    } else {
        0.0
    }
}

fn oom_check() -> Check {
    let kills = std::fs::read_to_string("/proc/vmstat").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    });
    match kills {
        None => Check::skip(
            "oom",
            "this kernel does not count OOM kills in /proc/vmstat",
        ),
        Some(0) => Check::ok("oom", "no process killed for memory since boot"),
        Some(n) => Check::bad(
            "oom",
            Level::Warn,
            format!("{n} processes killed for memory since boot"),
            "a task or service uses more memory than its limit or the machine has",
            "journalctl -k | grep -i 'killed process'; nomad alloc status <alloc> for task memory limits",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::df_use_percent;

    #[test]
    fn disk_use_is_what_df_shows() {
        // A 252 GiB file system with 69 GiB used, 23 GiB available and the
        // rest reserved (this build machine's disk): df says 69 / (69 +
        // 23) = 75%, where 1 - available/size would say 91%.
        let gib = 1 << 18; // 4 KiB blocks
        assert_eq!(df_use_percent(252 * gib, 183 * gib, 23 * gib), 75.0);
        // No reserve: used over size, rounded up as df does.
        assert_eq!(df_use_percent(1000, 49, 49), 96.0);
        assert_eq!(df_use_percent(1000, 1000, 1000), 0.0);
        assert_eq!(df_use_percent(0, 0, 0), 0.0);
    }
}
