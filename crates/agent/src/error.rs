use std::time::Duration;

use kraken_discovery::DiscoveryError;
use kraken_hashi::HashiError;
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
    /// A call to the local Consul or Nomad agent, or the client that makes
    /// it, failed; `source` says which and why.
    #[error("{doing}: {source}")]
    Hashi {
        doing: &'static str,
        source: HashiError,
    },
    #[error("secrets: {0}")]
    Secret(#[from] kraken_secrets::SecretError),
    #[error(
        "secret {name} did not appear within {}s (absent at {location}); it is made by the \
         cluster bootstrap (a node's own Consul token by the Consul leader's agent once the \
         node's Consul has joined: `consul members`): see `kraken-agent doctor` on a Consul \
         server",
        waited.as_secs()
    )]
    SecretAbsent {
        name: String,
        location: String,
        waited: Duration,
    },
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] kraken_bootstrap::BootstrapError),
    #[error("pki: {0}")]
    Pki(#[from] kraken_pki::PkiError),
    #[error("node file {path}: {message}")]
    NodeFile { path: String, message: String },
    #[error("snapshot: {0}")]
    Snapshot(Box<crate::steps::snapshot::SnapshotError>),
    /// `kraken-agent leave` could not hand the leave to the running agent.
    #[error("leave: {0}")]
    Leave(String),
}

impl From<crate::steps::snapshot::SnapshotError> for BootError {
    fn from(e: crate::steps::snapshot::SnapshotError) -> Self {
        BootError::Snapshot(Box::new(e))
    }
}

impl BootError {
    /// Wraps a Consul or Nomad error with what the agent was doing.
    pub fn hashi(doing: &'static str) -> impl FnOnce(HashiError) -> BootError {
        move |source| BootError::Hashi { doing, source }
    }

    /// Whether the same step may succeed if tried again in a while without
    /// anyone changing anything: a slow IMDS, throttling, a leader not yet
    /// elected, a secret the bootstrap has not made yet. Bad tags, bad
    /// files and denied permissions need a person.
    pub fn is_transient(&self) -> bool {
        match self {
            BootError::Identity(e) => e.is_transient(),
            BootError::Discovery(e) => e.is_transient(),
            // systemctl and the waits on a starting service: systemd may be
            // busy, a service slow; a person sees the error in the status
            // line meanwhile.
            BootError::Start(_) => true,
            BootError::Hashi { source, .. } => source.is_transient(),
            BootError::Secret(e) => e.is_transient(),
            BootError::SecretAbsent { .. } => true,
            BootError::Bootstrap(e) => e.is_transient(),
            BootError::Snapshot(e) => e.is_transient(),
            BootError::Leave(_) => false,
            BootError::Settings(_)
            | BootError::Intent(_)
            | BootError::Render(_)
            | BootError::Write(_)
            | BootError::Pki(_)
            | BootError::NodeFile { .. } => false,
        }
    }

