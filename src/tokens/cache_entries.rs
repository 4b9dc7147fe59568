//! The token cache's entries: moka's cache, and in front of it what each worker thread recalls
//! of the tokens it served.
//!
//! A lookup in moka records the read for its eviction policy and now and then does that
//! policy's housekeeping on the caller's time: about 175 ns in a loop, and in the load benchmark
//! the largest single step of a warm token request after the HTTP server's own work. A thread's
//! recollection answers a warm request in a few nanoseconds.
//!
//! It never answers with a token that a change to the entries replaced or dropped: every change
//! goes through this type, which counts it (the *generation*), and a thread's recollection holds
//! only tokens read while the generation had one value; it is emptied as soon as the thread
//! sees another. (A request that reads while another thread's change is under way may get the
//! token from before it, as it could from moka itself.) Expiry needs nothing here: the caller
//! checks each token's `serve_until` and credential, whatever gave it. A token moka evicts for
//! room stays recalled until the next change; it is still a valid token.
//!
//! Moka does not see the reads answered here, so its eviction policy knows hot keys less well:
//! past `max_entries`, a hot key may be evicted and then fetched again after the next change.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use moka::Equivalent;

use super::CachedToken;
use crate::tokens::key::{CacheKey, KeyRef, KeyText};

type Map = Cache<CacheKey, Arc<CachedToken>, RandomState>;

pub(super) struct Entries {
    map: Map,
    /// Tells this cache's recollections from another's (tests run many brokers in a process).
    id: u64,
    /// How many changes the entries have seen.
    generation: AtomicU64,
    /// Most keys a thread recalls; past it, it starts over.
    capacity: usize,
}

/// What the current thread recalls of one cache's tokens at one generation.
struct Recalled {
    cache: u64,
    generation: u64,
    tokens: HashTable<(KeyText, Arc<CachedToken>)>,
}

thread_local! {
    static RECALLED: RefCell<Recalled> = const {
        RefCell::new(Recalled { cache: 0, generation: 0, tokens: HashTable::new() })
    };
}

static CACHES: AtomicU64 = AtomicU64::new(1);

impl Entries {
    pub(super) fn new(map: Map, capacity: u64) -> Self {
        Self {
            map,
            id: CACHES.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
        }
    }

    /// The token filed under `key`, if any (servable or not: the caller checks): recalled by this
    /// thread when the entries have not changed since it read it, else read from moka.
    pub(super) async fn get_warm(&self, key: &KeyRef<'_>) -> Option<Arc<CachedToken>> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(token) = self.recall(key, generation) {
            return Some(token);
        }
        let token = self.map.get(key).await?;
        self.remember(key, generation, &token);
        Some(token)
    }

    fn recall(&self, key: &KeyRef<'_>, generation: u64) -> Option<Arc<CachedToken>> {
        RECALLED
            .try_with(|recalled| {
                let mut recalled = recalled.borrow_mut();
                if (recalled.cache, recalled.generation) != (self.id, generation) {
                    // Another cache's, or from before a change: none of it may be used.
                    recalled.tokens.clear();
                    (recalled.cache, recalled.generation) = (self.id, generation);
                    return None;
                }
                let (_, token) = recalled.tokens.find(key.hash_value(), |(k, _)| key.is(k))?;
                Some(token.clone())
            })
            .ok()
            .flatten()
    }

    /// Keeps `token`, read from moka at `generation`, unless the entries changed meanwhile.
    fn remember(&self, key: &KeyRef<'_>, generation: u64, token: &Arc<CachedToken>) {
        let _ = RECALLED.try_with(|recalled| {
            let mut recalled = recalled.borrow_mut();
            if (recalled.cache, recalled.generation) != (self.id, generation)
                || self.generation.load(Ordering::Acquire) != generation
            {
                return;
            }
            if recalled.tokens.len() >= self.capacity {
                recalled.tokens.clear();
            }
            let token = token.clone();
            match recalled
                .tokens
                .entry(key.hash_value(), |(k, _)| key.is(k), |(k, _)| k.hash_value())
            {
                Entry::Occupied(mut held) => held.get_mut().1 = token,
                Entry::Vacant(vacant) => {
                    vacant.insert((key.to_text(), token));
                }
            }
        });
    }

    /// After every change: what any thread recalls is from before it.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The token filed under `key` in moka (the read is recorded; nothing recalled is used).
    pub(super) async fn get<Q: Equivalent<CacheKey> + std::hash::Hash + ?Sized>(
        &self,
        key: &Q,
    ) -> Option<Arc<CachedToken>> {
        self.map.get(key).await
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (Arc<CacheKey>, Arc<CachedToken>)> + '_ {
        self.map.iter()
    }

    pub(super) async fn insert(&self, key: CacheKey, token: Arc<CachedToken>) {
        self.map.insert(key, token).await;
        self.changed();
    }

    /// The token under `key`, or `init`'s, loaded once for all callers who wait for it.
    pub(super) async fn try_get_with<E: Send + Sync + 'static>(
        &self,
        key: CacheKey,
        init: impl Future<Output = Result<Arc<CachedToken>, E>>,
    ) -> Result<Arc<CachedToken>, Arc<E>> {
        let token = self.map.try_get_with(key, init).await;
        self.changed();
        token
    }

    /// Drops the entries `predicate` picks (moka hides them from reads at once).
    pub(super) fn invalidate_if(
        &self,
        predicate: impl Fn(&CacheKey, &Arc<CachedToken>) -> bool + Send + Sync + 'static,
    ) -> Result<(), moka::PredicateError> {
        let done = self.map.invalidate_entries_if(predicate).map(drop);
        self.changed();
        done
    }

    /// Replaces, keeps or removes the entry under `key` as `decide` says, one decision at a time.
    pub(super) async fn compute<E, Decided>(
        &self,
        key: CacheKey,
        decide: impl FnOnce(Option<moka::Entry<CacheKey, Arc<CachedToken>>>) -> Decided,
    ) -> Result<CompResult<CacheKey, Arc<CachedToken>>, E>
    where
        E: Send + Sync + 'static,
        Decided: Future<Output = Result<Op<Arc<CachedToken>>, E>>,
    {
        let done = self.map.entry(key).and_try_compute_with(decide).await;
        self.changed();
        done
    }

    #[cfg(test)]
    pub(super) async fn run_pending_tasks(&self) {
        self.map.run_pending_tasks().await;
    }
}
