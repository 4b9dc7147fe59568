//! The tier replicas share, as the token cache sees it: an interface the cache owns, so the cache
//! can be tested without Redis and the Redis tier ([`super::shared`]) depends on the cache's
//! types, not the other way round.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::key::CacheKey;
use crate::upstream::config::Fingerprint;

/// A token as replicas share it. Times are wall-clock milliseconds since the Unix epoch.
/// Its `Debug` leaves the token out.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredToken {
    pub access_token: String,
    pub scope: String,
    pub lifetime_ms: u64,
    pub fetched_at_ms: u64,
    pub serve_until_ms: u64,
    /// Hex SHA-256 fingerprint of the credential that fetched it (empty in entries written by
    /// versions before rotation, which are then fetched anew).
    #[serde(default)]
    pub credential: String,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[redacted]")
            .field("scope", &self.scope)
            .field("lifetime_ms", &self.lifetime_ms)
            .field("fetched_at_ms", &self.fetched_at_ms)
            .field("serve_until_ms", &self.serve_until_ms)
            .field("credential", &self.credential)
            .finish()
    }
}

pub enum Lock {
    /// This replica may fetch; release with the owner value.
    Acquired(String),
    /// Another replica is fetching.
    Held,
    /// Redis did not answer: fetch without coordination.
    Unavailable,
}

/// Where replicas share tokens and coordinate their fetches. Every operation is bounded in time and
/// never fails loudly: `None` and [`Lock::Unavailable`] mean "carry on without it".
pub trait SharedStore: Send + Sync {
    /// A still-stored token for `key` fetched with one of `credentials` (tried in that order).
    fn read<'a>(&'a self, key: &'a CacheKey, credentials: &'a [Fingerprint]) -> BoxFuture<'a, Option<StoredToken>>;
    /// Stores `token` for `ttl` (its remaining served life), filed under the key and the
    /// credential it was fetched with.
    fn write<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken, ttl: Duration) -> BoxFuture<'a, ()>;
    /// Tries to become the one replica that fetches `key`, for at most `ttl`.
    fn lock<'a>(&'a self, key: &'a CacheKey, ttl: Duration) -> BoxFuture<'a, Lock>;
    /// Whether some replica holds the lock for `key` (`None`: the store did not answer).
    fn is_locked<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Option<bool>>;
    /// Releases the lock if `owner` still holds it.
    fn unlock<'a>(&'a self, key: &'a CacheKey, owner: &'a str) -> BoxFuture<'a, ()>;
    /// A one-off check at start-up that warns when the store is not usable.
    fn probe(&self) -> BoxFuture<'static, ()>;
    /// Deletes every token stored for `upstream` and tells the other replicas to drop theirs from
    /// memory; the number deleted (`None`: the store did not answer).
    fn evict<'a>(&'a self, upstream: &'a str) -> BoxFuture<'a, Option<usize>>;
    /// Runs for as long as the process does: calls `evicted` with the tag ([`Self::upstream_tag`])
    /// of each upstream another replica evicted.
    fn watch_evictions(&self, evicted: Box<dyn Fn(&str) + Send + Sync>) -> BoxFuture<'static, ()>;
    /// The name an upstream goes by in the store (not its configured name).
    fn upstream_tag(&self, upstream: &str) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_token_never_shows_its_token_in_debug_output() {
        let stored = StoredToken {
            access_token: "canary-access-token".into(),
            scope: "reports:read".into(),
            lifetime_ms: 1,
            fetched_at_ms: 2,
            serve_until_ms: 3,
            credential: String::new(),
        };
        let debug = format!("{stored:?}");
        assert!(!debug.contains("canary-access-token"), "{debug}");
        assert!(
            debug.contains("reports:read") && debug.contains("[redacted]"),
            "{debug}"
        );
    }
}
