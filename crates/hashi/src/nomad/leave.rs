//! What a Nomad node does on its way out of the cluster: a client drains
//! and is purged, a server leaves Raft and the gossip pool.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;

use super::Nomad;
use crate::http::{DEFAULT_TIMEOUT, HashiError};

/// A client node's drain, as `/v1/node/:id` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeDrain {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Status")]
    pub status: String,
    /// "eligible" or "ineligible".
    #[serde(rename = "SchedulingEligibility", default)]
    pub eligibility: String,
    /// Present while a drain runs; Nomad clears it when the drain is done.
    #[serde(rename = "DrainStrategy", default)]
    pub drain_strategy: Option<serde_json::Value>,
}

impl NodeDrain {
    pub fn draining(&self) -> bool {
        self.drain_strategy.is_some()
    }

    pub fn eligible(&self) -> bool {
        self.status == "ready" && self.eligibility == "eligible" && !self.draining()
    }
}

/// One server in Raft's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RaftServer {
    #[serde(rename = "ID")]
    pub id: String,
    /// `<node>.<region>`.
    #[serde(rename = "Node")]
    pub node: String,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Voter", default)]
    pub voter: bool,
}

impl Nomad {
    /// This agent's client node id, `None` on an agent that runs no client.
    pub async fn own_node_id(&self) -> Result<Option<String>, HashiError> {
        let me = self.agent_self().await?;
        Ok(me["stats"]["client"]["node_id"].as_str().map(str::to_owned))
    }

    /// A client node's status and drain (`node:read`).
    pub async fn node_drain(&self, id: &str) -> Result<NodeDrain, HashiError> {
        self.http.get_json(&format!("/v1/node/{id}")).await
    }

    /// Starts draining node `id` (`node:write`): its allocations migrate
    /// as their jobs' `migrate` blocks say, and whatever is left at the
    /// deadline is stopped. System jobs' allocations go last.
    pub async fn drain(&self, id: &str, deadline: Duration, why: &str) -> Result<(), HashiError> {
        let body = serde_json::json!({
            "DrainSpec": {
                "Deadline": deadline.as_nanos() as u64,
                "IgnoreSystemJobs": false,
            },
            "MarkEligible": false,
            "Meta": { "message": why },
        });
        self.http
            .send(
                Method::POST,
                &format!("/v1/node/{id}/drain"),
                Some(body.to_string().into_bytes()),
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Removes a node that is down from the node list (`node:write`), so
    /// no replaced instance lingers as a down node until garbage
    /// collection.
    pub async fn purge_node(&self, id: &str) -> Result<(), HashiError> {
        self.http
            .send(
                Method::POST,
                &format!("/v1/node/{id}/purge"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Raft's configuration (`operator:read`).
    pub async fn raft_servers(&self) -> Result<Vec<RaftServer>, HashiError> {
        #[derive(Deserialize)]
        struct Configuration {
            #[serde(rename = "Servers", default)]
            servers: Vec<RaftServer>,
        }
        let c: Configuration = self
            .http
            .get_json("/v1/operator/raft/configuration")
            .await?;
        Ok(c.servers)
    }

    /// Removes a server from Raft by its id (`operator:write`); the leader
    /// applies it, and a leader removing itself steps down first.
    pub async fn raft_remove_peer(&self, id: &str) -> Result<(), HashiError> {
        self.http
            .send(
                Method::DELETE,
                &format!("/v1/operator/raft/peer?id={id}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Marks a server that is going away `left` in the gossip pool
    /// (`agent:write`), so that it does not stay a failed member for days.
    /// Not pruned: a prune erases a member that is still alive (its Nomad
    /// just stopped, not yet seen dead) with only a reap event, on which
    /// Nomad's servers keep it among the servers they hand their clients
    /// at every heartbeat; clients then try it first and wait out its
    /// connection errors. Without a prune the member turns `left` once
    /// gossip sees it gone, with the leave event that drops it from that
    /// list, and Nomad reaps it a day later.
    pub async fn force_leave(&self, member: &str) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                &format!("/v1/agent/force-leave?node={member}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }
}
