//! Autopilot's settings for a cluster that lives for years: rendered into
//! the configs (`autopilot` blocks), which Consul and Nomad read only when
//! the cluster is first bootstrapped. A cluster bootstrapped before, or
//! whose expected server count changed, gets them through the operator API.

use kraken_hashi::{Consul, HashiError, Nomad};

/// The settings the templates render, as the operator API words them:
/// dead servers removed once a replacement is healthy, never below the
/// expected count.
fn wanted(current: &serde_json::Value, servers: u8) -> Option<serde_json::Value> {
    let mut want = current.clone();
    want["CleanupDeadServers"] = true.into();
    want["MinQuorum"] = u64::from(servers).into();
    (want != *current).then_some(want)
}

/// The configuration Consul's autopilot should have, if it differs from
/// what it has: read with the servers' own token (`operator:read`); the
/// caller writes it with the management token only then.
pub async fn consul_change(
    reader: &Consul,
    servers: u8,
) -> Result<Option<serde_json::Value>, HashiError> {
    Ok(wanted(&reader.autopilot_config().await?, servers))
}

/// The same for Nomad's.
pub async fn nomad_change(
    reader: &Nomad,
    servers: u8,
) -> Result<Option<serde_json::Value>, HashiError> {
    Ok(wanted(&reader.autopilot_config().await?, servers))
}

#[cfg(test)]
mod tests {
    use super::wanted;

    #[test]
    fn only_a_differing_configuration_is_written_and_the_rest_kept() {
        let current = serde_json::json!({
            "CleanupDeadServers": true, "MinQuorum": 3, "LastContactThreshold": "200ms",
            "ModifyIndex": 7,
        });
        assert_eq!(wanted(&current, 3), None);
        let want = wanted(&current, 5).unwrap();
        assert_eq!(want["MinQuorum"], 5);
        assert_eq!(want["LastContactThreshold"], "200ms");
        let old = serde_json::json!({ "CleanupDeadServers": false, "MinQuorum": 0 });
        let want = wanted(&old, 3).unwrap();
        assert_eq!(want["CleanupDeadServers"], true);
        assert_eq!(want["MinQuorum"], 3);
    }
}
