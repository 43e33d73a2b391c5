//! What every certificate the crate signs shares: a random serial, a
//! backdated start, and errors that name what was being generated.

use std::time::{Duration, SystemTime};

use rcgen::SerialNumber;
use time::OffsetDateTime;

use crate::error::PkiError;

pub(crate) fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |e| PkiError::Generate {
        what,
        detail: e.to_string(),
    }
}

pub(crate) fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    // Positive, and never a leading zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// A little before now: a node whose clock is a few seconds behind the
/// issuer's still accepts the certificate. At most a twentieth of the
/// lifetime, so that short test lifetimes still renew on schedule.
pub(crate) fn backdated(now: SystemTime, lifetime: Duration) -> SystemTime {
    now - Duration::from_secs(60).min(lifetime / 20)
}
