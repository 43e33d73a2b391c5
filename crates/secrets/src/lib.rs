//! Step 3 of the boot flow: the cluster's secrets.
//!
//! A [`SecretStore`] holds what a cluster shares and must never leak: the
//! Consul gossip key, the Consul initial-management token, the per-role
//! Consul tokens and the Nomad management token (later a CA key). Two
//! backends implement it:
//!
//! - [`SsmStore`]: AWS SSM Parameter Store, `SecureString` parameters named
//!   `/<prefix>/<cluster>/<name>` (prefix `kraken` by default), encrypted with
//!   the account's `aws/ssm` key or a configured KMS key. The production
//!   default: IAM decides which node may read or write which secret.
//! - [`DirStore`]: one file per secret under `<dir>/<cluster>/<name>`, mode
//!   0600 in directories of mode 0700. For development, tests and air-gapped
//!   sites.
//!
//! # Names
//!
//! A name is relative: segments of `a-z`, `0-9` and `-`, separated by `/`
//! (no leading or trailing `/`, no empty segment, so no `.` or `..`). The
//! ones the agent uses are in [`names`]. Scoping by cluster is the store's
//! job, so the same name means the same thing in every cluster.
//!
//! # Creating once
//!
//! Nodes of a new cluster boot at the same time and each may find a secret
//! missing. [`SecretStore::create`] is an atomic create-if-absent — SSM
//! `PutParameter` with `Overwrite=false`, a hard link for files — so the
//! first writer wins and every other one is handed the winner's value
//! ([`Created::Lost`]). [`SecretStore::get_or_create`] wraps this: all racing
//! nodes end up with the same value.
//!
//! # Never leaked
//!
//! A [`Secret`]'s `Debug` and `Display` print `<redacted>`; only
//! [`Secret::expose`] gives the value, and it is meant to be called where the
//! value leaves for Consul, Nomad or a config file. Errors and log lines name
//! the secret and where it lives, never its value. `docs/secrets.md` has the
//! layout and the IAM policy per role.

mod dir;
mod error;
pub mod names;
mod secret;
mod secret_store;
mod ssm;
mod store;
mod validate;

pub use dir::DirStore;
pub use error::SecretError;
pub use secret::Secret;
pub use secret_store::{Created, SecretStore};
pub use ssm::{BATCH, SsmStore, ssm_client};
pub use store::Store;
pub use validate::validate_name;
