//! Step 7 of the boot flow: the one-time cluster bootstrap, done exactly
//! once by whichever node holds the lease.
//!
//! Each step is idempotent and recorded in `kraken/<cluster>/bootstrap/state`
//! once done; a holder that dies loses its session, and the next holder
//! resumes after the last recorded step. Secrets are written to the secret
//! store *before* Consul or Nomad learn them (write-ahead): a crash between
//! the two leaves a stored secret for the next holder to finish with, never
//! a token nobody knows. After the bootstrap, [`Bootstrap::upkeep`] keeps
//! the tokens and policies right for the cluster's life.

mod error;
mod lease;
mod nodes;
mod policies;
mod run;
mod state;
mod teams;
#[cfg(test)]
mod tests;
mod tokens;
mod workload;

pub use error::BootstrapError;
pub use kraken_secrets::names;
pub use lease::{Lease, LeaseSettings};
pub use nodes::{Ledger, NODE_TOKEN_DESCRIPTION, NodeTokens, node_of};
pub use policies::{AGENT_VERSION, NODE_POLICY, POLICIES, ROLE_TOKENS, version_of, versioned};
pub use run::{Bootstrap, CRASH_AFTER_ENV, Report};
pub use state::{
    Phase, Retired, State, Step, TokenRecord, key as state_key, lock_key, read as read_state,
    sha256_hex,
};
pub use teams::{Teams, team_policy, team_rules, team_secret};
pub use tokens::Upkeep;
pub use workload::{AUDIENCE, AUTH_METHOD, TASKS_PREFIX, Workload, jwk_pem};
