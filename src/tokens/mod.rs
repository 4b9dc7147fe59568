//! Upstream tokens, cached until shortly before they expire and fetched once per key.

mod cache;

pub use cache::{CacheKey, CachedToken, Served, TokenCache};
