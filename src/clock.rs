//! The broker's notion of time: a monotonic clock for cache lifetimes and a wall clock for
//! `expires_at`. Injected so tests can move time forward without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic time, for everything that measures lifetimes.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch: for telling the browser when a token expires,
    /// and for the expiry times replicas share through Redis.
    fn unix_now_millis(&self) -> u64;

    /// Wall-clock seconds since the Unix epoch.
    fn unix_now(&self) -> u64 {
        self.unix_now_millis() / 1000
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// `now + by`, saturating instead of panicking when `by` is absurd (it may come from a peer).
pub fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// Far enough ahead to mean "not in this process's life", small enough to add to any `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Real time plus an offset that tests advance.
#[derive(Debug, Default)]
pub struct ManualClock {
    offset_millis: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn advance(&self, by: Duration) {
        self.offset_millis.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_millis.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    fn unix_now_millis(&self) -> u64 {
        SystemClock.unix_now_millis() + self.offset().as_millis() as u64
    }
}
