//! How the agent talks to AWS: `[imds]`, `[aws]`, and `[discovery]` for
//! finding the servers.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImdsSettingsFile {
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub attempts: u32,
}

impl Default for ImdsSettingsFile {
    fn default() -> Self {
        ImdsSettingsFile {
            connect_timeout_ms: 1000,
            read_timeout_ms: 2000,
            attempts: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsSettingsFile {
    pub max_attempts: u32,
    pub max_backoff_secs: u64,
    pub attempt_timeout_secs: u64,
}

impl Default for AwsSettingsFile {
    fn default() -> Self {
        AwsSettingsFile {
            max_attempts: 6,
            max_backoff_secs: 20,
            attempt_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    /// The watch loop's period once the node has converged: clients follow
    /// the servers through Consul at this pace (no EC2 call).
    pub refresh_secs: u64,
    /// Converged servers query EC2 this often, give or take a quarter.
    pub server_refresh_secs: u64,
    /// Until enough servers are found, between EC2 queries, give or take
    /// half (so a node joins within about this long of the servers' launch).
    pub poll_ms: u64,
    /// The node's EC2 call budget: this many queries back to back, then one
    /// every `call_refill_secs`, whatever asks (docs/benchmarks.md).
    pub call_burst: u32,
    pub call_refill_secs: u64,
    /// First and longest wait between retries after an error (EC2 down,
    /// a converge that failed transiently).
    pub retry_min_secs: u64,
    pub retry_max_secs: u64,
    /// Cloud auto-join instead of the agent's discovery: a go-discover
    /// string (`provider=aws tag_key=... tag_value=...`) written as Consul's
    /// `retry_join`. With it (and `nomad_auto_join` on nodes running Nomad)
    /// the agent neither waits for nor tracks the servers: Consul and Nomad
    /// query EC2 themselves. Unset by default.
    pub consul_auto_join: Option<String>,
    /// The same for Nomad's `server_join`.
    pub nomad_auto_join: Option<String>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            refresh_secs: 60,
            server_refresh_secs: 300,
            poll_ms: 2000,
            call_burst: 15,
            call_refill_secs: 20,
            retry_min_secs: 2,
            retry_max_secs: 60,
            consul_auto_join: None,
            nomad_auto_join: None,
        }
    }
}

impl DiscoverySettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (key, value, least) in [
            ("retry_min_secs", self.retry_min_secs, 1),
            ("refresh_secs", self.refresh_secs, 1),
            ("server_refresh_secs", self.server_refresh_secs, 1),
            ("call_burst", self.call_burst.into(), 1),
            ("call_refill_secs", self.call_refill_secs, 1),
            ("poll_ms", self.poll_ms, 100),
        ] {
            if value < least {
                return Err(format!(
                    "discovery.{key} = {value}; expected at least {least} \
                     (less would query EC2 in a tight loop)"
                ));
            }
        }
        for (key, join) in [
            ("discovery.consul_auto_join", &self.consul_auto_join),
            ("discovery.nomad_auto_join", &self.nomad_auto_join),
        ] {
            if let Some(join) = join
                && (!join.starts_with("provider=") || join.chars().any(char::is_control))
            {
                return Err(format!(
                    "{key} = {join:?}; expected a cloud auto-join string starting with \"provider=\" \
                     (e.g. \"provider=aws tag_key=kraken:roles tag_value=consul-server\")"
                ));
            }
        }
        Ok(())
    }
}
