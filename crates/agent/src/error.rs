use kraken_discovery::DiscoveryError;
use kraken_identity::IdentityError;
use kraken_intent::IntentError;
use kraken_render::{RenderError, WriteError};
use kraken_settings::SettingsError;
use kraken_start::StartError;

/// A failed boot step, with what the person reading it needs.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("settings: {0}")]
    Settings(#[from] SettingsError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("intent: {0}")]
    Intent(#[from] IntentError),
    #[error("discovery: {0}")]
    Discovery(#[from] DiscoveryError),
    #[error("render: {0}")]
    Render(#[from] RenderError),
    #[error("install: {0}")]
    Write(#[from] WriteError),
    #[error("start: {0}")]
    Start(#[from] StartError),
    #[error("secrets: {0}")]
    Secret(#[from] kraken_secrets::SecretError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] kraken_bootstrap::BootstrapError),
    #[error("pki: {0}")]
    Pki(#[from] kraken_pki::PkiError),
    #[error("node file {path}: {message}")]
    NodeFile { path: String, message: String },
}

impl BootError {
    /// Whether the same step may succeed if tried again in a while without
    /// anyone changing anything: a slow IMDS, throttling, a leader not yet
    /// elected. Bad tags, bad files and denied permissions need a person.
    pub fn is_transient(&self) -> bool {
        match self {
            BootError::Identity(e) => e.is_transient(),
            BootError::Discovery(e) => e.is_transient(),
            BootError::Start(_) => true,
            BootError::Secret(e) => e.is_transient(),
            BootError::Bootstrap(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Exit status for `run` (sysexits.h), so the journal and `systemctl
    /// status` tell a configuration problem from a permission problem.
    pub fn exit_code(&self) -> i32 {
        match self {
            BootError::Settings(_)
            | BootError::Intent(_)
            | BootError::Render(_)
            | BootError::NodeFile { .. } => 78, // EX_CONFIG
            BootError::Discovery(e)
                if matches!(
                    e.failure,
                    kraken_aws::Failure::AccessDenied { .. }
                        | kraken_aws::Failure::Credentials { .. }
                ) =>
            {
                77 // EX_NOPERM
            }
            BootError::Identity(IdentityError::TagsAccessDenied { .. }) => 77,
            BootError::Secret(e) if e.is_access_denied() => 77,
            BootError::Write(_) => 73, // EX_CANTCREAT
            _ => 69,                   // EX_UNAVAILABLE
        }
    }
}
