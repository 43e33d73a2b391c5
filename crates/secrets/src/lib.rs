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
mod ssm;
mod store;

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use kraken_aws::Failure;
use kraken_settings::InvalidSetting;

pub use dir::DirStore;
pub use ssm::{SsmStore, ssm_client};
pub use store::Store;

/// The names the agent uses.
pub mod names {
    /// Consul's gossip encryption key; every node reads it.
    pub const GOSSIP_KEY: &str = "consul/gossip-key";
    /// Consul's `initial_management` token; Consul servers only.
    pub const CONSUL_INITIAL_MANAGEMENT: &str = "consul/tokens/initial-management";
    /// The Consul agent token every node installs.
    pub const CONSUL_AGENT: &str = "consul/tokens/agent";
    /// Nomad servers' Consul token.
    pub const CONSUL_NOMAD_SERVER: &str = "consul/tokens/nomad-server";
    /// Nomad clients' Consul token.
    pub const CONSUL_NOMAD_CLIENT: &str = "consul/tokens/nomad-client";
    /// Nomad's management token, the `BootstrapSecret` of `nomad acl bootstrap`.
    pub const NOMAD_MANAGEMENT: &str = "nomad/tokens/management";
    /// The Nomad servers' gossip encryption key; Nomad servers create and
    /// read it (Nomad clients do not gossip).
    pub const NOMAD_GOSSIP_KEY: &str = "nomad/gossip-key";
    /// The cluster's root CA, certificate and key (`docs/pki.md`); Consul
    /// servers only.
    pub const PKI_CA: &str = "pki/ca";
    /// The role intermediates, certificate, root and key each; a node reads
    /// those of its own roles.
    pub const PKI_CONSUL_SERVER: &str = "pki/consul-server";
    pub const PKI_CONSUL_CLIENT: &str = "pki/consul-client";
    pub const PKI_NOMAD_SERVER: &str = "pki/nomad-server";
    pub const PKI_NOMAD_CLIENT: &str = "pki/nomad-client";
}

/// A secret value. Prints as `<redacted>`; [`Secret::expose`] is the only way
/// to the value, so that every place a value leaves the process is visible.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

const REDACTED: &str = "<redacted>";

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A random UUID (v4): Consul and Nomad accept only UUIDs as token
    /// SecretIDs.
    pub fn random_token() -> Secret {
        Secret(uuid::Uuid::new_v4().to_string())
    }

    /// 32 random bytes in standard base64, as `consul keygen` makes: the
    /// size Consul's AES-256 gossip encryption wants.
    pub fn gossip_key() -> Secret {
        let mut key = [0u8; 32];
        // The OS random source failing is not something to carry on from:
        // a weak key would be silently worse than no boot.
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        key.fill(0);
        Secret(encoded)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// What [`SecretStore::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// This call's value is the secret now.
    Won,
    /// Someone created it first; this is their value, to be used instead.
    Lost(Secret),
}

/// Where a cluster's secrets live.
///
/// Every method takes a relative name (see the crate docs) and scopes it to
/// the store's cluster.
pub trait SecretStore: Send + Sync {
    /// The secret, or `None` when it has not been created yet.
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Secret>, SecretError>> + Send;

    /// Creates the secret unless it exists, atomically: of any number of
    /// concurrent creators exactly one gets [`Created::Won`], every other
    /// one [`Created::Lost`] with the winner's value.
    fn create(
        &self,
        name: &str,
        value: &Secret,
    ) -> impl Future<Output = Result<Created, SecretError>> + Send;

    /// Writes the secret whether or not it exists (rotation). Readers see
    /// the old value or the new one, never a mix.
    fn put(
        &self,
        name: &str,
        value: &Secret,
    ) -> impl Future<Output = Result<(), SecretError>> + Send;

