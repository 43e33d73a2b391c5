use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[paths]`: where the agent writes and what it points the services at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathSettings {
    pub consul_config_dir: PathBuf,
    pub nomad_config_dir: PathBuf,
    pub docker_daemon_json: PathBuf,
    pub consul_data_dir: PathBuf,
    pub nomad_data_dir: PathBuf,
    /// Where `run` records what it did, for `doctor`.
    pub status_dir: PathBuf,
    /// A directory whose `*.hbs` files replace the embedded templates of
    /// the same name.
    pub templates_dir: Option<PathBuf>,
    /// The operator environment (`CONSUL_HTTP_ADDR`, `NOMAD_CACERT`, ...)
    /// a login shell reads.
    pub operator_env: PathBuf,
}

impl Default for PathSettings {
    fn default() -> Self {
        PathSettings {
            consul_config_dir: "/etc/consul.d".into(),
            nomad_config_dir: "/etc/nomad.d".into(),
            docker_daemon_json: "/etc/docker/daemon.json".into(),
            consul_data_dir: "/opt/consul".into(),
            nomad_data_dir: "/opt/nomad".into(),
            status_dir: "/run/kraken".into(),
            templates_dir: None,
            operator_env: "/etc/profile.d/kraken.sh".into(),
        }
    }
}
