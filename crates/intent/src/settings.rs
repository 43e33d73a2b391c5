use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `/etc/kraken/agent.toml`: how this site runs the stack. Every key is
/// optional; unknown keys are an error (a misspelt key silently ignored is
/// a setting silently lost).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub paths: PathSettings,
    pub intent: IntentDefaults,
    pub consul: ConsulSettings,
    pub nomad: NomadSettings,
    pub docker: DockerSettings,
    pub discovery: DiscoverySettings,
    pub start: StartSettings,
    pub imds: ImdsSettingsFile,
    pub aws: AwsSettingsFile,
    pub secrets: kraken_secrets::SecretSettings,
    pub bootstrap: BootstrapSettings,
    pub tls: TlsSettings,
}

pub const DEFAULT_SETTINGS_PATH: &str = "/etc/kraken/agent.toml";

impl Settings {
    /// Whether this node configures and runs Docker: Nomad clients do,
    /// unless `[docker] enabled = false`.
    pub fn runs_docker(&self, spec: &crate::NodeSpec) -> bool {
        self.docker.enabled && spec.has(crate::Role::NomadClient)
    }

    /// Reads the file; a missing file at the default path means "all
    /// defaults" (a plain AMI needs no file), anywhere else it is an error.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_SETTINGS_PATH) =>
            {
                return Ok(Settings::default());
            }
            Err(e) => {
                return Err(SettingsError::Read {
                    path: path.to_owned(),
                    source: e,
                });
            }
        };
        Settings::parse(&text).map_err(|message| SettingsError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        let d = &self.intent;
        for (key, n) in [
            ("intent.consul_servers", d.consul_servers),
            ("intent.nomad_servers", d.nomad_servers),
        ] {
            if !(1..=9).contains(&n) {
                return Err(format!("{key} = {n}; expected a whole number from 1 to 9"));
            }
        }
        for (key, v) in [
            ("intent.nomad_datacenter", &d.nomad_datacenter),
            ("intent.nomad_region", &d.nomad_region),
        ]
        .into_iter()
        .chain(d.node_class.as_ref().map(|c| ("intent.node_class", c)))
        {
            if !crate::tags::valid_name(v) {
                return Err(format!(
                    "{key} = {v:?}; expected 1-64 characters of A-Z, a-z, 0-9, '-', '_' and '.'"
                ));
            }
        }
        if !crate::tags::valid_datacenter(&d.datacenter) {
            return Err(format!(
                "intent.datacenter = {:?}; expected 1-64 characters of a-z, 0-9, '-' and '_'",
                d.datacenter
            ));
        }
        if self.discovery.retry_min_secs == 0 || self.discovery.refresh_secs == 0 {
            return Err(
                "discovery.retry_min_secs and discovery.refresh_secs must be at least 1 \
                 (0 would query EC2 in a tight loop)"
                    .into(),
            );
        }
        for (key, join) in [
            (
                "discovery.consul_auto_join",
                &self.discovery.consul_auto_join,
            ),
            ("discovery.nomad_auto_join", &self.discovery.nomad_auto_join),
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
        self.secrets
            .validate()
            .map_err(|e| format!("[secrets]: {e}"))?;
        if self.bootstrap.lease_ttl_secs < 10 {
            return Err(format!(
                "bootstrap.lease_ttl_secs = {}; expected at least 10 (Consul's minimum session TTL)",
                self.bootstrap.lease_ttl_secs
            ));
        }
        if self.docker.log_max_files == 0 {
            return Err("docker.log_max_files = 0; expected at least 1".into());
        }
        if !valid_size(&self.docker.log_max_size) {
            return Err(format!(
                "docker.log_max_size = {:?}; expected a size like \"50m\" or \"1g\"",
                self.docker.log_max_size
            ));
        }
        for (key, url) in [
            ("consul.http_addr", &self.consul.http_addr),
            ("nomad.http_addr", &self.nomad.http_addr),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{key} = {url:?}; expected an http:// or https:// URL"
                ));
            }
            // With TLS on, Consul and Nomad serve only HTTPS; with it off,
            // only HTTP. A mismatch would fail at every call, so say it now.
            let https = url.starts_with("https://");
            if https != self.tls.enabled {
                return Err(format!(
                    "{key} = {url:?} but tls.enabled = {}; expected an {} URL",
                    self.tls.enabled,
                    if self.tls.enabled {
                        "https://"
                    } else {
                        "http://"
                    }
                ));
            }
        }
        self.tls.validate()?;
        Ok(())
    }
}

