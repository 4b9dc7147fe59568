//! The token cache's entries: moka's cache, and in front of it what each worker thread recalls
//! of the tokens it served.
//!
//! A lookup in moka records the read for its eviction policy and now and then does that
//! policy's housekeeping on the caller's time: about 175 ns in a loop, and in the load benchmark
//! the largest single step of a warm token request after the HTTP server's own work. A thread's
//! recollection answers a warm request in a few nanoseconds.
//!
//! It never answers with a token that a change to the entries replaced or dropped: every change
//! goes through this type, which counts it (the *generation*), and so does every entry moka
//! evicts for room (its eviction listener counts those); a thread's recollection holds only
//! tokens read while the generation had one value, and it is emptied as soon as the thread sees
//! another. (A request that reads while another thread's change is under way may get the token
//! from before it, as it could from moka itself.) A change is counted when its future ends,
//! completed or dropped. Expiry needs nothing here: the caller checks each token's `serve_until`
//! and credential, whatever gave it.
//!
//! Moka does not see the reads answered here, so its eviction policy knows hot keys less well:
//! past `max_entries`, a hot key is likelier to be evicted, and is then fetched again.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::Equivalent;

use super::{CachedToken, ServedLife};
use crate::tokens::key::{CacheKey, KeyRef, KeyText};

type Map = Cache<CacheKey, Arc<CachedToken>, RandomState>;

pub(super) struct Entries {
    map: Map,
    /// Tells this cache's recollections from another's (tests run many brokers in a process).
    id: u64,
    /// How many changes the entries have seen (shared with moka's eviction listener).
    generation: Arc<AtomicU64>,
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
    /// Entries for at most `capacity` tokens, each evicted once its served life is over.
    pub(super) fn new(capacity: u64) -> Self {
        let generation = Arc::new(AtomicU64::new(0));
        let evictions = generation.clone();
        let map = Cache::builder()
            .max_capacity(capacity)
            .expire_after(ServedLife)
            .support_invalidation_closures()
            // moka's own removals for room are changes too: a thread may recall what it evicted
            // (explicit removals and replacements are counted where they are made).
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions.fetch_add(1, Ordering::AcqRel);
                }
            })
            .build_with_hasher(RandomState::default());
        Self {
            map,
            id: CACHES.fetch_add(1, Ordering::Relaxed),
            generation,
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
        }
    }

    /// The token filed under `key`, if any (servable or not: the caller checks): when `recall`,
    /// recalled by this thread if the entries have not changed since it read it; else from moka.
    pub(super) async fn get_warm(&self, key: &KeyRef<'_>, recall: bool) -> Option<Arc<CachedToken>> {
        let generation = self.generation.load(Ordering::Acquire);
        if recall {
            if let Some(token) = self.recall(key, generation) {
                return Some(token);
            }
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

    /// Held over a change: counts it when dropped, after the change or when its future is
    /// dropped midway (what any thread recalls is then from before it).
    fn changing(&self) -> Change<'_> {
        Change(&self.generation)
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
        let _change = self.changing();
        self.map.insert(key, token).await;
    }

    /// The token under `key`, or `init`'s, loaded once for all callers who wait for it.
    pub(super) async fn try_get_with<E: Send + Sync + 'static>(
        &self,
        key: CacheKey,
        init: impl Future<Output = Result<Arc<CachedToken>, E>>,
    ) -> Result<Arc<CachedToken>, Arc<E>> {
        let _change = self.changing();
        self.map.try_get_with(key, init).await
    }

    /// Drops the entries `predicate` picks (moka hides them from reads at once).
    pub(super) fn invalidate_if(
        &self,
        predicate: impl Fn(&CacheKey, &Arc<CachedToken>) -> bool + Send + Sync + 'static,
    ) -> Result<(), moka::PredicateError> {
        let _change = self.changing();
        self.map.invalidate_entries_if(predicate).map(drop)
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
        let _change = self.changing();
        self.map.entry(key).and_try_compute_with(decide).await
    }

    #[cfg(test)]
    pub(super) fn changes(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(super) async fn run_pending_tasks(&self) {
        self.map.run_pending_tasks().await;
    }
}

struct Change<'a>(&'a AtomicU64);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}
