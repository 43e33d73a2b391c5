//! The agent's clients for its local Consul and Nomad. With TLS on they
//! trust only the cluster CA and present the node's certificate (Consul and
//! Nomad verify their callers); the files are read when a client is made,
//! so a client made after a renewal presents the new certificate.

use kraken_hashi::{ClientTls, Consul, Nomad, Token};
use kraken_render::TlsFiles;
use kraken_settings::Settings;

use crate::BootError;

pub fn consul(settings: &Settings, token: Option<Token>) -> Result<Consul, BootError> {
    let tls = client_tls(settings.tls.enabled, &TlsFiles::consul(settings))?;
    Consul::with_tls(&settings.consul.http_addr, token, tls.as_ref()).map_err(BootError::hashi(
        "set up the Consul client (consul.http_addr, TLS files)",
    ))
}

pub fn nomad(settings: &Settings, token: Option<Token>) -> Result<Nomad, BootError> {
    let tls = client_tls(settings.tls.enabled, &TlsFiles::nomad(settings))?;
    Nomad::with_tls(&settings.nomad.http_addr, token, tls.as_ref()).map_err(BootError::hashi(
        "set up the Nomad client (nomad.http_addr, TLS files)",
    ))
}

fn client_tls(enabled: bool, files: &TlsFiles) -> Result<Option<ClientTls>, BootError> {
    if !enabled {
        return Ok(None);
    }
    // Before the first boot wrote them (doctor on a new machine), a client
    // that trusts nothing still says clearly that TLS failed.
    if !files.ca.exists() {
        return Ok(Some(ClientTls::from_pem(b"", None)));
    }
    let cert = (files.cert.exists() && files.key.exists())
        .then_some((files.cert.as_path(), files.key.as_path()));
    ClientTls::from_files(&files.ca, cert)
        .map(Some)
        .map_err(BootError::hashi("read the node's TLS files"))
}

/// Nomad's API on another node (`ip`, the local API's port and scheme): a
/// server that is leaving asks one that stays to mark it `left` in the
/// gossip pool once its own Nomad has stopped.
pub fn nomad_at(settings: &Settings, ip: &str, token: Option<Token>) -> Result<Nomad, BootError> {
    let addr = settings.nomad.http_addr.trim_end_matches('/');
    let (scheme, rest) = addr.split_once("://").unwrap_or(("http", addr));
    let port = rest.rsplit_once(':').map_or("4646", |(_, p)| p);
    let base = format!("{scheme}://{ip}:{port}");
    let tls = client_tls(settings.tls.enabled, &TlsFiles::nomad(settings))?;
    Nomad::with_tls(&base, token, tls.as_ref())
        .map_err(BootError::hashi("set up a Nomad client for another server"))
}
