//! Why a secret could not be read or written, with the fix in the message.

use std::path::PathBuf;

use kraken_aws::Failure;
use kraken_settings::InvalidSetting;

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
        /// The IAM action that failed, e.g. `ssm:GetParameter`. For a
        /// batched read (`ssm:GetParameters`), `name` and `parameter` list
        /// every name of the batch, separated by ", ".
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
    let mut text = if parameter.contains(", ") {
        format!(
            "secrets {name} (SSM parameters {parameter}): {}",
            failure.describe(action)
        )
    } else {
        format!(
            "secret {name} (SSM parameter {parameter}): {}",
            failure.describe(action)
        )
    };
    if matches!(failure, Failure::Rejected { code, .. } if code == "InvalidKeyId") {
        text.push_str("; check [secrets] kms_key_id: the key must exist in this region");
    }
    if let Failure::AccessDenied { .. } = failure {
        // A batched read names every parameter of the batch.
        let resources: Vec<String> = parameter
            .split(", ")
            .map(|p| format!("arn:aws:ssm:<region>:<account>:parameter{p}"))
            .collect();
        if resources.len() == 1 {
            text.push_str(&format!("; the resource is {}", resources[0]));
        } else {
            text.push_str(&format!(
                "; the resources are {} (a batched read needs the grant on each)",
                resources.join(", ")
            ));
        }
        if let Some(key) = kms_key_id {
            let kms_action = if action.starts_with("ssm:GetParameter") {
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
