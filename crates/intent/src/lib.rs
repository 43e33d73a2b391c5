//! Step 2 of the boot flow: what should this node be?
//!
//! Two sources, with a fixed precedence:
//! - **instance tags** (`kraken:*`) say what this node is: its cluster, its
//!   roles, the expected server counts, Nomad class and meta. They are
//!   per-instance (usually per autoscaling group) and win over the file.
//! - **`/etc/kraken/agent.toml`** ([`Settings`]) says how this site runs the
//!   stack: paths, endpoints, timeouts, template overrides, and the defaults
//!   (`[intent]`) for any intent tag that an instance does not carry.
//!
//! Built-in defaults apply last. Every rejected value names its tag or key,
//! the value, and the accepted form.

mod settings;
mod tags;

pub use settings::{
    AwsSettingsFile, BootstrapSettings, ConsulSettings, DEFAULT_SETTINGS_PATH, DiscoverySettings,
    DockerLogDriver, DockerSettings, ImdsSettingsFile, IntentDefaults, NomadSettings, PathSettings,
    Settings, SettingsError, StartSettings, TlsSettings,
};
pub use tags::{IntentError, NodeSpec, Role, TAG_PREFIX, TagError, known_tags};
