//! When a failed sync is tried again: exponentially later, with jitter, so that a sync
//! that cannot succeed (a full map, a kernel refusing an update) neither spins the agent
//! nor makes every node of a cluster retry in step.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

/// The first retry after a failure.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// How much longer each wait is than the one before.
const FACTOR: f32 = 2.0;

/// Consecutive failures of the sync and when to try again.
#[derive(Debug)]
pub struct SyncRetry {
    backoff: ExponentialBackoff,
    failures: u32,
    next: Instant,
    last_error: String,
}

impl SyncRetry {
    /// The state after a first failure at `now`.
    pub fn after_first_failure(now: Instant, error: String) -> Self {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(FIRST_RETRY)
            .with_max_delay(MAX_RETRY)
            .with_factor(FACTOR)
            .with_jitter()
            .without_max_times()
            .build();
        let next = now + backoff.next().unwrap_or(MAX_RETRY);
        Self {
            backoff,
            failures: 1,
            next,
            last_error: error,
        }
    }

    /// Counts another failure at `now`.
    pub fn failed_again(&mut self, now: Instant, error: String) {
        self.failures = self.failures.saturating_add(1);
        self.next = now + self.backoff.next().unwrap_or(MAX_RETRY);
        self.last_error = error;
    }

    /// When the next attempt is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// What the last attempt failed with.
    pub fn last_error(&self) -> &str {
        &self.last_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_jitter_up_to_the_cap_and_never_spin() {
        let start = Instant::now();
        let mut retry = SyncRetry::after_first_failure(start, "full".into());
        let first = retry.next() - start;
        // Jitter adds up to the wait itself.
        assert!(
            first >= FIRST_RETRY && first <= FIRST_RETRY * 2,
            "{first:?}"
        );
        let mut now = retry.next();
        let mut waits = vec![first];
        for _ in 0..20 {
            retry.failed_again(now, "full".into());
            waits.push(retry.next() - now);
            now = retry.next();
        }
        assert_eq!(retry.failures(), 21);
        assert!(
            waits
                .iter()
                .all(|w| *w >= FIRST_RETRY && *w <= MAX_RETRY * 2)
        );
        // After enough failures every wait is at least the cap.
        assert!(waits[12..].iter().all(|w| *w >= MAX_RETRY), "{waits:?}");
        // Two agents failing at once do not retry in step.
        let other = SyncRetry::after_first_failure(start, "full".into());
        let mut a = SyncRetry::after_first_failure(start, "full".into());
        let mut b = other;
        let (mut ta, mut tb) = (a.next(), b.next());
        for _ in 0..5 {
            a.failed_again(ta, String::new());
            b.failed_again(tb, String::new());
            ta = a.next();
            tb = b.next();
        }
        assert_ne!(ta, tb, "jitter should separate independent retries");
    }
}
