//! The cluster PKI (design in `docs/pki.md`).
//!
//! One root CA per cluster, and under it one **intermediate per role**
//! (Consul server, Consul client, Nomad server, Nomad client), each with
//! X.509 name constraints that permit only the names that role's
//! certificates carry: `server.<datacenter>.<domain>` for Consul servers,
//! `client.<region>.nomad` for Nomad clients, and so on, plus `localhost`.
//! A node holds (through IAM on the secret store) only the intermediates of
//! its own roles and issues its leaf certificates itself. A Nomad client
//! that signs a `server.<region>.nomad` certificate with its intermediate
//! gets one every verifier rejects — Go's `crypto/x509` in Consul and
//! Nomad and webpki in the agent enforce the constraints — and
//! [`Intermediate::issue`] refuses to make it in the first place.
//!
//! Keys are ECDSA P-256. A CA or intermediate travels as one PEM *bundle*
//! (its certificates, then its key) so that it is created with one atomic
//! create in the secret store; leaf keys never leave the node.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate {what}: {detail}")]
    Generate { what: String, detail: String },
    #[error("{what} is not a valid PEM bundle: {detail}")]
    Bundle { what: String, detail: String },
    #[error(
        "the {authority} intermediate may not issue a certificate for {name:?} \
         (it permits {permitted}); a node can only get certificates for its own roles"
    )]
    NotPermitted {
        authority: String,
        name: String,
        permitted: String,
    },
    #[error("{what} is not a valid certificate: {detail}")]
    Certificate { what: String, detail: String },
}

/// The names the cluster's certificates are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNames {
    pub cluster: String,
    pub consul_datacenter: String,
    /// Consul's `domain`, "consul" unless changed.
    pub consul_domain: String,
    pub nomad_region: String,
}

/// An intermediate CA, one per role that needs certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Authority {
    ConsulServer,
    ConsulClient,
    NomadServer,
    NomadClient,
}

impl Authority {
    pub const ALL: [Authority; 4] = [
        Authority::ConsulServer,
        Authority::ConsulClient,
        Authority::NomadServer,
        Authority::NomadClient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Authority::ConsulServer => "consul-server",
            Authority::ConsulClient => "consul-client",
            Authority::NomadServer => "nomad-server",
            Authority::NomadClient => "nomad-client",
        }
    }

    /// The name Consul or Nomad checks with `verify_server_hostname`, and
    /// the only service name this authority's certificates may carry.
    pub fn role_name(self, names: &ClusterNames) -> String {
        match self {
            Authority::ConsulServer => {
                format!("server.{}.{}", names.consul_datacenter, names.consul_domain)
            }
            Authority::ConsulClient => {
                format!("client.{}.{}", names.consul_datacenter, names.consul_domain)
            }
            Authority::NomadServer => format!("server.{}.nomad", names.nomad_region),
            Authority::NomadClient => format!("client.{}.nomad", names.nomad_region),
        }
    }

    /// The DNS subtrees the intermediate permits: the role name and
    /// `localhost` (the local CLI and the agent connect to 127.0.0.1 or
    /// localhost). IP addresses are not constrained: every leaf carries its
    /// node's own addresses, and an address says nothing about a role.
    pub fn permitted_names(self, names: &ClusterNames) -> Vec<String> {
        vec![self.role_name(names), "localhost".to_owned()]
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |e| PkiError::Generate {
        what,
        detail: e.to_string(),
    }
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    // Positive, and never a leading zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// A little before now: a node whose clock is a few seconds behind the
/// issuer's still accepts the certificate. At most a twentieth of the
/// lifetime, so that short test lifetimes still renew on schedule.
fn backdated(now: SystemTime, lifetime: Duration) -> SystemTime {
    now - Duration::from_secs(60).min(lifetime / 20)
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
    fn new(chain: Vec<String>, key: KeyPair, what: &str) -> Result<Intermediate, PkiError> {
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
        let not_after = (now + lifetime).min(self.not_after);
        params.not_before = offset(backdated(now, lifetime));
        params.not_after = offset(not_after);
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.chain[0], &self.key)
            .map_err(gen_err("the intermediate issuer"))?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err(what()))?;
        let info = inspect(&cert.pem(), "the new leaf")?;
        Ok(Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.chain[0]),
            key_pem: key.serialize_pem(),
            info,
        })
    }
}

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

/// What the agent needs to know about a certificate it finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl CertInfo {
    /// Whether the certificate has lived `renew_fraction` of its lifetime
    /// (or more) at `now`.
    pub fn due_for_renewal(&self, now: SystemTime, renew_fraction: f64) -> bool {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let renew_at = self.not_before + lifetime.mul_f64(renew_fraction.clamp(0.0, 1.0));
        now >= renew_at
    }

    /// Time left before it expires; zero once expired.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

fn pem_der(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| PkiError::Certificate {
            what: what.into(),
            detail: e.to_string(),
        })?;
    Ok(p.contents)
}

/// The first certificate of `pem` (a leaf or a chain starting with it).
pub fn inspect(pem: &str, what: &str) -> Result<CertInfo, PkiError> {
    let der = pem_der(pem, what)?;
    inspect_der(&der, what)
}

pub fn inspect_der(der: &[u8], what: &str) -> Result<CertInfo, PkiError> {
    let bad = |detail: String| PkiError::Certificate {
        what: what.into(),
        detail,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns_names.push((*n).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: to_system_time(cert.validity().not_before.timestamp()),
        not_after: to_system_time(cert.validity().not_after.timestamp()),
        dns_names,
        ips,
    })
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
fn split_bundle(bundle: &str, what: &str) -> Result<(Vec<String>, KeyPair), PkiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClusterNames {
        ClusterNames {
            cluster: "c1".into(),
            consul_datacenter: "dc1".into(),
            consul_domain: "consul".into(),
            nomad_region: "global".into(),
        }
    }

    const YEAR: Duration = Duration::from_secs(365 * 86_400);

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
