//! `[secrets]`: where the cluster's secrets live. The stores themselves are
//! `kraken-secrets`; this is only what the file says about them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[secrets]` in agent.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSettings {
    pub backend: Backend,
    /// First segment of every SSM parameter name: `/<ssm_prefix>/<cluster>/...`.
    pub ssm_prefix: String,
    /// KMS key (id, ARN or `alias/...`) that encrypts the parameters; unset
    /// means the account's `aws/ssm` key.
    pub kms_key_id: Option<String>,
    /// Root of the directory backend: `<dir>/<cluster>/<name>`.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Ssm,
    Dir,
}

pub const DEFAULT_SSM_PREFIX: &str = "kraken";
pub const DEFAULT_DIR: &str = "/var/lib/kraken/secrets";

impl Default for SecretSettings {
    fn default() -> Self {
        SecretSettings {
            backend: Backend::Ssm,
            ssm_prefix: DEFAULT_SSM_PREFIX.to_owned(),
            kms_key_id: None,
            dir: PathBuf::from(DEFAULT_DIR),
        }
    }
}

/// A `[secrets]` value a TOML parse accepts and the stores cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {message}")]
pub struct InvalidSetting {
    /// The key at fault, e.g. `secrets.ssm_prefix`.
    pub key: &'static str,
    /// The value and the accepted form.
    pub message: String,
}

impl SecretSettings {
    /// Checks the values a TOML parse cannot, naming the key at fault.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        validate_ssm_prefix(&self.ssm_prefix)?;
        if self
            .kms_key_id
            .as_ref()
            .is_some_and(|k| k.trim().is_empty())
        {
            return Err(InvalidSetting {
                key: "secrets.kms_key_id",
                message: "is empty; leave it out to use the account's aws/ssm key".into(),
            });
        }
        if !self.dir.is_absolute() {
            return Err(InvalidSetting {
                key: "secrets.dir",
                message: format!("{} is not an absolute path", self.dir.display()),
            });
        }
        Ok(())
    }
}

/// Checks `[secrets] ssm_prefix`: SSM's name rules for the first levels of
/// the parameter path.
pub fn validate_ssm_prefix(prefix: &str) -> Result<(), InvalidSetting> {
    let fail = |message: &str| {
        Err(InvalidSetting {
            key: "secrets.ssm_prefix",
            message: format!("{prefix:?} {message}"),
        })
    };
    if prefix.is_empty() {
        return fail("is empty");
    }
    if prefix.starts_with('/') || prefix.ends_with('/') {
        return fail("starts or ends with '/'; write it without, e.g. \"kraken\"");
    }
    if prefix
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return fail("has an empty, '.' or '..' segment");
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b))
    {
        return fail("has a character SSM does not allow (a-z, A-Z, 0-9, '_', '.', '-', '/')");
    }
    let first = prefix.to_ascii_lowercase();
    if first.starts_with("aws") || first.starts_with("ssm") {
        return fail("starts with \"aws\" or \"ssm\", which SSM reserves");
    }
    // SSM allows 15 levels; <cluster> and the deepest name take the rest.
    if prefix.split('/').count() > 8 {
        return fail("has more than 8 levels");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_form() {
        let s: SecretSettings = toml::from_str("").unwrap();
        assert_eq!(s, SecretSettings::default());
        assert_eq!(s.backend, Backend::Ssm);
        assert_eq!(s.ssm_prefix, "kraken");
        assert_eq!(s.dir, PathBuf::from("/var/lib/kraken/secrets"));
        s.validate().unwrap();

        let s: SecretSettings = toml::from_str(
            "backend = \"dir\"\nssm_prefix = \"org/kraken\"\nkms_key_id = \"alias/kraken\"\n\
             dir = \"/srv/secrets\"\n",
        )
        .unwrap();
        assert_eq!(s.backend, Backend::Dir);
        assert_eq!(s.kms_key_id.as_deref(), Some("alias/kraken"));
        s.validate().unwrap();

        let e = toml::from_str::<SecretSettings>("backend = \"vault\"").unwrap_err();
        assert!(e.to_string().contains("vault"), "{e}");
        let e = toml::from_str::<SecretSettings>("kms_key = \"x\"").unwrap_err();
        assert!(e.to_string().contains("kms_key"), "{e}");

        for (text, key) in [
            ("ssm_prefix = \"/kraken\"", "ssm_prefix"),
            ("ssm_prefix = \"\"", "ssm_prefix"),
            ("ssm_prefix = \"a b\"", "ssm_prefix"),
            ("kms_key_id = \" \"", "secrets.kms_key_id"),
            ("dir = \"relative\"", "secrets.dir"),
        ] {
            let s: SecretSettings = toml::from_str(text).unwrap();
            let e = s.validate().unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }
}
