//! The cluster's root CA, and the intermediates it issues with their name
//! constraints.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints,
};

use crate::error::PkiError;
use crate::inspect::inspect;
use crate::intermediate::Intermediate;
use crate::names::{Authority, ClusterNames};
use crate::pem::split_bundle;
use crate::signing::{backdated, gen_err, offset, serial};

/// The cluster's root CA: certificate and key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(<key redacted>)")
    }
}

impl Ca {
    /// A new self-signed root for `cluster`, valid for `lifetime`.
    pub fn generate(cluster: &str, lifetime: Duration) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(gen_err("the CA key"))?;
        let params = Ca::params(cluster, SystemTime::now(), lifetime);
        let cert = params.self_signed(&key).map_err(gen_err("the CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    fn params(cluster: &str, now: SystemTime, lifetime: Duration) -> CertificateParams {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kraken {cluster} root CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "kraken");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset(backdated(now, lifetime));
        params.not_after = offset(now + lifetime);
        params.serial_number = Some(serial());
        params
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Certificate then key, for the secret store.
    pub fn to_bundle(&self) -> String {
        format!("{}{}", self.cert_pem, self.key.serialize_pem())
    }

    pub fn from_bundle(bundle: &str) -> Result<Ca, PkiError> {
        let (certs, key) = split_bundle(bundle, "the CA bundle")?;
        let [cert_pem] = <[String; 1]>::try_from(certs).map_err(|c| PkiError::Bundle {
            what: "the CA bundle".into(),
            detail: format!("expected 1 certificate, found {}", c.len()),
        })?;
        Ok(Ca { cert_pem, key })
    }

    /// When the root expires.
    pub fn not_after(&self) -> Result<SystemTime, PkiError> {
        Ok(inspect(&self.cert_pem, "the CA certificate")?.not_after)
    }

    /// The intermediate for `authority`, valid as long as the root.
    pub fn issue_intermediate(
        &self,
        authority: Authority,
        names: &ClusterNames,
    ) -> Result<Intermediate, PkiError> {
        let what = format!("the {authority} intermediate");
        let root_not_after = self.not_after()?;
        let key = KeyPair::generate().map_err(gen_err(what.clone()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("kraken {} {authority} CA", names.cluster),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "kraken");
        // No sub-CAs below an intermediate.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: authority
                .permitted_names(names)
                .into_iter()
                .map(GeneralSubtree::DnsName)
                .collect(),
            excluded_subtrees: Vec::new(),
        });
        let now = SystemTime::now();
        params.not_before = offset(backdated(now, Duration::from_secs(3600)));
        params.not_after = offset(root_not_after);
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(gen_err("the CA issuer"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(gen_err(what.clone()))?;
        Intermediate::new(vec![cert.pem(), self.cert_pem.clone()], key, &what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{YEAR, names};

    #[test]
    fn bundles_round_trip() {
        let ca = Ca::generate("c1", YEAR).unwrap();
        let again = Ca::from_bundle(&ca.to_bundle()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let i = ca
            .issue_intermediate(Authority::NomadClient, &names())
            .unwrap();
        let j = Intermediate::from_bundle(&i.to_bundle(), "x").unwrap();
        assert_eq!(j.root_pem(), ca.cert_pem());
        assert_eq!(j.permitted(), ["client.global.nomad", "localhost"]);
        assert!(!format!("{ca:?}{i:?}").contains("PRIVATE"));
    }
}
