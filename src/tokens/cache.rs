//! The token cache: moka entries keyed by (upstream, sorted scopes), one upstream request for any
//! number of concurrent misses, failures never cached, each token served until
//! `fetched + L − min(refresh_skew, L/4)` on a monotonic clock, and refreshed ahead of that.
//!
//! Refresh-ahead: once 80% (±5%, so keys and replicas spread out) of a token's served life has
//! passed, the next caller starts one background refresh and is answered with the current token at
//! once. A failed refresh leaves the current token in service until its served life ends, and is
//! tried again with backoff meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::Expiry;

use self::entries::Entries;
pub use self::token::{CachedToken, Source};
use super::key::{CacheKey, KeyRef};
use super::store::{Lock, SharedStore};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::scope::ScopeSet;
use crate::upstream::config::Fingerprint;
use crate::upstream::{Purpose, Upstream, UpstreamError};

/// How often a replica waiting for another's fetch looks in the shared tier.
const SHARED_POLL: Duration = Duration::from_millis(25);
/// A token reported as rejected is replaced at most once per key in max(this, a tenth of its
/// lifetime): reports cannot make the broker fetch more often than the token's own life warrants.
pub const REPLACE_INTERVAL: Duration = Duration::from_secs(5);

/// How old a token of `lifetime` must be before a report of its rejection replaces it.
pub fn replace_interval(lifetime: Duration) -> Duration {
    REPLACE_INTERVAL.max(lifetime / 10)
}

/// Why a reported token was not replaced.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// The reporting caller is over its own limit of replacements; with the time to wait.
    #[error("this caller reports rejected tokens too often")]
    TooFrequent(Duration),
    #[error(transparent)]
    Upstream(#[from] Arc<UpstreamError>),
}

/// A token handed out, with the time it has left as seen by the browser.
#[derive(Debug)]
pub struct Served {
    pub token: Arc<CachedToken>,
    pub expires_in: Duration,
    /// Unix seconds at which the broker stops serving this token.
    pub expires_at: u64,
    /// False when this caller's request went to the upstream.
    pub cache_hit: bool,
}

/// moka evicts an entry once its served life is over (in real time; the broker's own clock
/// decides whether an entry may still be served).
struct ServedLife;

impl Expiry<CacheKey, Arc<CachedToken>> for ServedLife {
    fn expire_after_create(&self, _key: &CacheKey, value: &Arc<CachedToken>, _created_at: Instant) -> Option<Duration> {
        Some(value.served_life())
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedToken>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.served_life())
    }
}

/// What a failed fetch leaves every waiter for it.
type FetchFailure = Arc<UpstreamError>;

/// Cheap to clone: background refreshes hold a handle.
#[derive(Clone)]
pub struct TokenCache {
    entries: Arc<Entries>,
    /// The Redis tier shared with other replicas, when configured.
    shared: Option<Arc<dyn SharedStore>>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Milliseconds; changes on reload.
    refresh_skew_ms: Arc<AtomicU64>,
}

impl TokenCache {
    pub fn new(
        clock: SharedClock,
        metrics: Arc<Metrics>,
        max_entries: u64,
        refresh_skew: Duration,
        shared: Option<Arc<dyn SharedStore>>,
    ) -> Self {
        Self {
            entries: Arc::new(Entries::new(max_entries)),
            shared,
            clock,
            metrics,
            refresh_skew_ms: Arc::new(AtomicU64::new(refresh_skew.as_millis() as u64)),
        }
    }

    /// Applies to tokens fetched from now on.
    pub fn set_refresh_skew(&self, skew: Duration) {
        self.refresh_skew_ms.store(skew.as_millis() as u64, Ordering::Relaxed);
    }

    /// Drops the cached tokens of `upstream` fetched with a credential not in `credentials` (a
    /// reload removed it).
    pub fn retain_credentials(&self, upstream: &str, credentials: Vec<Fingerprint>) {
        let upstream = upstream.to_string();
        if let Err(e) = self
            .entries
            .invalidate_if(move |key, token| key.upstream == upstream && !credentials.contains(&token.credential))
        {
            tracing::error!(error = %e, "could not drop cached tokens");
        }
    }

