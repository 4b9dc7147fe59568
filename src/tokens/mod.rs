//! Upstream tokens, cached until shortly before they expire and fetched once per key, in memory
//! and (optionally) in a Redis tier shared by replicas.

mod cache;
pub mod config;
mod key;
mod shared;
mod store;

pub use cache::{CachedToken, ReplaceError, Served, TokenCache};
pub use key::CacheKey;
pub use shared::{redis_client, SharedTier, SharedTierError};
pub use store::{Lock, SharedStore, StoredToken};
