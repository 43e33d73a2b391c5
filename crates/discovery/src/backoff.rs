use std::time::Duration;

/// Exponential backoff with full jitter: each wait is drawn uniformly from
/// [min, ceiling], the ceiling doubling up to `max`. Jitter keeps a fleet
/// booted by one autoscaling event from retrying in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Backoff {
            min,
            max,
            ceiling: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let span = self.ceiling.saturating_sub(self.min);
        let delay = self.min + span.mul_f64(fastrand::f64());
        self.ceiling = (self.ceiling * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.ceiling = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");
        assert_eq!(b.ceiling, max);
        b.reset();
        assert_eq!(b.next_delay(), min);
    }
}
