//! `[metrics]`: the agent's own Prometheus metrics (`docs/operations.md`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where the agent serves its metrics. The endpoint has neither TLS nor
/// authentication, so it listens on a loopback address only: a collector
/// on the node (Prometheus in agent mode, Grafana Alloy, an OpenTelemetry
/// collector) scrapes it and forwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// `host:port` on loopback; an empty string turns the endpoint off.
    /// Port 0 takes any free port (`status.json` → `steps.metrics` says
    /// which).
    pub address: String,
}

pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9469";

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            address: DEFAULT_METRICS_ADDRESS.into(),
        }
    }
}

impl MetricsSettings {
    /// The address to listen on, when the endpoint is on.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.address.is_empty() {
            return Ok(());
        }
        match self.address.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => Ok(()),
            Ok(_) => Err(format!(
                "metrics.address = {:?}; expected a loopback address (127.0.0.1:PORT or \
                 [::1]:PORT): the endpoint has no TLS nor authentication",
                self.address
            )),
            Err(_) => Err(format!(
                "metrics.address = {:?}; expected host:port, e.g. {DEFAULT_METRICS_ADDRESS:?}, \
                 or \"\" for no endpoint",
                self.address
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_nothing() {
        let at = |a: &str| MetricsSettings { address: a.into() };
        assert!(MetricsSettings::default().validate().is_ok());
        assert!(at("").validate().is_ok());
        assert_eq!(at("").listen(), None);
        assert!(at("[::1]:0").validate().is_ok());
        let e = at("0.0.0.0:9469").validate().unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = at("localhost").validate().unwrap_err();
        assert!(e.contains("host:port"), "{e}");
    }
}
