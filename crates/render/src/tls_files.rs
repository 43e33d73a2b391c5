use std::path::{Path, PathBuf};

use kraken_settings::Settings;
use serde::Serialize;

/// Where a service's TLS files live: `<config dir>/tls/`. The one place
/// that says so, for the templates and for the agent that writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFiles {
    /// The cluster's root certificate.
    pub ca: PathBuf,
    /// The node's certificate, then its intermediate.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn consul(settings: &Settings) -> TlsFiles {
        TlsFiles::under(&settings.paths.consul_config_dir, "consul")
    }

    pub fn nomad(settings: &Settings) -> TlsFiles {
        TlsFiles::under(&settings.paths.nomad_config_dir, "nomad")
    }

    fn under(config_dir: &Path, name: &str) -> TlsFiles {
        let dir = config_dir.join("tls");
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }
}
