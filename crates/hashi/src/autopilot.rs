//! Autopilot's view of the servers, the same document in Consul and Nomad
//! (`/v1/operator/autopilot/health`, operator:read).

use serde::Deserialize;

use crate::HashiError;
use crate::http::Http;

/// Consul and Nomad both answer 429, with the same document, while any
/// server is unhealthy, which is exactly when callers need it: a
/// replacement server is a healthy voter long before autopilot prunes the
/// dead server it replaces.
pub(crate) async fn fetch(http: &Http) -> Result<AutopilotHealth, HashiError> {
    http.get_json_also("/v1/operator/autopilot/health", 429)
        .await
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AutopilotHealth {
    #[serde(rename = "Healthy")]
    pub healthy: bool,
    /// How many servers may fail without losing quorum.
    #[serde(rename = "FailureTolerance")]
    pub failure_tolerance: u32,
    #[serde(rename = "Servers", default)]
    pub servers: Vec<AutopilotServer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AutopilotServer {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Leader", default)]
    pub leader: bool,
    #[serde(rename = "Voter", default)]
    pub voter: bool,
    #[serde(rename = "Healthy", default)]
    pub healthy: bool,
}

impl AutopilotHealth {
    pub fn has_leader(&self) -> bool {
        self.servers.iter().any(|s| s.leader)
    }

    pub fn voters(&self) -> usize {
        self.servers.iter().filter(|s| s.voter).count()
    }
}