    /// Drops every cached token of `upstream` (its token settings changed).
    pub fn invalidate_upstream(&self, upstream: &str) {
        let upstream = upstream.to_string();
        if let Err(e) = self.entries.invalidate_if(move |key, _| key.upstream == upstream) {
            tracing::error!(error = %e, "could not drop cached tokens");
        }
    }

    /// A servable token for `scopes` of `upstream`, from the cache or fetched once for all waiters.
    pub async fn get(&self, upstream: &Arc<Upstream>, scopes: &ScopeSet) -> Result<Served, Arc<UpstreamError>> {
        self.lookup(upstream, scopes, true).await
    }

    /// [`Self::get`], from what this thread recalls when `recall` says so, else from moka.
    async fn lookup(&self, upstream: &Arc<Upstream>, scopes: &ScopeSet, recall: bool) -> Result<Served, FetchFailure> {
        let key = KeyRef::new(upstream, scopes);
        // The hot path: a servable token in memory, without the coalescing machinery.
        if let Some(token) = self.entries.get_warm(&key, recall).await {
            let now = self.clock.now();
            if token.serve_until > now && upstream.accepts(&token.credential) {
                return Ok(self.serve(upstream, || key.to_key(), token, now, true));
            }
        }
        // Boxed: inlined, the fetch's state would make every caller's future (the hot path's too)
        // as large as the whole exchange with the token endpoint.
        Box::pin(self.get_cold(upstream, key.to_key())).await
    }

    /// [`Self::get`] past the hot path: the token is stale or missing.
    async fn get_cold(&self, upstream: &Arc<Upstream>, key: CacheKey) -> Result<Served, Arc<UpstreamError>> {
        // Two rounds at most: a stale entry is dropped once, then a fresh token is fetched.
        for _ in 0..2 {
            let fetched_here = AtomicBool::new(false);
            let token = self
                .entries
                .try_get_with(key.clone(), async {
                    fetched_here.store(true, Ordering::Relaxed);
                    self.load(upstream, &key, Purpose::Serve, None).await
                })
                .await?;
            let now = self.clock.now();
            if token.serve_until > now && upstream.accepts(&token.credential) {
                let cache_hit = !fetched_here.load(Ordering::Relaxed);
                return Ok(self.serve(upstream, || key, token, now, cache_hit));
            }
            self.remove_if_same(&key, &token).await;
        }
        Err(Arc::new(UpstreamError::InvalidResponse(
            "token expired as soon as it was fetched",
        )))
    }

    /// Answers with a servable `token`, starting its refresh ahead of expiry when that is due.
    /// `key` is made only when a refresh starts: the warm path holds a borrowed one.
    fn serve(
        &self,
        upstream: &Arc<Upstream>,
        key: impl FnOnce() -> CacheKey,
        token: Arc<CachedToken>,
        now: Instant,
        cache_hit: bool,
    ) -> Served {
        if token.claim_refresh(now) {
            self.refresh_in_background(upstream.clone(), key(), token.clone());
        }
        let expires_in = token.serve_until - now;
        Served {
            expires_at: self.clock.unix_now() + expires_in.as_secs(),
            expires_in,
            token,
            cache_hit,
        }
    }

