//! Consul's and Nomad's voters as autopilot lists them, and what every
//! verb that touches servers checks of them afterwards.

use serde::Serialize;
use serde_json::Value;

use crate::api::{Tokens, consul_url, nomad_url};
use crate::cluster::Cluster;

#[derive(Debug, Default, Serialize)]
pub struct Voters {
    pub consul: Vec<String>,
    pub nomad: Vec<String>,
    pub consul_failed_members: Vec<String>,
    pub nomad_failed_members: Vec<String>,
}

/// Autopilot's health and the gossip members, as one server answers them
/// (Consul's and Nomad's paths are the same); `None` unless both answer.
async fn health_and_members(
    cluster: &Cluster,
    url: impl Fn(&str) -> String,
    header: Option<(&str, &str)>,
) -> Option<(Value, Value)> {
    let health = cluster
        .api
        .get(&url("/v1/operator/autopilot/health"), header)
        .await;
    let members = cluster.api.get(&url("/v1/agent/members"), header).await;
    match (health, members) {
        // 429: the same document, while some server is unhealthy.
        (Ok((200 | 429, h)), Ok((200, m))) => Some((h, m)),
        _ => None,
    }
}

/// The voters as autopilot lists them, and failed gossip members.
pub async fn voters(cluster: &Cluster, tokens: &Tokens) -> Voters {
    let mut v = Voters::default();
    for node in cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_consul_server())
    {
        let url = |path: &str| consul_url(&node.vm.address, path);
        if let Some((h, m)) = health_and_members(cluster, url, tokens.consul_header()).await {
            v.consul = names(&h["Servers"], |s| s["Voter"] == true, "Name");
            v.consul_failed_members = names(&m, |s| s["Status"] == 4, "Name");
            break;
        }
    }
    for node in cluster.nodes().iter().filter(|n| n.group.is_nomad_server()) {
        let url = |path: &str| nomad_url(&node.vm.address, path);
        if let Some((h, m)) = health_and_members(cluster, url, tokens.nomad_header()).await {
            v.nomad = names(&h["Servers"], |s| s["Voter"] == true, "Name");
            v.nomad_failed_members = names(&m["Members"], |s| s["Status"] == "failed", "Name");
            break;
        }
    }
    v
}

fn names(list: &Value, pick: impl Fn(&Value) -> bool, key: &str) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| pick(s))
        .filter_map(|s| s[key].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// What is wrong with `voters`: they must be exactly the running servers
/// (Consul names them by instance id, Nomad by `<id>.global`), and no
/// gossip member may be left failed.
pub fn voter_failures(cluster: &Cluster, voters: &Voters) -> Vec<String> {
    let mut failures = Vec::new();
    let running = |pick: fn(&crate::topology::Group) -> bool, suffix: &str| {
        let mut ids: Vec<String> = cluster
            .nodes()
            .iter()
            .filter(|n| pick(n.group))
            .map(|n| format!("{}{suffix}", n.vm.instance_id))
            .collect();
        ids.sort();
        ids
    };
    if voters.consul != running(crate::topology::Group::is_consul_server, "") {
        failures.push("Consul's voters are not the running servers".into());
    }
    if voters.nomad != running(crate::topology::Group::is_nomad_server, ".global") {
        failures.push("Nomad's voters are not the running servers".into());
    }
    if !voters.consul_failed_members.is_empty() || !voters.nomad_failed_members.is_empty() {
        failures.push("failed members are left".into());
    }
    failures
}
