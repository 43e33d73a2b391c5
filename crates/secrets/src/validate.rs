//! The rules for secret and cluster names, shared by both backends.

use crate::error::SecretError;

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
pub(crate) fn validate_cluster(cluster: &str) -> Result<(), SecretError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;

    #[test]
    fn names() {
        for ok in [
            names::GOSSIP_KEY,
            names::CONSUL_INITIAL_MANAGEMENT,
            names::CONSUL_AGENT,
            names::CONSUL_NOMAD_SERVER,
            names::CONSUL_NOMAD_CLIENT,
            names::CONSUL_SERVER,
            names::NOMAD_MANAGEMENT,
            names::NOMAD_AGENT,
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
}