    /// Exit status for `run` (sysexits.h), so the journal and `systemctl
    /// status` tell a configuration problem from a permission problem.
    pub fn exit_code(&self) -> i32 {
        const EX_UNAVAILABLE: i32 = 69;
        const EX_PROTOCOL: i32 = 76;
        const EX_NOPERM: i32 = 77;
        const EX_CONFIG: i32 = 78;
        const EX_CANTCREAT: i32 = 73;
        match self {
            BootError::Settings(_)
            | BootError::Intent(_)
            | BootError::Render(_)
            | BootError::NodeFile { .. } => EX_CONFIG,
            // An unreadable TLS file or a bad address is the node's own
            // configuration, not the peer's fault.
            BootError::Hashi { source, .. } if source.is_config() => EX_CONFIG,
            BootError::Hashi { source, .. } if matches!(source.status(), Some(401 | 403)) => {
                EX_NOPERM
            }
            BootError::Hashi {
                source: HashiError::Decode { .. },
                ..
            } => EX_PROTOCOL,
            BootError::Discovery(e)
                if matches!(
                    e.failure,
                    kraken_aws::Failure::AccessDenied { .. }
                        | kraken_aws::Failure::Credentials { .. }
                ) =>
            {
                EX_NOPERM
            }
            BootError::Identity(IdentityError::TagsAccessDenied { .. }) => EX_NOPERM,
            BootError::Secret(e) if e.is_access_denied() => EX_NOPERM,
            BootError::Write(_) => EX_CANTCREAT,
            BootError::Snapshot(e) if e.is_config() => EX_CONFIG,
            _ => EX_UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_aws::Failure;

    fn hashi(source: HashiError) -> BootError {
        BootError::Hashi {
            doing: "test",
            source,
        }
    }

    fn status(status: u16) -> HashiError {
        HashiError::Status {
            service: "Consul",
            method: reqwest::Method::GET,
            url: "https://127.0.0.1:8501/v1/status/leader".into(),
            status,
            body: String::new(),
        }
    }

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    /// Every variant, with the classification a person relies on:
    /// (error, transient, exit code).
    fn cases() -> Vec<(BootError, bool, i32)> {
        let discovery = |failure| {
            BootError::Discovery(DiscoveryError {
                cluster: "c".into(),
                failure,
            })
        };
        vec![
            (
                BootError::Settings(SettingsError::Parse {
                    path: "/etc/kraken/agent.toml".into(),
                    message: "bad".into(),
                }),
                false,
                78,
            ),
            (
                BootError::Identity(IdentityError::ImdsUnreachable {
                    endpoint: "http://169.254.169.254".into(),
                    path: "/latest/api/token".into(),
                    detail: "timeout".into(),
                }),
                true,
                69,
            ),
            (
                BootError::Identity(IdentityError::TagsAccessDenied {
                    instance_id: "i-1".into(),
                    code: "UnauthorizedOperation".into(),
                }),
                false,
                77,
            ),
            (
                BootError::Intent(
                    kraken_intent::NodeSpec::from_tags(&Default::default(), &Default::default())
                        .unwrap_err(),
                ),
                false,
                78,
            ),
            (
                discovery(Failure::Throttled {
                    code: "RequestLimitExceeded".into(),
                }),
                true,
                69,
            ),
            (
                discovery(Failure::AccessDenied {
                    code: "UnauthorizedOperation".into(),
                    message: "no".into(),
                }),
                false,
                77,
            ),
            (
                discovery(Failure::Credentials {
                    detail: "expired".into(),
                }),
                false,
                77,
            ),
            (
                BootError::Render(RenderError::Render {
                    source_name: "consul.hcl.hbs".into(),
                    detail: "missing variable".into(),
                }),
                false,
                78,
            ),
            (
                BootError::Write(WriteError::Io {
                    op: "write",
                    path: "/etc/consul.d/consul.hcl".into(),
                    source: io(std::io::ErrorKind::StorageFull),
                }),
                false,
                73,
            ),
            (
                BootError::Start(StartError::Timeout {
                    what: "a Consul Raft leader".into(),
                    waited: Duration::from_secs(1),
                    last: "not yet".into(),
                }),
                true,
                69,
            ),
            (
                BootError::Start(StartError::Command {
                    command: "systemctl restart consul.service".into(),
                    status: "exit status: 1".into(),
                    stderr: "busy".into(),
                }),
                true,
                69,
            ),
            (
                hashi(HashiError::Unreachable {
                    service: "Consul",
                    url: "https://127.0.0.1:8501".into(),
                    detail: "connection refused".into(),
                }),
                true,
                69,
            ),
            (hashi(status(500)), true, 69),
            (hashi(status(503)), true, 69),
            (hashi(status(403)), false, 77),
            (hashi(status(401)), false, 77),
            (hashi(status(400)), false, 69),
            (hashi(status(404)), false, 69),
            (
                hashi(HashiError::Decode {
                    service: "Nomad",
                    url: "/v1/status/leader".into(),
                    detail: "expected a string".into(),
                }),
                false,
                76,
            ),
            (
                hashi(HashiError::BadUrl {
                    service: "Consul",
                    url: "127.0.0.1:8501".into(),
                }),
                false,
                78,
            ),
            (
                hashi(HashiError::Tls {
                    service: "Consul",
                    detail: "cannot read /etc/consul.d/tls/ca.pem: permission denied".into(),
                }),
                false,
                78,
            ),
            (
                BootError::Secret(kraken_secrets::SecretError::Ssm {
                    name: "consul/gossip-key".into(),
                    parameter: "/kraken/c/consul/gossip-key".into(),
                    action: "ssm:GetParameter",
                    failure: Box::new(Failure::Throttled {
                        code: "ThrottlingException".into(),
                    }),
                    kms_key_id: None,
                }),
                true,
                69,
            ),
            (
                BootError::Secret(kraken_secrets::SecretError::Ssm {
                    name: "consul/gossip-key".into(),
                    parameter: "/kraken/c/consul/gossip-key".into(),
                    action: "ssm:GetParameter",
                    failure: Box::new(Failure::AccessDenied {
                        code: "AccessDeniedException".into(),
                        message: "no".into(),
                    }),
                    kms_key_id: None,
                }),
                false,
                77,
            ),
            (
                BootError::Secret(kraken_secrets::SecretError::Corrupt {
                    name: "pki/ca".into(),
                    location: "/var/lib/kraken/secrets/c/pki/ca".into(),
                    reason: "not UTF-8",
                }),
                false,
                69,
            ),
            (
                BootError::SecretAbsent {
                    name: "consul/tokens/agent".into(),
                    location: "/kraken/c/consul/tokens/agent".into(),
                    waited: Duration::from_secs(600),
                },
                true,
                69,
            ),
            (
                BootError::Bootstrap(kraken_bootstrap::BootstrapError::LeaseLost {
                    key: "kraken/c/bootstrap/lock".into(),
                }),
                true,
                69,
            ),
            (
                BootError::Bootstrap(kraken_bootstrap::BootstrapError::NomadBootstrappedByHand {
                    location: "/kraken/c/nomad/tokens/management".into(),
                }),
                false,
                69,
            ),
            (
                BootError::Pki(kraken_pki::PkiError::Bundle {
                    what: "secret pki/consul-client".into(),
                    detail: "no key".into(),
                }),
                false,
                69,
            ),
            (
                BootError::NodeFile {
                    path: "node.toml".into(),
                    message: "bad".into(),
                },
                false,
                78,
            ),
            (
                crate::steps::snapshot::SnapshotError::NoSuchBucket {
                    bucket: "acme-snapshots".into(),
                }
                .into(),
                false,
                78,
            ),
            (BootError::Leave("the agent ended".into()), false, 69),
        ]
    }

    #[test]
    fn every_variant_is_classified() {
        let mut seen = std::collections::BTreeSet::new();
        for (e, transient, code) in &cases() {
            seen.insert(variant(e));
            assert_eq!(e.is_transient(), *transient, "is_transient of {e}");
            assert_eq!(e.exit_code(), *code, "exit_code of {e}");
        }
        assert_eq!(seen.len(), VARIANTS, "a BootError variant has no case");
    }

    const VARIANTS: usize = 15;

    /// No wildcard: a new variant does not compile until it is counted
    /// here, and then fails the test until it has a case.
    fn variant(e: &BootError) -> usize {
        match e {
            BootError::Settings(_) => 0,
            BootError::Identity(_) => 1,
            BootError::Intent(_) => 2,
            BootError::Discovery(_) => 3,
            BootError::Render(_) => 4,
            BootError::Write(_) => 5,
            BootError::Start(_) => 6,
            BootError::Hashi { .. } => 7,
            BootError::Secret(_) => 8,
            BootError::SecretAbsent { .. } => 9,
            BootError::Bootstrap(_) => 10,
            BootError::Pki(_) => 11,
            BootError::NodeFile { .. } => 12,
            BootError::Snapshot(_) => 13,
            BootError::Leave(_) => 14,
        }
    }

    #[test]
    fn a_broken_tls_file_names_the_file_and_is_not_retried() {
        let e = hashi(HashiError::Tls {
            service: "Consul",
            detail: "cannot read /etc/consul.d/tls/ca.pem: No such file".into(),
        });
        let text = e.to_string();
        assert!(text.contains("/etc/consul.d/tls/ca.pem"), "{text}");
        assert!(!text.contains("bad address"), "{text}");
        assert!(!e.is_transient());
    }

    #[test]
    fn a_missing_secret_names_it_and_where_it_was_looked_for() {
        let e = BootError::SecretAbsent {
            name: "consul/tokens/agent".into(),
            location: "/kraken/c/consul/tokens/agent".into(),
            waited: Duration::from_secs(600),
        };
        let text = e.to_string();
        assert!(text.contains("consul/tokens/agent"), "{text}");
        assert!(text.contains("/kraken/c/consul/tokens/agent"), "{text}");
        assert!(text.contains("600s"), "{text}");
    }
}
