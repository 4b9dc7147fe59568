//! The token cache: moka entries keyed by (upstream, sorted scopes), one upstream request for any
//! number of concurrent misses, failures never cached, and each token served until
//! `fetched + L − min(refresh_skew, L/4)` on a monotonic clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::ops::compute::Op;
use moka::Expiry;
use secrecy::SecretString;

use crate::clock::SharedClock;
use crate::policy::{join_scopes, ScopeSet};
use crate::settings::UpstreamSettings;
use crate::upstream::{FetchedToken, TokenClient, UpstreamError};

/// One cache entry per upstream and set of scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub upstream: String,
    pub scopes: ScopeSet,
}

#[derive(Debug)]
pub struct CachedToken {
    pub access_token: SecretString,
    /// What to report as `scope`: the endpoint's granted scope, else the requested one.
    pub scope: String,
    pub fetched_at: Instant,
    pub lifetime: Duration,
    /// After this instant the token is never handed out.
    pub serve_until: Instant,
}

impl CachedToken {
    fn new(fetched: FetchedToken, requested: &ScopeSet, fetched_at: Instant, refresh_skew: Duration) -> Self {
        let lifetime = fetched.lifetime;
        // A short-lived token loses at most a quarter of its life, so it still caches.
        let skew = refresh_skew.min(lifetime / 4);
        Self {
            access_token: fetched.access_token,
            scope: fetched.scope.unwrap_or_else(|| join_scopes(requested)),
            fetched_at,
            lifetime,
            serve_until: fetched_at + lifetime - skew,
        }
    }

    fn served_life(&self) -> Duration {
        self.serve_until.saturating_duration_since(self.fetched_at)
    }
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
}

pub struct TokenCache {
    entries: Cache<CacheKey, Arc<CachedToken>>,
    client: TokenClient,
    clock: SharedClock,
    refresh_skew: Duration,
}

impl TokenCache {
    pub fn new(client: TokenClient, clock: SharedClock, max_entries: u64, refresh_skew: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ServedLife)
                .build(),
            client,
            clock,
            refresh_skew,
        }
    }

    /// A servable token for `scopes` of `upstream`, from the cache or fetched once for all waiters.
    pub async fn get(&self, upstream: &UpstreamSettings, scopes: &ScopeSet) -> Result<Served, Arc<UpstreamError>> {
        let key = CacheKey {
            upstream: upstream.name.clone(),
            scopes: scopes.clone(),
        };
        // Two rounds at most: a stale entry is dropped once, then a fresh token is fetched.
        for _ in 0..2 {
            let fetched_here = AtomicBool::new(false);
            let token = self
                .entries
                .try_get_with(key.clone(), async {
                    fetched_here.store(true, Ordering::Relaxed);
                    let fetched = self.client.fetch(upstream, scopes).await?;
                    Ok::<_, UpstreamError>(Arc::new(CachedToken::new(
                        fetched,
                        scopes,
                        self.clock.now(),
                        self.refresh_skew,
                    )))
                })
                .await?;
            let now = self.clock.now();
            if token.serve_until > now {
                let expires_in = token.serve_until - now;
                return Ok(Served {
                    expires_at: self.clock.unix_now() + expires_in.as_secs(),
                    expires_in,
                    token,
                    cache_hit: !fetched_here.load(Ordering::Relaxed),
                });
            }
            self.remove_if_same(&key, &token).await;
        }
        Err(Arc::new(UpstreamError::InvalidResponse(
            "token expired as soon as it was fetched",
        )))
    }

    /// Drops the entry for `key` only if it is still `stale`, so a fresher token fetched by
    /// another caller in the meantime is kept.
    async fn remove_if_same(&self, key: &CacheKey, stale: &Arc<CachedToken>) {
        self.entries
            .entry(key.clone())
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if Arc::ptr_eq(entry.value(), stale) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}
