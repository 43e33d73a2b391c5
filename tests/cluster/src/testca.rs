//! Throwaway certificate authorities for the harness's own TLS endpoints
//! (the bench's EC2 endpoint, the warm pool's registry): VMs trust one
//! through `UserData::extra_ca`, as an instance trusts a private CA baked
//! into its image.

use anyhow::Result;

/// A new CA named `ca_name` and a certificate it signs for `san` (a DNS
/// name, or an IP address, which rcgen makes an IP SAN): (CA PEM, cert PEM,
/// key PEM).
pub fn ca_and_leaf(ca_name: &str, san: &str) -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec![san.to_owned()])?.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), leaf.pem(), key.serialize_pem()))
}
