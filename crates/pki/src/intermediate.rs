//! A role's intermediate CA: what its name constraints permit, and the
//! leaf certificates it issues inside them.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use x509_parser::extensions::GeneralName;

use crate::error::PkiError;
use crate::inspect::to_system_time;
use crate::leaf::{self, Leaf};
use crate::pem::{pem_der, split_bundle};

/// A role's intermediate CA: its certificate, the root above it, and its
/// key.
pub struct Intermediate {
    /// Intermediate first, then the root.
    chain: Vec<String>,
    key: KeyPair,
    authority: String,
    permitted: Vec<String>,
    not_after: SystemTime,
}

impl std::fmt::Debug for Intermediate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intermediate")
            .field("authority", &self.authority)
            .field("permitted", &self.permitted)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Intermediate {
    pub(crate) fn new(
        chain: Vec<String>,
        key: KeyPair,
        what: &str,
    ) -> Result<Intermediate, PkiError> {
        if chain.len() != 2 {
            return Err(PkiError::Bundle {
                what: what.into(),
                detail: format!(
                    "expected 2 certificates (intermediate, root), found {}",
                    chain.len()
                ),
            });
        }
        let der = pem_der(&chain[0], what)?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Certificate {
                what: what.into(),
                detail: e.to_string(),
            })?;
        let mut permitted = Vec::new();
        if let Ok(Some(nc)) = cert.name_constraints() {
            for subtree in nc.value.permitted_subtrees.iter().flatten() {
                if let GeneralName::DNSName(name) = subtree.base {
                    permitted.push(name.to_owned());
                }
            }
        }
        if permitted.is_empty() {
            // An intermediate without constraints could sign for any role:
            // refuse to use one rather than weaken the design silently.
            return Err(PkiError::Certificate {
                what: what.into(),
                detail: "it has no DNS name constraints".into(),
            });
        }
        Ok(Intermediate {
            authority: cert.subject().to_string(),
            permitted,
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            chain,
            key,
        })
    }

    /// Intermediate certificate, root certificate, key: for the secret store.
    pub fn to_bundle(&self) -> String {
        format!("{}{}", self.chain.concat(), self.key.serialize_pem())
    }

    pub fn from_bundle(bundle: &str, what: &str) -> Result<Intermediate, PkiError> {
        let (certs, key) = split_bundle(bundle, what)?;
        Intermediate::new(certs, key, what)
    }

    /// The cluster's root certificate, which every verifier trusts.
    pub fn root_pem(&self) -> &str {
        &self.chain[1]
    }

    pub fn cert_pem(&self) -> &str {
        &self.chain[0]
    }

    /// The DNS names (and their subdomains) this intermediate may sign.
    pub fn permitted(&self) -> &[String] {
        &self.permitted
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether `name` is inside a permitted subtree (RFC 5280: the name
    /// itself or a subdomain of it).
    pub fn permits(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.permitted.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            name == p || name.ends_with(&format!(".{p}"))
        })
    }

    /// A leaf certificate for `dns` names and `ips`, valid for `lifetime`
    /// from now (and never past this intermediate). Refuses a name outside
    /// the constraints: verifiers would reject it anyway.
    pub fn issue(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<Leaf, PkiError> {
        for name in dns {
            if !self.permits(name) {
                return Err(PkiError::NotPermitted {
                    authority: self.authority.clone(),
                    name: name.clone(),
                    permitted: self.permitted.join(", "),
                });
            }
        }
        self.issue_unchecked(dns, ips, lifetime)
    }

    /// [`Intermediate::issue`] without the name check. Only for tests that
    /// show the verifiers enforce the constraints on their own.
    #[doc(hidden)]
    pub fn issue_unchecked(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<Leaf, PkiError> {
        leaf::issue(
            &self.chain[0],
            &self.key,
            self.not_after,
            dns,
            ips,
            lifetime,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;
    use crate::names::Authority;
    use crate::pem::certificates;
    use crate::testing::{YEAR, names};

    #[test]
    fn a_client_intermediate_refuses_server_names() {
        let ca = Ca::generate("c1", YEAR).unwrap();
        let i = ca
            .issue_intermediate(Authority::NomadClient, &names())
            .unwrap();
        let err = i
            .issue(
                &["server.global.nomad".into()],
                &[],
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::NotPermitted { .. }), "{err}");
        assert!(!i.permits("server.global.nomad"));
        assert!(!i.permits("evilclient.global.nomad"));
        assert!(i.permits("x.client.global.nomad"));
        let leaf = i
            .issue(
                &["client.global.nomad".into(), "localhost".into()],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(600),
            )
            .unwrap();
        assert_eq!(leaf.info.dns_names, ["client.global.nomad", "localhost"]);
        assert_eq!(leaf.info.ips, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(certificates(&leaf.chain_pem).len(), 2);
    }

    #[test]
    fn an_unconstrained_ca_is_not_accepted_as_an_intermediate() {
        let ca = Ca::generate("c1", YEAR).unwrap();
        let fake = format!("{}{}", ca.to_bundle(), "");
        // Root cert twice in place of intermediate + root.
        let bundle = fake.replacen(
            "-----BEGIN PRIVATE KEY-----",
            &format!("{}-----BEGIN PRIVATE KEY-----", ca.cert_pem()),
            1,
        );
        let err = Intermediate::from_bundle(&bundle, "forged").unwrap_err();
        assert!(err.to_string().contains("no DNS name constraints"), "{err}");
    }

    /// What the agent's rustls clients do with a chain: webpki path
    /// building, which enforces name constraints on the way.
    fn webpki_verifies(root_pem: &str, leaf: &Leaf) -> Result<(), webpki::Error> {
        use rustls_pki_types::{CertificateDer, UnixTime};
        let root = CertificateDer::from(certificates(root_pem).remove(0));
        let anchor = webpki::anchor_from_trusted_cert(&root)?;
        let chain = certificates(&leaf.chain_pem);
        let ee_der = CertificateDer::from(chain[0].clone());
        let intermediates = vec![CertificateDer::from(chain[1].clone())];
        let ee = webpki::EndEntityCert::try_from(&ee_der)?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map(|_| ())
    }

    #[test]
    fn webpki_rejects_a_server_name_forged_with_a_client_intermediate() {
        let ca = Ca::generate("c1", YEAR).unwrap();
        let client = ca
            .issue_intermediate(Authority::NomadClient, &names())
            .unwrap();
        let honest = client
            .issue(
                &["client.global.nomad".into()],
                &[],
                Duration::from_secs(600),
            )
            .unwrap();
        webpki_verifies(ca.cert_pem(), &honest).unwrap();
        let forged = client
            .issue_unchecked(
                &["server.global.nomad".into()],
                &[],
                Duration::from_secs(600),
            )
            .unwrap();
        let err = webpki_verifies(ca.cert_pem(), &forged).unwrap_err();
        assert!(
            matches!(err, webpki::Error::NameConstraintViolation),
            "{err:?}"
        );
        // The same forgery under the server intermediate would verify: the
        // constraint is what tells them apart.
        let server = ca
            .issue_intermediate(Authority::NomadServer, &names())
            .unwrap();
        let real = server
            .issue(
                &["server.global.nomad".into()],
                &[],
                Duration::from_secs(600),
            )
            .unwrap();
        webpki_verifies(ca.cert_pem(), &real).unwrap();
    }
}
