//! How often a node may ask EC2: jitter, so that nodes started together do
//! not call in step, and a per-node budget, so that no node (and no fleet of
//! them waiting for servers that do not come) drains the account's EC2
//! request bucket, which every tool in the account and region shares.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{DiscoveryError, PeerSource, Peers};

/// `period`, give or take `fraction` of it, uniformly: over many nodes the
/// calls spread evenly across a window of `2 * fraction * period`.
pub fn jittered(period: Duration, fraction: f64) -> Duration {
    let fraction = fraction.clamp(0.0, 1.0);
    let spread = period.mul_f64(fraction);
    period - spread + spread.mul_f64(2.0 * fastrand::f64())
}

/// A token bucket of calls: `burst` back to back, then one every `refill`.
/// Every EC2 discovery call of a node goes through one, whatever asks
/// (the boot's wait for servers, a client that lost every server, a
/// server's refresh), so the node's worst case is a known rate.
#[derive(Debug, Clone)]
pub struct CallBudget {
    burst: u32,
    refill: Duration,
    tokens: f64,
    last: Instant,
}

impl CallBudget {
    /// A full bucket at `now`.
    pub fn new(burst: u32, refill: Duration, now: Instant) -> Self {
        let burst = burst.max(1);
        CallBudget {
            burst,
            refill: refill.max(Duration::from_millis(1)),
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn fill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let earned = elapsed.as_secs_f64() / self.refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(self.burst));
    }

    /// Spends one call if the budget has one at `now`; otherwise how long
    /// until it will.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.fill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.refill.mul_f64(1.0 - self.tokens))
        }
    }

    /// Calls this bucket allows in `window` from full: the node's worst
    /// case, as docs/benchmarks.md projects it.
    pub fn most_in(&self, window: Duration) -> u64 {
        u64::from(self.burst) + (window.as_secs_f64() / self.refill.as_secs_f64()) as u64
    }
}

/// A peer source whose every call waits for the node's [`CallBudget`].
pub struct Budgeted<S> {
    source: S,
    budget: Mutex<CallBudget>,
}

impl<S> Budgeted<S> {
    pub fn new(source: S, budget: CallBudget) -> Self {
        Budgeted {
            source,
            budget: Mutex::new(budget),
        }
    }

    pub fn inner(&self) -> &S {
        &self.source
    }

    /// Waits until the budget allows a call, and spends it.
    pub async fn allowance(&self) {
        loop {
            let wait = {
                let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
                match budget.take(Instant::now()) {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            log::debug!(
                "discovery: the node's EC2 call budget is spent; next call in {:.1}s",
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
    }
}

impl<S: PeerSource + Sync> PeerSource for Budgeted<S> {
    async fn discover(&self, cluster: &str) -> Result<Peers, DiscoveryError> {
        self.allowance().await;
        self.source.discover(cluster).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_fraction_and_spreads() {
        let period = Duration::from_secs(100);
        let draws: Vec<Duration> = (0..2000).map(|_| jittered(period, 0.25)).collect();
        let (lo, hi) = (Duration::from_secs(75), Duration::from_secs(125));
        assert!(draws.iter().all(|d| *d >= lo && *d <= hi));
        // Spread over the window, not bunched: each quarter gets some.
        for q in 0..4u64 {
            let (a, b) = (75 + q * 12, 75 + (q + 1) * 12);
            let n = draws
                .iter()
                .filter(|d| d.as_secs() >= a && d.as_secs() < b)
                .count();
            assert!(n > 300, "quarter {q}: {n} of 2000");
        }
        assert_eq!(jittered(period, 0.0), period);
    }

    #[test]
    fn the_budget_allows_its_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let refill = Duration::from_secs(20);
        let mut b = CallBudget::new(3, refill, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        assert_eq!(b.take(t0), Err(refill));
        let half = t0 + refill / 2;
        assert_eq!(b.take(half), Err(refill / 2));
        assert_eq!(b.take(t0 + refill), Ok(()));
        assert!(b.take(t0 + refill).is_err());
        // Idle for long: never more than the burst.
        let later = t0 + refill * 100;
        for _ in 0..3 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_node_asking_nonstop_makes_at_most_the_documented_calls() {
        // Ask every 100 ms for ten minutes of simulated time.
        let t0 = Instant::now();
        let mut b = CallBudget::new(15, Duration::from_secs(20), t0);
        let window = Duration::from_secs(600);
        let made = (0..6000)
            .filter(|i| b.take(t0 + Duration::from_millis(100 * i)).is_ok())
            .count() as u64;
        assert_eq!(made, b.most_in(window) - 1, "15 + 600/20, less the last");
        assert!(made <= 45);
    }
}
