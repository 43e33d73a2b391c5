//! The file as a whole: its sections, reading it, and the rules that span
//! more than one section.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cloud::{AwsSettingsFile, DiscoverySettings, ImdsSettingsFile};
use crate::cluster::{BootstrapSettings, TlsSettings};
use crate::intent::IntentDefaults;
use crate::lifecycle::LifecycleSettings;
use crate::metrics::MetricsSettings;
use crate::paths::PathSettings;
use crate::secrets::SecretSettings;
use crate::services::{ConsulSettings, DockerSettings, NomadSettings, StartSettings};
use crate::snapshots::SnapshotSettings;
use crate::teams::TeamSettings;

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
    pub secrets: SecretSettings,
    pub bootstrap: BootstrapSettings,
    pub tls: TlsSettings,
    pub lifecycle: LifecycleSettings,
    pub snapshots: SnapshotSettings,
    pub metrics: MetricsSettings,
    /// `[teams.<name>]`, by team name.
    pub teams: std::collections::BTreeMap<String, TeamSettings>,
}

pub const DEFAULT_SETTINGS_PATH: &str = "/etc/kraken/agent.toml";

impl Settings {
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
        self.intent.validate()?;
        self.discovery.validate()?;
        self.secrets
            .validate()
            .map_err(|e| format!("[secrets]: {e}"))?;
        self.bootstrap.validate()?;
        self.lifecycle.validate()?;
        self.docker.validate()?;
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
        self.snapshots.validate()?;
        self.metrics.validate()?;
        crate::teams::validate(&self.teams)?;
        Ok(())
    }
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
        for key in [
            "retry_min_secs",
            "refresh_secs",
            "server_refresh_secs",
            "call_burst",
            "call_refill_secs",
            "poll_ms",
        ] {
            let err = Settings::parse(&format!("[discovery]\n{key} = 0\n")).unwrap_err();
            assert!(err.contains(&format!("discovery.{key} = 0")), "{err}");
        }
        let err = Settings::parse("[discovery]\npoll_ms = 99\n").unwrap_err();
        assert!(err.contains("at least 100"), "{err}");
        let err = Settings::parse("[consul]\nhttp_addr = \"127.0.0.1:8500\"\n").unwrap_err();
        assert!(err.contains("consul.http_addr"), "{err}");
        let err = Settings::parse("[consul]\nhttp_addr = \"http://127.0.0.1:8500\"\n").unwrap_err();
        assert!(err.contains("tls.enabled = true"), "{err}");
        let err = Settings::parse("[snapshots]\nbucket = \"s3://b\"\n").unwrap_err();
        assert!(err.contains("snapshots.bucket"), "{err}");
        let err = Settings::parse("[snapshots]\nprefix = \"/x/\"\n").unwrap_err();
        assert!(err.contains("snapshots.prefix"), "{err}");
        let err = Settings::parse("[snapshots]\nretention = 0\n").unwrap_err();
        assert!(err.contains("snapshots.retention = 0"), "{err}");
        let err = Settings::parse("[tls]\nrenew_fraction = 1.5\n").unwrap_err();
        assert!(err.contains("tls.renew_fraction"), "{err}");
        let err = Settings::parse("[teams.Web]\nenvironments = [\"prod\"]\n").unwrap_err();
        assert!(err.contains("teams.\"Web\""), "{err}");
        let err = Settings::parse("[teams.web]\nenvironments = []\n").unwrap_err();
        assert!(err.contains("teams.web.environments = []"), "{err}");
        let err = Settings::parse("[teams.web]\nenvironments = [\"prod\", \"-x\"]\n").unwrap_err();
        assert!(err.contains("teams.web.environments[1] = \"-x\""), "{err}");
        let err = Settings::parse(
            "[teams.a-b]\nenvironments = [\"c\"]\n[teams.a]\nenvironments = [\"b-c\"]\n",
        )
        .unwrap_err();
        assert!(err.contains("namespace \"a-b-c\""), "{err}");
        let ok = Settings::parse("[teams.web]\nenvironments = [\"prod\", \"staging\"]\n").unwrap();
        assert_eq!(
            crate::teams::environments(&ok.teams)
                .iter()
                .map(|t| t.namespace())
                .collect::<Vec<_>>(),
            ["web-prod", "web-staging"]
        );
    }

    #[test]
    fn missing_file_is_defaults_only_at_the_default_path() {
        assert!(Settings::load(Path::new("/nonexistent/agent.toml")).is_err());
    }
}
