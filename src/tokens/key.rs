//! What a cached token is filed under, in memory and (hashed) in Redis.

use moka::Equivalent;

use crate::scope::ScopeSet;
use crate::upstream::config::Fingerprint;
use crate::upstream::Upstream;

/// One cache entry per upstream, token settings and set of scopes. Which credential fetched the
/// token is recorded in the entry, not in the key, so that reordering or adding credentials keeps
/// the tokens fetched under those that stay.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub upstream: String,
    /// Tokens asked for with other settings (endpoint, client id, audience, …) are other entries.
    pub settings: Fingerprint,
    pub scopes: ScopeSet,
}

impl CacheKey {
    pub fn new(upstream: &Upstream, scopes: &ScopeSet) -> Self {
        KeyRef::new(upstream, scopes).to_key()
    }
}

/// A [`CacheKey`] made of what the request already holds, to look a token up with: the warm path
/// neither copies the upstream's name and every scope into a new key nor frees them afterwards.
/// It hashes exactly as the key it stands for (same fields, same order, `&T` hashing as `T`).
#[derive(Hash)]
pub struct KeyRef<'a> {
    upstream: &'a str,
    settings: Fingerprint,
    scopes: &'a ScopeSet,
}

impl<'a> KeyRef<'a> {
    pub fn new(upstream: &'a Upstream, scopes: &'a ScopeSet) -> Self {
        Self {
            upstream: upstream.name(),
            settings: upstream.token_settings,
            scopes,
        }
    }

    /// The key itself, to file a token under.
    pub fn to_key(&self) -> CacheKey {
        CacheKey {
            upstream: self.upstream.to_string(),
            settings: self.settings,
            scopes: self.scopes.clone(),
        }
    }
}

impl Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.upstream == key.upstream && self.settings == key.settings && *self.scopes == key.scopes
    }
}