    /// Removes the secret; removing one that does not exist is not an error.
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), SecretError>> + Send;

    /// The secret, created with `generate` if it does not exist yet. Racing
    /// callers all get the same value: the first creator's.
    fn get_or_create(
        &self,
        name: &str,
        generate: impl FnOnce() -> Secret + Send,
    ) -> impl Future<Output = Result<Secret, SecretError>> + Send {
        async move {
            if let Some(existing) = self.get(name).await? {
                return Ok(existing);
            }
            let value = generate();
            match self.create(name, &value).await? {
                Created::Won => {
                    log::info!("secret {name}: created");
                    Ok(value)
                }
                Created::Lost(winner) => {
                    log::info!("secret {name}: another node created it first; using theirs");
                    Ok(winner)
                }
            }
        }
    }
}

/// Checks a relative secret name.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    let invalid = |reason| {
        Err(SecretError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > 256 {
        return invalid("it is longer than 256 characters");
    }
    if name.starts_with('/') {
        return invalid("it starts with '/' (names are relative to the cluster)");
    }
    if name.ends_with('/') {
        return invalid("it ends with '/'");
    }
    if name.contains("//") {
        return invalid("it has an empty segment");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'/')
    {
        return invalid("it has a character other than a-z, 0-9, '-' and '/'");
    }
    Ok(())
}

// The cluster is one path segment in both backends; the tag rules in
// kraken-intent are stricter, this only keeps paths well-formed.
fn validate_cluster(cluster: &str) -> Result<(), SecretError> {
    if cluster.is_empty()
        || cluster.len() > 64
        || !cluster
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(SecretError::InvalidCluster {
            cluster: cluster.to_owned(),
        });
    }
    Ok(())
}

