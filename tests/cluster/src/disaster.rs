//! `cluster lose-servers`: every server destroyed at once with its data,
//! as when a zone or a bad AMI takes them all and the group replaces
//! them: new instances, new addresses, same tags. The new servers must
//! recover the cluster with no person (docs/operations.md, "Tokens": the
//! bootstrap runs again with the stored SecretIDs), so that every client
//! that survived keeps working with the tokens it holds.
//!
//! The web service is requested through the clients' Consul agents the
//! whole time; while no server exists it cannot answer, so the failures
//! and the outage are reported, not asserted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kraken_secrets::names;
use kraken_testkit::asg::{EndedBy, LifecycleResult};
use serde::Serialize;
use serde_json::Value;

use crate::api::{Tokens, consul_url, nomad_url};
use crate::checks::hcl_values;
use crate::cluster::Cluster;
use crate::lifecycle::{self, HookReport, LAUNCHING, asg_name};
use crate::traffic::{Figures, Traffic};
use crate::vm::Vm;
use crate::voters::{self, Voters};

/// How long the recovery may take on this 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(900);
/// After the checks: the clients' tokens must all be valid by then.
const TOKENS_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the node's Consul keeps the tokens set through its API
/// (`enable_token_persistence`): these win over consul.hcl's.
const CONSUL_PERSISTED_TOKENS: &str = "/opt/consul/acl-tokens.json";

/// One token a client holds, asked of the client's own agent (which asks
/// the servers), as the node itself would use it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenVerdict {
    pub node: String,
    /// `consul-agent`, `nomad-consul` (Nomad's Consul token) or
    /// `nomad-drain` (what the client's agent drains its node with).
    pub token: &'static str,
    /// Where the node holds it.
    pub source: String,
    /// Whether it is the secret store's value of its name.
    pub same_as_store: bool,
    /// What answered `acl/token/self`.
    pub asked: String,
    pub accessor: Option<String>,
    pub policies: Vec<String>,
    /// `valid`, or what the agent answered instead.
    pub verdict: String,
}

impl TokenVerdict {
    pub fn valid(&self) -> bool {
        self.verdict == "valid"
    }
}

#[derive(Debug, Serialize)]
pub struct LossReport {
    pub verb: String,
    /// The whole verb.
    pub seconds: f64,
    /// From the replacements' launch to every check green.
    pub seconds_to_ready: Option<f64>,
    /// From the replacements' launch to the web service answering through
    /// Consul again.
    pub seconds_to_web: Option<f64>,
    pub requests: u64,
    pub failed_requests: u64,
    /// Seconds the users saw the service down (failed request to the next
    /// answer), summed and the longest stretch.
    pub outage_secs: f64,
    pub longest_outage_secs: f64,
    pub first_failures: Vec<String>,
    /// (VM, instance id) destroyed, and their replacements.
    pub lost: Vec<(String, String)>,
    pub replacements: Vec<(String, String)>,
    pub voters_before: Voters,
    pub voters_after: Voters,
    pub hooks: Vec<HookReport>,
    /// Nomad's jobs went with its servers' data (no snapshot restored
    /// here): the web job is submitted again, as its deployer would.
    pub web_job_submitted_again: bool,
    pub tokens: Vec<TokenVerdict>,
    pub failures: Vec<String>,
}

fn since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