    /// The browser says the API rejected `rejected`. When that is the cached token, and it is at
    /// least [`replace_interval`] old, one new token is fetched, however many callers report it
    /// (reports for a key are handled one at a time; later ones find the new token). The fetch
    /// counts as a replacement against the hourly quota, and only the caller whose report starts
    /// it is asked `may_replace` (its own limit); when either refuses or the fetch fails, the
    /// current token stays cached for everyone else and this caller gets the error. Otherwise
    /// the current token is the answer.
    pub async fn replace_rejected(
        &self,
        upstream: &Arc<Upstream>,
        scopes: &ScopeSet,
        rejected: &str,
        may_replace: impl FnOnce() -> Result<(), Duration>,
    ) -> Result<Served, ReplaceError> {
        let key = CacheKey::new(upstream, scopes);
        if let Some(current) = self.entries.get(&key).await {
            let age = self.clock.now().saturating_duration_since(current.fetched_at);
            if current.is(rejected) && age >= replace_interval(current.lifetime) {
                let replaced = self
                    .entries
                    .compute(key.clone(), |entry| async move {
                        match entry {
                            Some(entry) if Arc::ptr_eq(entry.value(), &current) => {
                                may_replace().map_err(ReplaceError::TooFrequent)?;
                                tracing::info!(upstream = %upstream.name(), "replacing a token the API rejected");
                                let fresh = self
                                    .load(upstream, &key, Purpose::Replace, Some(rejected))
                                    .await
                                    .map_err(|e| ReplaceError::Upstream(Arc::new(e)))?;
                                Ok(Op::Put(fresh))
                            }
                            _ => Ok(Op::Nop),
                        }
                    })
                    .await;
                replaced.map_err(|e: ReplaceError| e)?;
            }
        }
        // Not from a thread's recollection, which may still hold the rejected token for a moment
        // after moka evicted it for room.
        Ok(self.lookup(upstream, scopes, false).await?)
    }

    fn now(&self) -> (Instant, u64) {
        (self.clock.now(), self.clock.unix_now_millis())
    }

    /// Asks the upstream itself, waiting up to its `timeout`.
    async fn fetch(
        &self,
        upstream: &Upstream,
        key: &CacheKey,
        purpose: Purpose,
    ) -> Result<Arc<CachedToken>, UpstreamError> {
        self.fetch_within(upstream, key, purpose, upstream.settings.timeout)
            .await
    }

    /// Asks the upstream itself, waiting up to `limit`.
    async fn fetch_within(
        &self,
        upstream: &Upstream,
        key: &CacheKey,
        purpose: Purpose,
        limit: Duration,
    ) -> Result<Arc<CachedToken>, UpstreamError> {
        let fetched = upstream.fetch(&key.scopes, purpose, limit).await?;
        let skew = Duration::from_millis(self.refresh_skew_ms.load(Ordering::Relaxed));
        Ok(Arc::new(CachedToken::new(fetched, &key.scopes, self.now(), skew)))
    }

    /// A still-servable token another replica stored, if any.
    /// A one-off check of the shared tier, when there is one (see [`SharedStore::probe`]).
    pub fn probe_shared(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.shared.as_ref().map(|shared| shared.probe())
    }

    /// A still-servable token another replica stored with a credential `upstream` still has,
    /// unless it is `rejected`.
    async fn adopt(
        &self,
        shared: &dyn SharedStore,
        upstream: &Upstream,
        key: &CacheKey,
        rejected: Option<&str>,
    ) -> Option<Arc<CachedToken>> {
        let stored = shared.read(key, &upstream.credentials).await?;
        let (now, now_ms) = self.now();
        let token = CachedToken::from_shared(stored, &key.scopes, now, now_ms)?;
        if !upstream.accepts(&token.credential) || rejected.is_some_and(|rejected| token.is(rejected)) {
            return None;
        }
        self.metrics.shared_cache_hits.inc();
        Some(Arc::new(token))
    }

    async fn publish(&self, shared: &dyn SharedStore, key: &CacheKey, token: &CachedToken) {
        let ttl = token.serve_until.saturating_duration_since(self.clock.now());
        shared.write(key, &token.stored(), ttl).await;
    }

