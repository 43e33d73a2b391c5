//! A secret value that does not print itself.

use std::fmt;

use base64::Engine as _;

/// A secret value. Prints as `<redacted>`; [`Secret::expose`] is the only way
/// to the value, so that every place a value leaves the process is visible.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

pub(crate) const REDACTED: &str = "<redacted>";

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

    /// A token SecretID derived from `key` and `label` (HMAC-SHA256, the
    /// first 16 bytes as a v4 UUID): whoever holds the key computes it,
    /// nobody else can. Each node's own Consul agent token is
    /// `derived_token(node-token key, node name)`, so the key's holders
    /// (the agents) need no store transaction to hand it out
    /// (`docs/operations.md`, node tokens).
    pub fn derived_token(key: &Secret, label: &str) -> Secret {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"kraken node token v1\0");
        mac.update(label.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Secret(
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string(),
        )
    }

    /// A short public name of a key: the first 8 hex digits of its
    /// SHA-256. Tells which key something was derived with without
    /// saying anything usable about the key.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret_store::Created;

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
    fn derived_tokens_are_v4_uuids_fixed_by_key_and_label() {
        let key = Secret::new("k1");
        let a = Secret::derived_token(&key, "i-0a");
        assert_eq!(a, Secret::derived_token(&key, "i-0a"), "the same inputs");
        assert_ne!(a, Secret::derived_token(&key, "i-0b"), "another node");
        assert_ne!(
            a,
            Secret::derived_token(&Secret::new("k2"), "i-0a"),
            "another key"
        );
        let u = uuid::Uuid::parse_str(a.expose()).unwrap();
        assert_eq!(u.get_version_num(), 4);
        // HMAC-SHA256("k1", "kraken node token v1\0i-0a"), first 16 bytes,
        // version and variant bits set: fixed, so nodes of two agent
        // versions derive the same token.
        assert_eq!(a.expose(), "fe4344d7-cade-4def-813d-32d09a31fd80");
    }

    #[test]
    fn fingerprints_are_8_hex_digits_of_sha256() {
        assert_eq!(Secret::new("k1").fingerprint(), "6ab9f1eb");
        assert_ne!(
            Secret::new("k1").fingerprint(),
            Secret::new("k2").fingerprint()
        );
    }
}