fn valid_size(s: &str) -> bool {
    let digits = s.trim_end_matches(['k', 'm', 'g']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

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

/// Defaults for intent tags an instance does not carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntentDefaults {
    pub datacenter: String,
    pub nomad_datacenter: String,
    pub nomad_region: String,
    pub consul_servers: u8,
    pub nomad_servers: u8,
    pub node_class: Option<String>,
}

impl Default for IntentDefaults {
    fn default() -> Self {
        IntentDefaults {
            datacenter: "dc1".into(),
            nomad_datacenter: "dc1".into(),
            nomad_region: "global".into(),
            consul_servers: 3,
            nomad_servers: 3,
            node_class: None,
        }
    }
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    /// Refresh period once the node has converged.
    pub refresh_secs: u64,
    /// First and longest wait between refreshes while servers are missing.
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
            retry_min_secs: 2,
            retry_max_secs: 60,
            consul_auto_join: None,
            nomad_auto_join: None,
        }
    }
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

/// The bootstrap lease (see `docs/architecture.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapSettings {
    /// Session TTL of the lease; a dead holder is replaced within about
    /// twice this plus the lock delay.
    pub lease_ttl_secs: u64,
    pub lock_delay_secs: u64,
    /// How long a node waits for its role's tokens to appear in the
    /// secret store before reporting and trying again.
    pub token_wait_secs: u64,
    /// How often a running Consul server checks that the role tokens still
    /// exist in Consul, and recreates any that do not.
    pub token_check_secs: u64,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        BootstrapSettings {
            lease_ttl_secs: 15,
            lock_delay_secs: 5,
            token_wait_secs: 600,
            token_check_secs: 300,
        }
    }
}

/// `[tls]`: the cluster PKI (`docs/pki.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// TLS for Consul's and Nomad's HTTP, gRPC and RPC, with verified
    /// certificates both ways. Off only for development.
    pub enabled: bool,
    /// Lifetime of the leaf certificates a node issues itself.
    pub leaf_lifetime_secs: u64,
    /// The fraction of a leaf's lifetime after which the agent renews it.
    pub renew_fraction: f64,
    /// Lifetime of the cluster's root CA (and of its intermediates), set
    /// when the CA is created; changing it later changes nothing.
    pub ca_lifetime_days: u64,
    /// How long before the CA expires `doctor` starts warning.
    pub ca_warn_days: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            enabled: true,
            leaf_lifetime_secs: 30 * 86_400,
            renew_fraction: 2.0 / 3.0,
            ca_lifetime_days: 10 * 365,
            ca_warn_days: 180,
        }
    }
}

impl TlsSettings {
    fn validate(&self) -> Result<(), String> {
        if self.leaf_lifetime_secs < 60 {
            return Err(format!(
                "tls.leaf_lifetime_secs = {}; expected at least 60",
                self.leaf_lifetime_secs
            ));
        }
        if !(self.renew_fraction > 0.0 && self.renew_fraction < 1.0) {
            return Err(format!(
                "tls.renew_fraction = {}; expected a number between 0 and 1, like 0.67",
                self.renew_fraction
            ));
        }
        if self.ca_lifetime_days < 1 {
            return Err("tls.ca_lifetime_days = 0; expected at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Settings::parse("").unwrap(), Settings::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Settings::parse("[consul]\nhttp_adr = \"http://x\"\n").unwrap_err();
        assert!(err.contains("http_adr"), "{err}");
    }

    #[test]
    fn bad_values_name_key_value_and_form() {
        let err = Settings::parse("[intent]\nconsul_servers = 0\n").unwrap_err();
        assert!(err.contains("intent.consul_servers = 0"), "{err}");
        let err = Settings::parse("[docker]\nlog_max_size = \"lots\"\n").unwrap_err();
        assert!(err.contains("docker.log_max_size"), "{err}");
        let err = Settings::parse("[docker]\nlog_driver = \"syslog\"\n").unwrap_err();
        assert!(
            err.contains("log_driver") || err.contains("syslog"),
            "{err}"
        );
        let err = Settings::parse("[intent]\ndatacenter = \"DC.1\"\n").unwrap_err();
        assert!(err.contains("intent.datacenter"), "{err}");
        let err = Settings::parse("[discovery]\nconsul_auto_join = \"10.0.0.1\"\n").unwrap_err();
        assert!(err.contains("discovery.consul_auto_join"), "{err}");
        let ok = Settings::parse(
            "[discovery]\nconsul_auto_join = \"provider=aws tag_key=kraken:roles tag_value=consul-server\"\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
        let err = Settings::parse("[discovery]\nretry_min_secs = 0\n").unwrap_err();
        assert!(err.contains("retry_min_secs"), "{err}");
        let err = Settings::parse("[consul]\nhttp_addr = \"127.0.0.1:8500\"\n").unwrap_err();
        assert!(err.contains("consul.http_addr"), "{err}");
        let err = Settings::parse("[consul]\nhttp_addr = \"http://127.0.0.1:8500\"\n").unwrap_err();
        assert!(err.contains("tls.enabled = true"), "{err}");
        let err = Settings::parse("[tls]\nrenew_fraction = 1.5\n").unwrap_err();
        assert!(err.contains("tls.renew_fraction"), "{err}");
    }

    #[test]
    fn missing_file_is_defaults_only_at_the_default_path() {
        assert!(Settings::load(Path::new("/nonexistent/agent.toml")).is_err());
    }
}