/// `cluster lose-servers`.
pub async fn lose_servers(cluster: &mut Cluster) -> Result<LossReport> {
    let started = Instant::now();
    let fake = lifecycle::autoscaling(cluster).await?;
    let tokens = cluster.tokens().await?;
    let mut report = LossReport {
        verb: "lose-servers".into(),
        seconds: 0.0,
        seconds_to_ready: None,
        seconds_to_web: None,
        requests: 0,
        failed_requests: 0,
        outage_secs: 0.0,
        longest_outage_secs: 0.0,
        first_failures: Vec::new(),
        lost: Vec::new(),
        replacements: Vec::new(),
        voters_before: voters::voters(cluster, &tokens).await,
        voters_after: Voters::default(),
        hooks: Vec::new(),
        web_job_submitted_again: false,
        tokens: Vec::new(),
        failures: Vec::new(),
    };
    let nodes = cluster.nodes();
    let servers: Vec<(String, String)> = nodes
        .iter()
        .filter(|n| n.group.is_consul_server() || n.group.is_nomad_server())
        .map(|n| (n.vm.name.clone(), n.vm.group.clone()))
        .collect();
    let survivors: Vec<String> = nodes
        .iter()
        .filter(|n| n.group.is_nomad_client())
        .map(|n| n.vm.name.clone())
        .collect();
    drop(nodes);
    anyhow::ensure!(!servers.is_empty(), "no server is running");
    let traffic = Traffic::start(cluster, tokens.clone(), 2);

    // At once: every power cut first, then the instances terminated (the
    // group sees them unhealthy and replaces them).
    for vm in cluster
        .vms
        .iter_mut()
        .filter(|v| !v.gone && servers.iter().any(|(name, _)| *name == v.name))
    {
        vm.power_off();
        report.lost.push((vm.name.clone(), vm.instance_id.clone()));
    }
    for (_, id) in &report.lost {
        cluster.cloud.terminate(id).await?;
    }
    cluster.save()?;
    cluster.log(format!(
        "every server destroyed with its data: {}",
        report
            .lost
            .iter()
            .map(|(n, id)| format!("{n} ({id})"))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // The replacements, at once, each through its launching hook.
    let replaced_at = Instant::now();
    for (_, group) in &servers {
        let vm = cluster.launch(group, None).await?;
        let (name, id) = (vm.name.clone(), vm.instance_id.clone());
        fake.begin(&asg_name(group), LAUNCHING, &id).await?;
        report.replacements.push((name, id));
    }

    match cluster
        .wait_ready("after losing every server", READY_TIMEOUT)
        .await
    {
        Ok(_) => report.seconds_to_ready = Some(since(replaced_at)),
        Err(e) => report.failures.push(format!("{e:#}")),
    }
    cluster.log(format!("web traffic so far: {}", traffic.progress()));
    if report.failures.is_empty() {
        match web_again(cluster).await {
            Ok(again) => {
                report.web_job_submitted_again = again;
                report.seconds_to_web = Some(since(replaced_at));
                // The users see it answer again before the figures close.
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => report.failures.push(format!("{e:#}")),
        }
    }
    let figures = traffic.finish().await;
    add(&mut report, figures);

    for (name, id) in &report.replacements {
        let outcome = fake.wait_outcome(id, Duration::from_secs(5)).await;
        let ok = outcome
            .as_ref()
            .is_some_and(|o| o.result == LifecycleResult::Continue && o.by == EndedBy::Completed);
        if !ok {
            report.failures.push(format!(
                "{name}: the launching hook was not completed by its agent"
            ));
        }
        report
            .hooks
            .push(lifecycle::hook_report(name, outcome, LAUNCHING));
    }
    fake.shutdown().await;

    report.tokens = clients_tokens(cluster, &survivors).await?;
    for t in report.tokens.iter().filter(|t| !t.valid()) {
        report.failures.push(format!(
            "{}: its {} token is not valid: {}",
            t.node, t.token, t.verdict
        ));
    }
    let tokens = cluster.tokens().await?;
    report.voters_after = voters::voters(cluster, &tokens).await;
    report
        .failures
        .extend(voters::voter_failures(cluster, &report.voters_after));
    report.seconds = since(started);
    Ok(report)
}

fn add(report: &mut LossReport, f: Figures) {
    report.requests = f.requests;
    report.failed_requests = f.failed_requests;
    report.outage_secs = (f.outage_secs * 10.0).round() / 10.0;
    report.longest_outage_secs = (f.longest_outage_secs * 10.0).round() / 10.0;
    report.first_failures = f.first_failures;
}

/// The web service answering through Consul again; submits its job again
/// if Nomad lost it with its servers. Whether it did.
async fn web_again(cluster: &Cluster) -> Result<bool> {
    let tokens = cluster.tokens().await?;
    let nomad = cluster
        .nodes()
        .iter()
        .find(|n| n.group.is_nomad_server())
        .map(|n| n.vm.address.clone())
        .context("no Nomad server is running")?;
    let (status, _) = cluster
        .api
        .get(
            &nomad_url(
                &nomad,
                &format!("/v1/job/web?namespace={}", crate::web::NAMESPACE),
            ),
            tokens.nomad_header(),
        )
        .await?;
    let again = status == 404;
    if again {
        cluster.log("Nomad lost the web job with its servers' data: submitting it again");
        cluster.deploy_web().await?;
    }
    let answers = cluster.wait_web(Duration::from_secs(300)).await?;
    for a in &answers {
        cluster.log(format!(
            "GET http://{}/ ({}) -> {}",
            a.address, a.node, a.body
        ));
    }
    Ok(again)
}

/// Every token of every named client, as it holds it, asked of its own
/// Consul and Nomad agents until all are valid (or the timeout).
pub async fn clients_tokens(cluster: &Cluster, clients: &[String]) -> Result<Vec<TokenVerdict>> {
    let tokens = cluster.tokens().await?;
    let deadline = Instant::now() + TOKENS_TIMEOUT;
    loop {
        let mut all = Vec::new();
        for name in clients {
            let vm = cluster
                .vms
                .iter()
                .find(|v| v.name == *name && !v.gone)
                .with_context(|| format!("the client {name} is gone"))?;
            all.extend(client_tokens(cluster, vm, &tokens).await);
        }
        if all.iter().all(TokenVerdict::valid) || Instant::now() > deadline {
            return Ok(all);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// The three tokens of one client: its Consul agent's (persisted through
/// the API if it was set so, else consul.hcl's), its Nomad's Consul token
/// (nomad.hcl), and the drain token its agent reads from the store when
/// the instance goes away (no file holds it).
async fn client_tokens(cluster: &Cluster, vm: &Vm, tokens: &Tokens) -> Vec<TokenVerdict> {
    let persisted = vm
        .read(CONSUL_PERSISTED_TOKENS)
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| {
            v["agent"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        });
    let consul_agent = match persisted {
        Some(t) => (Some(t), CONSUL_PERSISTED_TOKENS.to_owned()),
        None => (
            hcl_value(vm, "/etc/consul.d/consul.hcl", "agent"),
            "/etc/consul.d/consul.hcl tokens.agent".to_owned(),
        ),
    };
    let held = [
        // A client's Consul agent token is its own (`steps::node_tokens`).
        (
            "consul-agent",
            crate::api::node_token(&vm.instance_id),
            consul_agent,
        ),
        (
            "nomad-consul",
            names::CONSUL_NOMAD_CLIENT.to_owned(),
            (
                hcl_value(vm, "/etc/nomad.d/nomad.hcl", "token"),
                "/etc/nomad.d/nomad.hcl consul.token".to_owned(),
            ),
        ),
        (
            "nomad-drain",
            names::NOMAD_DRAIN.to_owned(),
            (
                tokens.all.get(names::NOMAD_DRAIN).cloned(),
                format!("the secret store's {}", names::NOMAD_DRAIN),
            ),
        ),
    ];
    let mut out = Vec::new();
    for (token, name, (secret, source)) in held {
        let nomad = token == "nomad-drain";
        let url = if nomad {
            nomad_url(&vm.address, "/v1/acl/token/self")
        } else {
            consul_url(&vm.address, "/v1/acl/token/self")
        };
        let mut verdict = TokenVerdict {
            node: vm.name.clone(),
            token,
            same_as_store: secret.is_some() && tokens.get(&name).as_ref() == secret.as_ref(),
            source,
            asked: format!(
                "{} agent on {} ({})",
                if nomad { "Nomad" } else { "Consul" },
                vm.name,
                vm.address
            ),
            accessor: None,
            policies: Vec::new(),
            verdict: String::new(),
        };
        let Some(secret) = secret else {
            verdict.verdict = "the node holds no such token".into();
            out.push(verdict);
            continue;
        };
        let header = if nomad {
            ("X-Nomad-Token", secret.as_str())
        } else {
            ("X-Consul-Token", secret.as_str())
        };
        match cluster.api.get(&url, Some(header)).await {
            Ok((200, body)) => {
                verdict.verdict = "valid".into();
                verdict.accessor = body["AccessorID"].as_str().map(str::to_owned);
                verdict.policies = body["Policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["Name"].as_str().or_else(|| p.as_str()))
                    .map(str::to_owned)
                    .collect();
            }
            Ok((status, body)) => {
                verdict.verdict = format!("HTTP {status}: {}", short(&body));
            }
            Err(e) => verdict.verdict = format!("{e:#}"),
        }
        out.push(verdict);
    }
    out
}

fn hcl_value(vm: &Vm, path: &str, key: &str) -> Option<String> {
    let text = vm.read(path)?;
    hcl_values(&text, key).first().map(|s| (*s).to_owned())
}

/// An error body for the report: never a token (these bodies are error
/// texts, and only the first line is kept).
fn short(body: &Value) -> String {
    let text = match body {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(160)
        .collect()
}