    /// A token for a key missing from memory (or whose token was `rejected`): from the shared
    /// tier, else fetched by one replica for all, else fetched here. Waiting for another replica
    /// is bounded by the upstream's `timeout` in all, whoever holds the lock; then this replica
    /// fetches itself.
    async fn load(
        &self,
        upstream: &Upstream,
        key: &CacheKey,
        purpose: Purpose,
        rejected: Option<&str>,
    ) -> Result<Arc<CachedToken>, UpstreamError> {
        let Some(shared) = self.shared.as_deref() else {
            return self.fetch(upstream, key, purpose).await;
        };
        if let Some(token) = self.adopt(shared, upstream, key, rejected).await {
            return Ok(token);
        }
        let lock_ttl = upstream.settings.timeout + Duration::from_secs(1);
        let give_up = tokio::time::Instant::now() + upstream.settings.timeout;
        while tokio::time::Instant::now() < give_up {
            match shared.lock(key, lock_ttl).await {
                Lock::Acquired(owner) => {
                    // Another replica may have stored a token between our read and our lock.
                    let result = match self.adopt(shared, upstream, key, rejected).await {
                        Some(token) => Ok(token),
                        None => self.fetch(upstream, key, purpose).await,
                    };
                    if let Ok(token) = &result {
                        self.publish(shared, key, token).await;
                    }
                    shared.unlock(key, &owner).await;
                    return result;
                }
                Lock::Held => {
                    while tokio::time::Instant::now() < give_up {
                        tokio::time::sleep(SHARED_POLL).await;
                        if let Some(token) = self.adopt(shared, upstream, key, rejected).await {
                            return Ok(token);
                        }
                        if shared.is_locked(key).await != Some(true) {
                            break;
                        }
                    }
                }
                Lock::Unavailable => break,
            }
        }
        self.fetch(upstream, key, purpose).await
    }

    /// Fetches a successor for `current` without anybody waiting on it. The upstream's guard
    /// (circuit breaker, rate limit) decides whether it may be asked at all; with a shared tier,
    /// one replica refreshes and the others adopt its token.
    fn refresh_in_background(&self, upstream: Arc<Upstream>, key: CacheKey, current: Arc<CachedToken>) {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut lock = None;
            if let Some(shared) = cache.shared.as_deref() {
                if let Some(newer) = cache.adopt(shared, &upstream, &key, None).await {
                    if newer.fetched_at_ms > current.fetched_at_ms {
                        cache.entries.insert(key, newer).await;
                        return;
                    }
                }
                match shared
                    .lock(&key, upstream.settings.timeout + Duration::from_secs(1))
                    .await
                {
                    Lock::Acquired(owner) => lock = Some(owner),
                    Lock::Held => {
                        current.refresh_deferred(cache.clock.now());
                        return;
                    }
                    Lock::Unavailable => {}
                }
            }
            let wait = current.refresh_wait(cache.clock.now(), &upstream);
            match cache.fetch_within(&upstream, &key, Purpose::Refresh, wait).await {
                Ok(fresh) => {
                    if let Some(shared) = cache.shared.as_deref() {
                        cache.publish(shared, &key, &fresh).await;
                    }
                    cache.entries.insert(key.clone(), fresh).await;
                }
                Err(error) => {
                    tracing::warn!(
                        upstream = %upstream.name(),
                        error = %error,
                        oauth_error = error.oauth_error(),
                        "refresh ahead of expiry failed; the current token stays in service"
                    );
                    current.refresh_failed(cache.clock.now());
                }
            }
            if let (Some(shared), Some(owner)) = (cache.shared.as_deref(), lock) {
                shared.unlock(&key, &owner).await;
            }
        });
    }

    /// Drops the entry for `key` only if it is still `stale`, so a fresher token fetched by
    /// another caller in the meantime is kept.
    async fn remove_if_same(&self, key: &CacheKey, stale: &Arc<CachedToken>) {
        let _ = self
            .entries
            .compute(key.clone(), |current| {
                let op = match current {
                    Some(entry) if Arc::ptr_eq(entry.value(), stale) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(Ok::<_, std::convert::Infallible>(op))
            })
            .await;
    }
}

#[path = "cache_admin.rs"]
mod admin;
#[path = "cache_entries.rs"]
mod entries;
#[path = "cache_token.rs"]
mod token;

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
