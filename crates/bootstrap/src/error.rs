use kraken_hashi::HashiError;
use kraken_secrets::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("could not {action}: {source}")]
    Consul {
        action: &'static str,
        source: HashiError,
    },
    #[error("could not {action}: {source}")]
    Nomad {
        action: &'static str,
        source: HashiError,
    },
    #[error("bootstrap secret: {0}")]
    Secret(#[from] SecretError),
    #[error(
        "the bootstrap lease {key} was lost (the session expired or the lock key was deleted); \
         stopped before the next step, another node will resume"
    )]
    LeaseLost { key: String },
    #[error(
        "Nomad's ACLs were bootstrapped before, but not with the management token in the secret \
         store ({location}): someone ran `nomad acl bootstrap` by hand. Find that token, then \
         store it there (or reset Nomad's ACL bootstrap: `nomad acl bootstrap -reset-index`, see \
         docs/operations.md) and restart kraken-agent"
    )]
    NomadBootstrappedByHand { location: String },
    #[error("stopped at the test crash point after step {step}")]
    CrashPoint { step: &'static str },
    #[error("bootstrap state at {key} is not valid JSON: {detail}")]
    BadState { key: String, detail: String },
    #[error(
        "Nomad's workload identity key {kid} cannot be given to Consul: {detail}; \
         check /.well-known/jwks.json on a Nomad server (docs/workload-identity.md)"
    )]
    BadWorkloadKey { kid: String, detail: String },
    #[error(
        "Nomad publishes no workload identity key (/.well-known/jwks.json is empty): its keyring \
         is not ready yet"
    )]
    NoWorkloadKeys,
}

impl BootstrapError {
    pub(crate) fn consul(action: &'static str) -> impl FnOnce(HashiError) -> BootstrapError {
        move |source| BootstrapError::Consul { action, source }
    }

    pub(crate) fn nomad(action: &'static str) -> impl FnOnce(HashiError) -> BootstrapError {
        move |source| BootstrapError::Nomad { action, source }
    }

    /// Worth trying again: a lost lease, a leader election, an
    /// unreachable agent, throttling.
    pub fn is_transient(&self) -> bool {
        match self {
            BootstrapError::Consul { source, .. } | BootstrapError::Nomad { source, .. } => {
                transient(source)
            }
            BootstrapError::Secret(e) => e.is_transient(),
            BootstrapError::LeaseLost { .. } => true,
            BootstrapError::NomadBootstrappedByHand { .. }
            | BootstrapError::BadState { .. }
            | BootstrapError::CrashPoint { .. }
            | BootstrapError::BadWorkloadKey { .. } => false,
            // A new leader's keyring is replicated a moment after it wins.
            BootstrapError::NoWorkloadKeys => true,
        }
    }
}

/// A Consul or Nomad answer worth retrying: unreachable, 5xx, or a leader
/// election in progress (which Consul words as a 500 or in the body).
pub(crate) fn transient(e: &HashiError) -> bool {
    match e {
        HashiError::Unreachable { .. } => true,
        HashiError::Status { status, body, .. } => {
            *status >= 500 || body.contains("No cluster leader") || body.contains("rpc error")
        }
        _ => false,
    }
}
