//! PEM: the certificates in a file, and the bundles (certificates, then
//! key) a CA or an intermediate travels as, so that it is created with one
//! atomic create in the secret store.

use rcgen::KeyPair;
use x509_parser::pem::Pem;

use crate::error::PkiError;

/// The DER of the first certificate in `pem`.
pub(crate) fn pem_der(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| PkiError::Certificate {
            what: what.into(),
            detail: e.to_string(),
        })?;
    Ok(p.contents)
}

/// Every certificate in a PEM file, in order.
pub fn certificates(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes())
        .flatten()
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// Splits a bundle into its certificate PEMs and its key.
pub(crate) fn split_bundle(bundle: &str, what: &str) -> Result<(Vec<String>, KeyPair), PkiError> {
    const KEY: &str = "-----BEGIN PRIVATE KEY-----";
    let bad = |detail: &str| PkiError::Bundle {
        what: what.into(),
        detail: detail.into(),
    };
    let at = bundle
        .find(KEY)
        .ok_or_else(|| bad("no PRIVATE KEY block"))?;
    let (certs, key) = bundle.split_at(at);
    let key = KeyPair::from_pem(key).map_err(|e| PkiError::Bundle {
        what: what.into(),
        detail: format!("the key does not parse: {e}"),
    })?;
    let mut out = Vec::new();
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = certs;
    while let Some(end) = rest.find(END) {
        let block = rest[..end + END.len()].trim_start();
        out.push(format!("{block}\n"));
        rest = &rest[end + END.len()..];
    }
    if out.is_empty() {
        return Err(bad("no CERTIFICATE block"));
    }
    Ok((out, key))
}
