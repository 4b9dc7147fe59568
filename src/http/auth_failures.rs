//! Failed authentications per client address: a bad API key, a forged or expired JWT, a cookie the
//! session endpoint refuses. Each failure takes a token from the address's bucket
//! (`server.auth_failures_per_minute`, the same number as a burst); once it is empty, requests
//! from that address are answered 429 *before* any authentication work — no RSA verification, no
//! session-endpoint call, no decision-cache slot — until the bucket refills. Successes cost
//! nothing. The address is the client as `trusted_proxies` resolves it: behind a reverse proxy that
//! is not trusted, every client shares the proxy's address, and so its bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

pub struct AuthFailureLimit {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses whose bucket is empty, until when. Usually empty: the hot path reads a counter.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    blocked_count: AtomicUsize,
    /// Failures counted, to forget refilled buckets now and then (memory stays bounded).
    failures: AtomicUsize,
}

/// Refilled buckets are forgotten every this many failures.
const SWEEP_EVERY: usize = 10_000;

impl AuthFailureLimit {
    /// `per_minute` failures a minute per address, all at once at most; 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            // The failure that finds the bucket empty is the one that closes it: a burst of n − 1
            // lets exactly n failures through.
            limiter: NonZeroU32::new(per_minute).map(|n| {
                let burst = NonZeroU32::new(n.get() - 1).unwrap_or(NonZeroU32::MIN);
                RateLimiter::keyed(Quota::per_minute(n).allow_burst(burst))
            }),
            blocked: Mutex::new(HashMap::new()),
            blocked_count: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
        }
    }

    /// `Err(wait)` while `ip` has spent its failures.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let Some(ip) = ip else { return Ok(()) };
        if self.blocked_count.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let mut blocked = self.blocked.lock();
        let now = Instant::now();
        match blocked.get(&ip) {
            Some(until) if *until > now => Err(*until - now),
            Some(_) => {
                blocked.remove(&ip);
                self.blocked_count.store(blocked.len(), Ordering::Relaxed);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`.
    pub fn failed(&self, ip: Option<IpAddr>) {
        let (Some(limiter), Some(ip)) = (&self.limiter, ip) else {
            return;
        };
        if self.failures.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        if let Err(not_until) = limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock();
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            blocked.insert(ip, now + wait.max(Duration::from_secs(1)));
            self.blocked_count.store(blocked.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_spent_its_failures_waits_and_others_do_not() {
        let limit = AuthFailureLimit::new(3);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert!(limit.check(Some(a)).is_ok(), "three failures pass");
            limit.failed(Some(a));
        }
        let wait = limit.check(Some(a)).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limit.check(Some(b)).is_ok());
        assert!(limit.check(None).is_ok());
        let off = AuthFailureLimit::new(0);
        for _ in 0..100 {
            off.failed(Some(a));
        }
        assert!(off.check(Some(a)).is_ok());
    }
}
