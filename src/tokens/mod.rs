//! Upstream tokens, cached until shortly before they expire and fetched once per key, in memory
//! and (optionally) in a Redis tier shared by replicas.

mod answer;
mod cache;
pub mod config;
mod key;
mod shared;
mod store;

pub use answer::Answer;
pub use cache::{CachedToken, ReplaceError, Served, TokenCache};
pub use key::CacheKey;
pub use shared::{redis_client, SharedTier, SharedTierError};
pub use store::{Lock, SharedStore, StoredToken};