/// Why a secret could not be read or written. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret name {name:?} is not valid: {reason}; a name is segments of a-z, 0-9 and '-' \
         separated by '/', e.g. consul/gossip-key"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "cluster name {cluster:?} cannot scope secrets: it must be 1-64 characters of a-z, 0-9 \
         and '-'"
    )]
    InvalidCluster { cluster: String },
    /// A `[secrets]` value the stores cannot use.
    #[error("{0}")]
    Settings(#[from] InvalidSetting),
    #[error("secret {name}: refusing to store an empty value")]
    EmptyValue { name: String },
    #[error("{}", ssm_message(name, parameter, action, failure, kms_key_id.as_deref()))]
    Ssm {
        name: String,
        parameter: String,
        /// The IAM action that failed, e.g. `ssm:GetParameter`.
        action: &'static str,
        /// Boxed: it is the largest part, and errors travel by value.
        failure: Box<Failure>,
        kms_key_id: Option<String>,
    },
    #[error("secret {name} at {location} is unusable: {reason}")]
    Corrupt {
        name: String,
        location: String,
        reason: &'static str,
    },
    #[error(
        "secret {name} at {location} exists but could not be read back after {attempts} tries: \
         something is deleting or replacing it concurrently"
    )]
    Vanished {
        name: String,
        location: String,
        attempts: u32,
    },
    #[error("{}", dir_message(name, op, path, source))]
    Dir {
        name: String,
        /// What was being done, e.g. "create directory".
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SecretError {
    /// Whether trying again later can help: throttling, timeouts and a
    /// secret changing underfoot can pass; denied access, bad names and
    /// broken files need a person.
    pub fn is_transient(&self) -> bool {
        match self {
            SecretError::Ssm { failure, .. } => failure.is_transient(),
            SecretError::Vanished { .. } => true,
            SecretError::Dir { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            SecretError::InvalidName { .. }
            | SecretError::InvalidCluster { .. }
            | SecretError::Settings(_)
            | SecretError::EmptyValue { .. }
            | SecretError::Corrupt { .. } => false,
        }
    }

    /// Whether AWS or the file system refused this node access: the fix is
    /// a permission, not a retry.
    pub fn is_access_denied(&self) -> bool {
        match self {
            SecretError::Ssm { failure, .. } => {
                matches!(
                    **failure,
                    Failure::AccessDenied { .. } | Failure::Credentials { .. }
                )
            }
            SecretError::Dir { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

fn ssm_message(
    name: &str,
    parameter: &str,
    action: &str,
    failure: &Failure,
    kms_key_id: Option<&str>,
) -> String {
    let mut text = format!(
        "secret {name} (SSM parameter {parameter}): {}",
        failure.describe(action)
    );
    if matches!(failure, Failure::Rejected { code, .. } if code == "InvalidKeyId") {
        text.push_str("; check [secrets] kms_key_id: the key must exist in this region");
    }
    if let Failure::AccessDenied { .. } = failure {
        text.push_str(&format!(
            "; the resource is arn:aws:ssm:<region>:<account>:parameter{parameter}"
        ));
        if let Some(key) = kms_key_id {
            let kms_action = if action == "ssm:GetParameter" {
                "kms:Decrypt"
            } else {
                "kms:Encrypt"
            };
            text.push_str(&format!(
                "; the parameters are encrypted with KMS key {key}, so the role also needs \
                 {kms_action} on that key"
            ));
        }
        text.push_str("; docs/secrets.md has the SSM and KMS policy for each role");
    }
    text
}

fn dir_message(name: &str, op: &str, path: &std::path::Path, source: &std::io::Error) -> String {
    let mut text = format!("secret {name}: could not {op} {}: {source}", path.display());
    match source.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => text
            .push_str(
                "; the agent runs as root and needs to write there: check the file system and \
                 the directory's owner and mode, or set [secrets] dir elsewhere",
            ),
        std::io::ErrorKind::NotADirectory => text.push_str(
            "; a file is in the way of a directory in that path: move it, or set [secrets] dir \
             elsewhere",
        ),
        _ => {}
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let s = Secret::new("hunter2-value");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(
            format!("{:?}", Created::Lost(s.clone())),
            "Lost(Secret(<redacted>))"
        );
        assert_eq!(s.expose(), "hunter2-value");
    }

    #[test]
    fn tokens_are_v4_uuids_and_differ() {
        let a = Secret::random_token();
        let b = Secret::random_token();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(a.expose()).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(a.expose().len(), 36);
    }

    #[test]
    fn gossip_keys_are_32_bytes_of_standard_base64() {
        let k = Secret::gossip_key();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(k.expose())
            .unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(k.expose().len(), 44);
        assert_ne!(k, Secret::gossip_key());
    }

    #[test]
    fn names() {
        for ok in [
            names::GOSSIP_KEY,
            names::CONSUL_INITIAL_MANAGEMENT,
            names::CONSUL_AGENT,
            names::CONSUL_NOMAD_SERVER,
            names::CONSUL_NOMAD_CLIENT,
            names::NOMAD_MANAGEMENT,
            "ca-key",
            "a/b/c-1",
        ] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "/consul/gossip-key",
            "consul/",
            "consul//x",
            "../etc/passwd",
            "consul/../x",
            "Consul/x",
            "consul/x y",
            "consul/x_y",
            "consul/.x",
        ] {
            let e = validate_name(bad).unwrap_err();
            assert!(matches!(e, SecretError::InvalidName { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn errors_never_carry_the_value_and_name_the_grant() {
        let e = SecretError::Ssm {
            name: "consul/gossip-key".into(),
            parameter: "/kraken/c1/consul/gossip-key".into(),
            action: "ssm:GetParameter",
            failure: Box::new(Failure::AccessDenied {
                code: "AccessDeniedException".into(),
                message: "no".into(),
            }),
            kms_key_id: Some("alias/k".into()),
        };
        let t = e.to_string();
        for needle in [
            "secret consul/gossip-key",
            "/kraken/c1/consul/gossip-key",
            "grant ssm:GetParameter",
            "kms:Decrypt",
            "alias/k",
            "docs/secrets.md",
        ] {
            assert!(t.contains(needle), "{needle} missing from {t}");
        }
        assert!(!e.is_transient());
        assert!(e.is_access_denied());
    }
}
