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
}
