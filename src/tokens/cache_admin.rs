//! What the admin API asks of the cache: a listing without tokens, eviction (here, in the shared
//! tier and on the other replicas) and a refresh now.

use std::sync::Arc;

use super::{CacheKey, Source, TokenCache};
use crate::upstream::{Purpose, Upstream};

/// A cache entry as the admin API lists it: never the token itself.
#[derive(Debug, serde::Serialize)]
pub struct EntryInfo {
    pub upstream: String,
    pub scopes: Vec<String>,
    /// The fingerprint prefix of the credential that fetched it.
    pub credential: String,
    pub source: Source,
    /// Unix seconds: when it was fetched, when the endpoint says it expires, and until when the
    /// broker hands it out.
    pub fetched_at: u64,
    pub expires_at: u64,
    pub served_until: u64,
    /// The token's fingerprint, as log lines name it.
    pub token: String,
}

impl TokenCache {
    /// Every entry, for the admin API, sorted by upstream and scopes.
    pub fn list(&self) -> Vec<EntryInfo> {
        let now_ms = self.clock.unix_now_millis();
        let mut entries: Vec<EntryInfo> = self
            .entries
            .iter()
            .filter(|(_, token)| token.serve_until > self.clock.now())
            .map(|(key, token)| EntryInfo {
                upstream: key.upstream.clone(),
                scopes: key.scopes.iter().map(ToString::to_string).collect(),
                credential: token.credential.to_string(),
                source: token.source,
                fetched_at: token.fetched_at_ms / 1000,
                expires_at: (token.fetched_at_ms + token.lifetime.as_millis() as u64) / 1000,
                served_until: (now_ms
                    + token
                        .serve_until
                        .saturating_duration_since(self.clock.now())
                        .as_millis() as u64)
                    / 1000,
                token: token.fingerprint.clone(),
            })
            .collect();
        entries.sort_by(|a, b| (&a.upstream, &a.scopes).cmp(&(&b.upstream, &b.scopes)));
        entries
    }

    /// Drops `upstream`'s tokens here and in the shared tier, whose other replicas are told to
    /// drop theirs: the next request for each fetches anew. Returns how many entries were dropped
    /// here and in the shared tier (`None` there: no shared tier, or it did not answer).
    pub async fn evict(&self, upstream: &str) -> (usize, Option<usize>) {
        let here = self.entries.iter().filter(|(key, _)| key.upstream == upstream).count();
        // The shared tier first, so a request in between cannot adopt the evicted token again.
        let shared = match &self.shared {
            Some(shared) => shared.evict(upstream).await,
            None => None,
        };
        self.invalidate_upstream(upstream);
        (here, shared)
    }

    /// Fetches a new token now for each of `upstream`'s cached keys, replacing the cached one
    /// (and the shared tier's). Returns how many were replaced and how many failed.
    pub async fn refresh_now(&self, upstream: &Arc<Upstream>) -> (usize, usize) {
        let keys: Vec<CacheKey> = self
            .entries
            .iter()
            .filter(|(key, _)| key.upstream == upstream.name())
            .map(|(key, _)| (*key).clone())
            .collect();
        let (mut replaced, mut failed) = (0, 0);
        for key in keys {
            match self.fetch(upstream, &key, Purpose::Serve).await {
                Ok(fresh) => {
                    if let Some(shared) = self.shared.as_deref() {
                        self.publish(shared, &key, &fresh).await;
                    }
                    self.entries.insert(key, fresh).await;
                    replaced += 1;
                }
                Err(error) => {
                    tracing::warn!(upstream = %upstream.name(), error = %error, "refresh asked by an operator failed; the current token stays");
                    failed += 1;
                }
            }
        }
        (replaced, failed)
    }

    /// With a shared tier: drops from memory what other replicas evict, for as long as the
    /// process runs (the caller spawns it).
    pub fn watch_evictions(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let shared = self.shared.clone()?;
        let cache = self.clone();
        let tags = shared.clone();
        Some(shared.watch_evictions(Box::new(move |tag: &str| {
            let (tag, tags) = (tag.to_string(), tags.clone());
            tracing::info!("another replica evicted an upstream's tokens: dropping them here too");
            if let Err(e) = cache
                .entries
                .invalidate_if(move |key, _| tags.upstream_tag(&key.upstream) == tag)
            {
                tracing::error!(error = %e, "could not drop cached tokens");
            }
        })))
    }
}
