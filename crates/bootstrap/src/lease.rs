//! The bootstrap lease: a Consul session holding a KV lock.
//!
//! The session has a TTL and is renewed by its holder; `behavior = release`
//! frees the lock when the session dies (the holder crashed or was cut off)
//! and the lock-delay keeps anyone from taking it for a moment after, so a
//! holder that was only slow cannot overlap its successor. Waiters block on
//! the lock key (Consul blocking queries), not on a timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kraken_hashi::{Consul, SessionBehavior};
use tokio::task::JoinHandle;

use crate::error::{BootstrapError, transient};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Session TTL (Consul accepts 10s to 24h). A dead holder is noticed
    /// within about twice this.
    pub ttl: Duration,
    pub lock_delay: Duration,
    /// Longest single blocking query while waiting.
    pub wait: Duration,
    /// Whether the session also ends when this node's serf health fails.
    /// Off for a lock held across a restart of this node's own Consul (the
    /// restart lock), which its TTL alone must outlive.
    pub node_health: bool,
    /// What the lease is for, in the session's name.
    pub purpose: &'static str,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(5),
            wait: Duration::from_secs(30),
            node_health: true,
            purpose: "bootstrap lease",
        }
    }
}

/// A held lease. Dropping it stops the renewals (the session then expires);
/// [`Lease::release`] gives it up at once.
pub struct Lease {
    consul: Consul,
    key: String,
    session: String,
    lost: Arc<AtomicBool>,
    renewer: JoinHandle<()>,
    /// Consul API calls made for the lease, for the figures; shared with
    /// the caller so that a wait that ends without the lease counts too.
    calls: Arc<AtomicU64>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Lease {
    /// Waits until this node holds the lock at `key`. `should_stop` is
    /// asked after every change of the lock: when it says the work is done,
    /// waiting ends with `Ok(None)`.
    pub async fn acquire<F, Fut>(
        consul: &Consul,
        key: &str,
        holder: &str,
        settings: &LeaseSettings,
        mut should_stop: F,
        calls: &Arc<AtomicU64>,
    ) -> Result<Option<Lease>, BootstrapError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool, BootstrapError>>,
    {
        let session = consul
            .session_create(
                &format!("kraken {} of {holder}", settings.purpose),
                settings.ttl,
                settings.lock_delay,
                SessionBehavior::Release,
                settings.node_health,
            )
            .await
            .map_err(BootstrapError::consul("create the lease session"))?;
        calls.fetch_add(1, Ordering::Relaxed);
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = spawn_renewer(consul.clone(), session.clone(), settings.ttl, lost.clone());
        let mut lease = Lease {
            consul: consul.clone(),
            key: key.to_owned(),
            session,
            lost,
            renewer,
            calls: calls.clone(),
        };
        let mut index = 0;
        loop {
            if should_stop().await? {
                lease.release().await;
                return Ok(None);
            }
            lease.calls.fetch_add(1, Ordering::Relaxed);
            match consul
                .kv_acquire(key, &lease.session, holder.as_bytes())
                .await
            {
                Ok(true) => {
                    log::info!("lease {key}: acquired by {holder}");
                    return Ok(Some(lease));
                }
                Ok(false) => {}
                Err(e) if transient(&e) => {
                    log::warn!("lease {key}: {e}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(BootstrapError::consul("acquire the lease")(e)),
            }
            if lease.is_lost() {
                return Err(BootstrapError::LeaseLost {
                    key: key.to_owned(),
                });
            }
            // Held by someone else, or in its lock-delay: block until the
            // key changes (or the wait ends), then try again.
            lease.calls.fetch_add(1, Ordering::Relaxed);
            match consul.kv_get(key, Some((index, settings.wait))).await {
                Ok((pair, new_index)) => {
                    let free = pair.as_ref().is_none_or(|p| p.session.is_none());
                    if free && new_index == index {
                        // Released but inside the lock-delay: the index
                        // will not move again, so wait the delay out.
                        tokio::time::sleep(settings.lock_delay.min(Duration::from_secs(2))).await;
                    }
                    // An index going backwards means the store was reset.
                    index = if new_index < index { 0 } else { new_index };
                    if free {
                        // A free lock may still be in its lock-delay.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                Err(e) if transient(&e) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(BootstrapError::consul("watch the lease")(e)),
            }
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Confirms with Consul that this session still holds the lock: the
    /// precondition of every bootstrap step.
    pub async fn check(&mut self) -> Result<(), BootstrapError> {
        if !self.is_lost() {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match self.consul.kv_get(&self.key, None).await {
                Ok((Some(pair), _)) if pair.session.as_deref() == Some(self.session.as_str()) => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) if transient(&e) => {
                    // Cannot confirm: do not act on a maybe.
                    return Err(BootstrapError::consul("confirm the lease")(e));
                }
                Err(e) => return Err(BootstrapError::consul("confirm the lease")(e)),
            }
        }
        self.lost.store(true, Ordering::SeqCst);
        Err(BootstrapError::LeaseLost {
            key: self.key.clone(),
        })
    }

    /// Resolves when the renewer sees the session gone.
    pub async fn lost(&self) {
        while !self.is_lost() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Gives the lease up now: release the lock, destroy the session.
    pub async fn release(&mut self) {
        self.renewer.abort();
        let _ = self.consul.kv_release(&self.key, &self.session).await;
        let _ = self.consul.session_destroy(&self.session).await;
        self.calls.fetch_add(2, Ordering::Relaxed);
    }
}

fn spawn_renewer(
    consul: Consul,
    session: String,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = ttl / 3;
        loop {
            tokio::time::sleep(period).await;
            match consul.session_renew(&session).await {
                Ok(true) => {}
                Ok(false) => {
                    log::warn!("lease session expired; stopping");
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                // A failed renewal is not a lost session yet; the next
                // one may succeed within the TTL.
                Err(e) => log::warn!("renewing a lease session: {e}"),
            }
        }
    })
}
