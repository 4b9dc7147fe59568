//! What a cached token is filed under, in memory and (hashed) in Redis.

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
        Self {
            upstream: upstream.name().to_string(),
            settings: upstream.token_settings,
            scopes: scopes.clone(),
        }
    }
}
