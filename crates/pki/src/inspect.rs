//! Reading certificates the agent finds: what it needs to know to decide
//! on renewal and to report.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;

use crate::error::PkiError;
use crate::pem::pem_der;

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

pub(crate) fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
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
