//! What a cached token is filed under, in memory and (hashed) in Redis.

use crate::scope::ScopeSet;
use crate::upstream::config::CredentialFingerprint;
use crate::upstream::Upstream;

/// One cache entry per upstream, credentials and set of scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub upstream: String,
    /// Tokens fetched under other credentials or settings are other entries.
    pub credentials: CredentialFingerprint,
    pub scopes: ScopeSet,
}

impl CacheKey {
    pub fn new(upstream: &Upstream, scopes: &ScopeSet) -> Self {
        Self {
            upstream: upstream.name().to_string(),
            credentials: upstream.credentials,
            scopes: scopes.clone(),
        }
    }
}
