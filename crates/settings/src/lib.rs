//! `/etc/kraken/agent.toml`: how this site runs the stack.
//!
//! Paths, endpoints, timeouts, template overrides, where the secrets live,
//! and the defaults (`[intent]`) for any intent tag an instance does not
//! carry. Every boot step reads its section from here, so this crate sits
//! below all of them and depends on none: [`Settings`] is the whole file,
//! one struct per `[section]`, each validated where a TOML parse cannot.
//!
//! Every rejected value names its key, the value, and the accepted form.

mod cloud;
mod cluster;
mod file;
mod intent;
mod lifecycle;
mod metrics;
mod names;
mod paths;
mod secrets;
mod services;
mod snapshots;
mod teams;

pub use cloud::{AwsSettingsFile, DiscoverySettings, ImdsSettingsFile};
pub use cluster::{BootstrapSettings, TlsSettings};
pub use file::{DEFAULT_SETTINGS_PATH, Settings, SettingsError};
pub use intent::IntentDefaults;
pub use lifecycle::LifecycleSettings;
pub use metrics::{DEFAULT_METRICS_ADDRESS, MetricsSettings};
pub use names::{NAME_FORM, valid_datacenter, valid_name};
pub use paths::PathSettings;
pub use secrets::{
    Backend, DEFAULT_DIR, DEFAULT_SSM_PREFIX, InvalidSetting, SecretSettings, validate_ssm_prefix,
};
pub use services::{ConsulSettings, DockerLogDriver, DockerSettings, NomadSettings, StartSettings};
pub use snapshots::SnapshotSettings;
pub use teams::{TEAM_NAME_FORM, TeamEnvironment, TeamSettings, environments as team_environments};
