//! Step 2 of the boot flow: what should this node be?
//!
//! Two sources, with a fixed precedence:
//! - **instance tags** (`kraken:*`) say what this node is: its cluster, its
//!   roles, the expected server counts, Nomad class and meta. They are
//!   per-instance (usually per autoscaling group) and win over the file.
//! - **`/etc/kraken/agent.toml`** (`kraken_settings::Settings`) says how this
//!   site runs the stack, and its `[intent]` section holds the defaults for
//!   any intent tag that an instance does not carry.
//!
//! Built-in defaults apply last. Every rejected value names its tag or key,
//! the value, and the accepted form.

mod role;
mod tags;

use kraken_settings::Settings;

pub use role::Role;
pub use tags::{IntentError, NodeSpec, TAG_PREFIX, TagError, known_tags};

/// What the settings mean for a node with a given spec. A trait so that
/// the question reads `settings.runs_docker(spec)` while the answer, which
/// depends on the node's roles, lives with the roles rather than in
/// `kraken-settings` (which knows nothing about them).
pub trait RunsDocker {
    /// Whether this node configures and runs Docker: Nomad clients do,
    /// unless `[docker] enabled = false`.
    fn runs_docker(&self, spec: &NodeSpec) -> bool;
}

impl RunsDocker for Settings {
    fn runs_docker(&self, spec: &NodeSpec) -> bool {
        self.docker.enabled && spec.has(Role::NomadClient)
    }
}
