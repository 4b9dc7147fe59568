//! A per-identity request rate on the token routes: a token bucket per subject (GCRA, `governor`).

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// foldhash, seeded per process, for the subject's hash and the limiter's map: the standard
/// library's SipHash, twice per request, cost more than the rest of the check.
type Hasher = foldhash::fast::RandomState;
type Limiter = DefaultKeyedRateLimiter<u64, NoOpMiddleware<<DefaultClock as Clock>::Instant>, Hasher>;

/// Buckets are forgotten once full again; the sweep runs every this many checks.
const SWEEP_EVERY: u64 = 10_000;

pub struct IdentityRateLimit {
    /// Keyed by a hash of the subject, so the hot path allocates nothing.
    limiter: Option<Limiter>,
    hasher: Hasher,
    checks: std::sync::atomic::AtomicU64,
}

impl IdentityRateLimit {
    /// `per_second` 0 turns the limit off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self::with_quota(NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        }))
    }

    /// `per_minute` requests a minute with a burst of `burst` (at most `per_minute`); 0 turns the limit off.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self::with_quota(NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(burst.min(rate.get())).unwrap_or(rate);
            Quota::per_minute(rate).allow_burst(burst)
        }))
    }

    fn with_quota(quota: Option<Quota>) -> Self {
        Self {
            limiter: quota.map(|quota| RateLimiter::dashmap_with_hasher(quota, Hasher::default())),
            hasher: Hasher::default(),
            checks: Default::default(),
        }
    }

    /// `Err(wait)` when the caller (`subject` of `authenticator`) is over its rate.
    pub fn check(&self, authenticator: &str, subject: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        let n = self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&self.hasher.hash_one((authenticator, subject)))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_subject_waits_while_others_do_not() {
        let limit = IdentityRateLimit::new(1, 3);
        for _ in 0..3 {
            assert!(limit.check("api_key", "alice").is_ok());
        }
        let wait = limit.check("api_key", "alice").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limit.check("api_key", "bob").is_ok());
        assert!(
            limit.check("forward", "alice").is_ok(),
            "another authenticator's alice is another caller"
        );
        assert!(IdentityRateLimit::new(0, 0).check("api_key", "anyone").is_ok());
    }
}
