//! Failed authentications per client address: a bad API key, a forged or expired JWT, a cookie the
//! session endpoint refuses (or cannot judge). Each address has a bucket of
//! `server.auth_failures_per_minute` failures, refilled at that rate. A failure takes one; an
//! empty bucket makes every request from that address 429 *before* any authentication work. Work
//! that costs (a signature check, a session-endpoint call) also reserves one before it starts and
//! gives it back when the caller turns out to be genuine, so concurrent attempts cannot all slip
//! in before the first failures are counted. Successes cost nothing.
//!
//! The address is the client as `trusted_proxies` resolves it, IPv4-mapped IPv6 as IPv4 and IPv6
//! by its /64 (one subscriber's prefix). Behind a reverse proxy that is not trusted, every client
//! shares the proxy's address, and so its bucket.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::identity::Gate;

const SHARDS: usize = 16;
/// Full buckets are forgotten every this many takes per shard.
const SWEEP_EVERY: usize = 1024;

struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Counted in `empty`: the bucket had less than one failure left when last seen.
    empty: bool,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    takes: usize,
}

pub struct AuthFailureLimit {
    /// Failures per address, at once and per minute; 0: off.
    capacity: f64,
    /// Tokens a second.
    rate: f64,
    shards: [Mutex<Shard>; SHARDS],
    /// Buckets that were empty when last seen: while 0, the hot path takes no lock.
    empty: AtomicUsize,
}

/// The address a bucket belongs to.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
        v4 => v4,
    }
}

impl AuthFailureLimit {
    /// `per_minute` failures a minute per address, all at once at most; 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            capacity: f64::from(per_minute),
            rate: f64::from(per_minute) / 60.0,
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            empty: AtomicUsize::new(0),
        }
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<Shard> {
        let mut hasher = std::hash::DefaultHasher::new();
        ip.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % SHARDS]
    }

    /// Runs `f` on the refilled bucket of `ip` (a full one when there is none yet).
    fn with_bucket<R>(&self, ip: IpAddr, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let now = Instant::now();
        let mut shard = self.shard(ip).lock();
        shard.takes += 1;
        if shard.takes % SWEEP_EVERY == 0 {
            let (capacity, rate) = (self.capacity, self.rate);
            shard.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < capacity || b.empty
            });
        }
        let bucket = shard.buckets.entry(ip).or_insert(Bucket {
            tokens: self.capacity,
            updated: now,
            empty: false,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.capacity);
        bucket.updated = now;
        let result = f(bucket);
        let empty = bucket.tokens < 1.0;
        if empty != bucket.empty {
            bucket.empty = empty;
            if empty {
                self.empty.fetch_add(1, Ordering::Relaxed);
            } else {
                self.empty.fetch_sub(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn wait(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.rate).clamp(1.0, 3600.0))
    }

    /// Starts the authentication of a request from `ip`: `Err(wait)` while its failures are spent.
    pub fn attempt(&self, ip: Option<IpAddr>) -> Result<Attempt<'_>, Duration> {
        let ip = ip.filter(|_| self.capacity > 0.0).map(bucket_of);
        if let Some(ip) = ip {
            if self.empty.load(Ordering::Relaxed) > 0 {
                let tokens = self.with_bucket(ip, |b| b.tokens);
                if tokens < 1.0 {
                    return Err(self.wait(tokens));
                }
            }
        }
        Ok(Attempt {
            limit: self,
            ip,
            reserved: AtomicBool::new(false),
            refused_for: Mutex::new(None),
        })
    }
}

/// One request's authentication, as the limit sees it.
pub struct Attempt<'a> {
    limit: &'a AuthFailureLimit,
    ip: Option<IpAddr>,
    /// Whether costly work reserved a failure's worth of the bucket.
    reserved: AtomicBool,
    /// Set when a reservation was refused: how long to wait.
    refused_for: Mutex<Option<Duration>>,
}

impl Attempt<'_> {
    /// The caller is genuine: a reservation goes back.
    pub fn succeeded(&self) {
        if let (Some(ip), true) = (self.ip, self.reserved.swap(false, Ordering::Relaxed)) {
            let capacity = self.limit.capacity;
            self.limit
                .with_bucket(ip, |b| b.tokens = (b.tokens + 1.0).min(capacity));
        }
    }

    /// The credential failed (or could not be judged): it costs a failure, unless its
    /// reservation already did.
    pub fn failed(&self) {
        if let (Some(ip), false) = (self.ip, self.reserved.load(Ordering::Relaxed)) {
            self.limit.with_bucket(ip, |b| b.tokens = (b.tokens - 1.0).max(0.0));
        }
    }

    /// When costly work was refused: how long the caller should wait.
    pub fn refused_for(&self) -> Option<Duration> {
        *self.refused_for.lock()
    }
}

impl Gate for Attempt<'_> {
    fn admit(&self) -> bool {
        let Some(ip) = self.ip else { return true };
        if self.reserved.load(Ordering::Relaxed) {
            return true;
        }
        let taken = self.limit.with_bucket(ip, |b| {
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Ok(())
            } else {
                Err(b.tokens)
            }
        });
        match taken {
            Ok(()) => {
                self.reserved.store(true, Ordering::Relaxed);
                true
            }
            Err(tokens) => {
                *self.refused_for.lock() = Some(self.limit.wait(tokens));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn an_address_that_spent_its_failures_waits_and_others_do_not() {
        let limit = AuthFailureLimit::new(3);
        for _ in 0..3 {
            limit.attempt(ip("192.0.2.1")).expect("three failures pass").failed();
        }
        let wait = limit.attempt(ip("192.0.2.1")).err().expect("then the address waits");
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limit.attempt(ip("192.0.2.2")).is_ok());
        assert!(limit.attempt(None).is_ok());
        let off = AuthFailureLimit::new(0);
        for _ in 0..100 {
            off.attempt(ip("192.0.2.1")).unwrap().failed();
        }
        assert!(off.attempt(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn mapped_addresses_and_one_ipv6_prefix_share_a_bucket() {
        let limit = AuthFailureLimit::new(2);
        limit.attempt(ip("::ffff:203.0.113.9")).unwrap().failed();
        limit.attempt(ip("203.0.113.9")).unwrap().failed();
        assert!(limit.attempt(ip("203.0.113.9")).is_err());
        limit.attempt(ip("2001:db8:1:1::1")).unwrap().failed();
        limit.attempt(ip("2001:db8:1:1::2")).unwrap().failed();
        assert!(limit.attempt(ip("2001:db8:1:1::ffff")).is_err());
        assert!(limit.attempt(ip("2001:db8:1:2::1")).is_ok(), "another /64");
    }

    #[test]
    fn costly_work_reserves_and_a_genuine_caller_gives_it_back() {
        let limit = AuthFailureLimit::new(2);
        let first = limit.attempt(ip("192.0.2.7")).unwrap();
        let second = limit.attempt(ip("192.0.2.7")).unwrap();
        let third = limit.attempt(ip("192.0.2.7")).unwrap();
        assert!(first.admit() && second.admit(), "two reservations fit");
        assert!(!third.admit(), "the third must wait, though nothing has failed yet");
        assert!(third.refused_for().is_some());
        first.succeeded();
        second.failed();
        let fourth = limit.attempt(ip("192.0.2.7")).unwrap();
        assert!(fourth.admit(), "the genuine caller's reservation came back");
        fourth.failed();
        assert!(limit.attempt(ip("192.0.2.7")).is_err());
    }
}
