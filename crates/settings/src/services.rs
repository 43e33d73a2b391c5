//! The services the agent configures and runs: `[consul]`, `[nomad]`,
//! `[docker]`, and `[start]` for how it starts them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulSettings {
    /// Where the agent reaches its local Consul agent.
    pub http_addr: String,
    /// Consul's `client_addr`: where its HTTP and DNS interfaces listen.
    pub client_addr: String,
    /// Owner of the rendered Consul config.
    pub user: String,
    pub group: String,
    pub unit: String,
}

impl Default for ConsulSettings {
    fn default() -> Self {
        ConsulSettings {
            http_addr: "https://127.0.0.1:8501".into(),
            client_addr: "127.0.0.1".into(),
            user: "consul".into(),
            group: "consul".into(),
            unit: "consul.service".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NomadSettings {
    pub http_addr: String,
    /// Nomad's `bind_addr`; it advertises the instance's private address.
    pub bind_addr: String,
    /// Nomad clients run as root (they manage tasks); the config is
    /// readable by this group.
    pub user: String,
    pub group: String,
    pub unit: String,
    /// Let the `raw_exec` driver run (off by default: it runs tasks
    /// unisolated as root).
    pub raw_exec: bool,
    /// Nomad client network interface, when the default route's is not it.
    pub network_interface: Option<String>,
}

impl Default for NomadSettings {
    fn default() -> Self {
        NomadSettings {
            http_addr: "https://127.0.0.1:4646".into(),
            bind_addr: "0.0.0.0".into(),
            user: "root".into(),
            group: "root".into(),
            unit: "nomad.service".into(),
            raw_exec: false,
            network_interface: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DockerLogDriver {
    JsonFile,
    Journald,
}

impl DockerLogDriver {
    /// Docker's name for it, as written in agent.toml and `daemon.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            DockerLogDriver::JsonFile => "json-file",
            DockerLogDriver::Journald => "journald",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerSettings {
    /// Whether `nomad-client` nodes configure and start Docker. Off for
    /// clients whose jobs use only `exec`/`raw_exec`.
    pub enabled: bool,
    pub log_driver: DockerLogDriver,
    /// json-file rotation: size of one file before rotation.
    pub log_max_size: String,
    pub log_max_files: u32,
    pub data_root: Option<PathBuf>,
    pub unit: String,
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            enabled: true,
            log_driver: DockerLogDriver::JsonFile,
            log_max_size: "50m".into(),
            log_max_files: 5,
            data_root: None,
            unit: "docker.service".into(),
        }
    }
}

impl DockerSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.log_max_files == 0 {
            return Err("docker.log_max_files = 0; expected at least 1".into());
        }
        if !valid_size(&self.log_max_size) {
            return Err(format!(
                "docker.log_max_size = {:?}; expected a size like \"50m\" or \"1g\"",
                self.log_max_size
            ));
        }
        Ok(())
    }
}

fn valid_size(s: &str) -> bool {
    let digits = s.trim_end_matches(['k', 'm', 'g']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StartSettings {
    /// The `systemctl` program that controls services.
    pub systemctl: String,
    /// How long a service may take to answer on its HTTP API.
    pub answer_timeout_secs: u64,
    /// How long a server may take to see a leader (all expected servers
    /// must have booted for the first election).
    pub leader_timeout_secs: u64,
}

impl Default for StartSettings {
    fn default() -> Self {
        StartSettings {
            systemctl: "systemctl".into(),
            answer_timeout_secs: 60,
            leader_timeout_secs: 600,
        }
    }
}
