use reqwest::Method;
use serde::Deserialize;

use crate::autopilot::AutopilotHealth;
use crate::http::{ClientTls, DEFAULT_TIMEOUT, HashiError, Http, Token};

pub(crate) mod acl;
pub(crate) mod leave;
pub(crate) mod namespaces;

/// A Nomad agent's HTTP API.
#[derive(Debug, Clone)]
pub struct Nomad {
    pub(crate) http: Http,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NomadMember {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Addr")]
    pub addr: String,
    /// "alive", "left", "failed".
    #[serde(rename = "Status")]
    pub status: String,
}

#[derive(Debug, Deserialize)]
struct Members {
    #[serde(rename = "Members")]
    members: Vec<NomadMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NomadNode {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    /// "initializing", "ready", "down", "disconnected".
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "NodeClass", default)]
    pub node_class: String,
    #[serde(rename = "Datacenter", default)]
    pub datacenter: String,
}

impl Nomad {
    pub fn new(base: &str, token: Option<Token>) -> Result<Nomad, HashiError> {
        Ok(Nomad {
            http: Http::new("Nomad", base, "X-Nomad-Token", None)?.with_token(token),
        })
    }

    /// A client that speaks TLS: trusts `tls`'s CA only and presents its
    /// certificate, if any.
    pub fn with_tls(
        base: &str,
        token: Option<Token>,
        tls: Option<&ClientTls>,
    ) -> Result<Nomad, HashiError> {
        Ok(Nomad {
            http: Http::new("Nomad", base, "X-Nomad-Token", tls)?.with_token(token),
        })
    }

    pub fn address(&self) -> &str {
        self.http.base()
    }

    /// The Raft leader's address, `None` while there is none. On a client
    /// it is forwarded to the servers. Needs no token.
    pub async fn leader(&self) -> Result<Option<String>, HashiError> {
        match self.http.get_json::<String>("/v1/status/leader").await {
            Ok(leader) => Ok((!leader.is_empty()).then_some(leader)),
            // A client with no server to forward to answers 500 "No
            // cluster leader" / "no servers".
            Err(HashiError::Status {
                status: 500, body, ..
            }) if body.contains("leader") || body.contains("no servers") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn raft_peers(&self) -> Result<Vec<String>, HashiError> {
        self.http.get_json("/v1/status/peers").await
    }

    /// Server gossip members (`agent:read`).
    pub async fn members(&self) -> Result<Vec<NomadMember>, HashiError> {
        let m: Members = self.http.get_json("/v1/agent/members").await?;
        Ok(m.members)
    }

    pub async fn agent_self(&self) -> Result<serde_json::Value, HashiError> {
        self.http.get_json("/v1/agent/self").await
    }

    /// Asks a server to join the gossip pool through `address` (`agent:write`).
    pub async fn join(&self, address: &str) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                &format!("/v1/agent/join?address={address}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Client nodes (`node:read`).
    pub async fn nodes(&self) -> Result<Vec<NomadNode>, HashiError> {
        self.http.get_json("/v1/nodes").await
    }

    /// One client node by its id, `None` when the servers do not know it
    /// (`node:read`). A stale read, which any server answers: one lookup,
    /// where [`Nomad::nodes`] sends the whole fleet.
    pub async fn node(&self, id: &str) -> Result<Option<NomadNode>, HashiError> {
        match self.http.get_json(&format!("/v1/node/{id}?stale")).await {
            Ok(node) => Ok(Some(node)),
            Err(HashiError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A client node's metadata (`node:read`).
    pub async fn node_meta(
        &self,
        id: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, HashiError> {
        #[derive(Deserialize)]
        struct Node {
            #[serde(rename = "Meta", default)]
            meta: Option<std::collections::BTreeMap<String, String>>,
        }
        let node: Node = self.http.get_json(&format!("/v1/node/{id}")).await?;
        Ok(node.meta.unwrap_or_default())
    }

    /// The attributes this agent's client node has fingerprinted, `None`
    /// on an agent that runs no client (`node:read`).
    pub async fn own_node_attributes(
        &self,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, HashiError> {
        let me = self.agent_self().await?;
        let Some(id) = me["stats"]["client"]["node_id"].as_str() else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Node {
            #[serde(rename = "Attributes", default)]
            attributes: std::collections::BTreeMap<String, String>,
        }
        let node: Node = self.http.get_json(&format!("/v1/node/{id}")).await?;
        Ok(Some(node.attributes))
    }

    /// Autopilot's configuration, as stored in Raft (`operator:read`).
    pub async fn autopilot_config(&self) -> Result<serde_json::Value, HashiError> {
        self.http
            .get_json("/v1/operator/autopilot/configuration")
            .await
    }

    /// Replaces autopilot's configuration (`operator:write`).
    pub async fn set_autopilot_config(&self, config: &serde_json::Value) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                "/v1/operator/autopilot/configuration",
                Some(config.to_string().into_bytes()),
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Autopilot's view of the servers (`operator:read`), healthy or not.
    pub async fn autopilot_health(&self) -> Result<AutopilotHealth, HashiError> {
        crate::autopilot::fetch(&self.http).await
    }
}

impl Nomad {
    /// `/v1/agent/health`: whether this agent's server and/or client half
    /// is healthy, as the agent itself judges. Needs no token.
    pub async fn agent_health(&self) -> Result<serde_json::Value, HashiError> {
        // An unhealthy agent answers 500 with the same document.
        self.http.get_json_also("/v1/agent/health", 500).await
    }
}
