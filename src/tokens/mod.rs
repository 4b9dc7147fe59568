//! Upstream tokens, cached until shortly before they expire and fetched once per key, in memory
//! and (optionally) in a Redis tier shared by replicas.

mod cache;
mod key;
pub mod config;
mod shared;

pub use cache::{CachedToken, ReplaceError, Served, TokenCache};
pub use key::CacheKey;
pub use shared::{redis_client, SharedTier};
