//! The web service as its users reach it: its instances found through
//! Consul (passing checks only), each asked `GET /`.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::api::{Api, Tokens, consul_url, nomad_url};

/// The web job's team and environment in the cluster's agent.toml
/// (`[teams.web]`): it runs in that namespace, deployed with that team's
/// token (docs/teams.md), never the management token.
pub const TEAM_TOML: &str = "[teams.web]\nenvironments = [\"prod\"]\n";
/// The web job's Nomad namespace: every read of the job names it.
pub const NAMESPACE: &str = "web-prod";
/// Where the bootstrap stores the team's token.
pub const TEAM_TOKEN: &str = "teams/web/prod/nomad-token";

/// One answer of the web service.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebAnswer {
    pub address: String,
    pub node: String,
    pub body: Value,
}

/// The passing instances of the web service, as `consul` (a server or a
/// client agent) lists them: (address:port, node). `stale` lets any
/// server answer from its own state, as Consul's DNS does by default, so
/// that a lookup needs no leader.
pub async fn instances(
    api: &Api,
    consul: &str,
    tokens: &Tokens,
    stale: bool,
) -> Result<Vec<(String, String)>> {
    let query = if stale {
        "/v1/health/service/web?passing=true&stale"
    } else {
        "/v1/health/service/web?passing=true"
    };
    let entries = api
        .get_ok(&consul_url(consul, query), tokens.consul_header())
        .await?;
    Ok(entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let address = e["Service"]["Address"].as_str()?;
            let port = e["Service"]["Port"].as_u64()?;
            Some((
                format!("{address}:{port}"),
                e["Node"]["Node"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// `GET /` of one instance: its answer, which must say ok.
pub async fn ask(api: &Api, address: &str) -> Result<Value> {
    let body = api.get_ok(&format!("http://{address}/"), None).await?;
    if body["status"] != "ok" {
        bail!("{address} answered {body}");
    }
    Ok(body)
}

/// The web service's instances, found through Consul, each asked `GET /`:
/// every one must answer ok with its own allocation id, and the ids must
/// be the job's running allocations.
pub async fn web(
    api: &Api,
    consul_server: &str,
    nomad_server: &str,
    tokens: &Tokens,
    want: usize,
) -> Result<Vec<WebAnswer>> {
    let instances = instances(api, consul_server, tokens, false).await?;
    if instances.len() != want {
        bail!(
            "Consul lists {} passing web instances, want {want}: {instances:?}",
            instances.len()
        );
    }
    let allocs = api
        .get_ok(
            &nomad_url(
                nomad_server,
                &format!("/v1/job/web/allocations?namespace={NAMESPACE}"),
            ),
            tokens.nomad_header(),
        )
        .await?;
    let running: BTreeSet<&str> = allocs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["ClientStatus"] == "running")
        .filter_map(|a| a["ID"].as_str())
        .collect();
    let mut answers = Vec::new();
    let mut ids = BTreeSet::new();
    for (address, node) in instances {
        let body = ask(api, &address).await?;
        let id = body["alloc_id"].as_str().unwrap_or_default().to_owned();
        if !running.contains(id.as_str()) {
            bail!(
                "{address} answered alloc_id {id:?}, not a running allocation of job web ({running:?})"
            );
        }
        if !ids.insert(id.clone()) {
            bail!("two instances answered the same alloc_id {id}");
        }
        answers.push(WebAnswer {
            address,
            node,
            body,
        });
    }
    Ok(answers)
}
