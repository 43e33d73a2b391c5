//! Leaf certificates: what a node's Consul and Nomad present, signed by
//! one of its role's intermediates.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::error::PkiError;
use crate::inspect::{CertInfo, inspect};
use crate::signing::{backdated, gen_err, offset, serial};

/// A leaf certificate, its chain up to (not including) the root, and its
/// key.
pub struct Leaf {
    /// Leaf then intermediate: what `cert_file` holds, so that peers that
    /// trust only the root can build the chain.
    pub chain_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("info", &self.info)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A leaf for `dns` names and `ips`, signed by the intermediate
/// `issuer_pem` with `issuer_key`, valid for `lifetime` from now and never
/// past `issuer_not_after`. The caller checks the names.
pub(crate) fn issue(
    issuer_pem: &str,
    issuer_key: &KeyPair,
    issuer_not_after: SystemTime,
    dns: &[String],
    ips: &[IpAddr],
    lifetime: Duration,
) -> Result<Leaf, PkiError> {
    let what = || format!("a leaf certificate for {}", dns.join(", "));
    let key = KeyPair::generate().map_err(gen_err(what()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = dns.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.clone());
    }
    for name in dns {
        let ia5 = name.clone().try_into().map_err(gen_err(what()))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Consul and Nomad use one certificate both ways: as server and as
    // client of their peers.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    let not_after = (now + lifetime).min(issuer_not_after);
    params.not_before = offset(backdated(now, lifetime));
    params.not_after = offset(not_after);
    params.serial_number = Some(serial());
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_pem(issuer_pem, issuer_key)
        .map_err(gen_err("the intermediate issuer"))?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err(what()))?;
    let info = inspect(&cert.pem(), "the new leaf")?;
    Ok(Leaf {
        chain_pem: format!("{}{}", cert.pem(), issuer_pem),
        key_pem: key.serialize_pem(),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;
    use crate::names::Authority;
    use crate::testing::{YEAR, names};

    #[test]
    fn leaves_never_outlive_their_intermediate_and_renew_at_the_fraction() {
        let ca = Ca::generate("c1", Duration::from_secs(3600)).unwrap();
        let i = ca
            .issue_intermediate(Authority::ConsulServer, &names())
            .unwrap();
        let leaf = i.issue(&["server.dc1.consul".into()], &[], YEAR).unwrap();
        assert!(leaf.info.not_after <= i.not_after());
        let info = CertInfo {
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(300),
            ..leaf.info
        };
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(!info.due_for_renewal(at(199), 2.0 / 3.0));
        assert!(info.due_for_renewal(at(200), 2.0 / 3.0));
        assert_eq!(info.remaining(at(250)), Duration::from_secs(50));
        assert_eq!(info.remaining(at(400)), Duration::ZERO);
    }
}
