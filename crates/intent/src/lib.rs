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

pub use role::Role;
pub use tags::{IntentError, NodeSpec, TAG_PREFIX, TagError, known_tags};
