//! What the server and its handle share: the instance, the issued tokens,
//! the faults and the request counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Faults, InstanceData, TokenMode};

/// Requests received (counted on arrival, so faulted ones count too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `PUT /latest/api/token` requests.
    pub token_puts: u64,
    pub gets: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Requests per path, any method.
    pub by_path: BTreeMap<String, u64>,
}

impl Stats {
    pub fn path(&self, path: &str) -> u64 {
        self.by_path.get(path).copied().unwrap_or(0)
    }
}

pub(crate) struct Inner {
    pub(crate) data: InstanceData,
    pub(crate) mode: TokenMode,
    pub(crate) tokens: HashMap<String, Instant>,
    pub(crate) stats: Stats,
}

pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    // A watch channel so that hanging requests wake up when `hang` is cleared.
    pub(crate) faults: watch::Sender<Faults>,
    pub(crate) stop: watch::Receiver<()>,
    pub(crate) started: SystemTime,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
