//! What each worker thread remembers of the credentials its authenticators decided lately, in
//! front of their shared caches.
//!
//! A verified id_token or a session's decision is kept in a moka cache shared by every worker. A
//! read of moka records itself for the eviction policy and now and then runs the policy's
//! housekeeping on the reader's time, which made it the most expensive step of a warm request.
//! Each thread therefore keeps the entries it read from moka in a plain map of its own and asks
//! moka only when it has none. This is sound because those entries are never changed once made:
//! each holds the moment moka drops it (a verified token's `exp`, or an hour after it was verified
//! if that is sooner, so that a key its issuer withdraws stops being trusted; a decision's end of
//! `cache_ttl`), which the authenticator checks on every recalled answer, and moka's own evictions
//! for room drop nothing that is still valid. An entry is filed under the authenticator
//! that made it, by a number no other authenticator of the process gets, so a configuration
//! reload's new authenticator never answers from its predecessor's entries.
//!
//! An entry is found by the credential itself where that is cheap to keep (an id_token: its
//! SHA-256, which the shared cache is keyed by, cost more than the rest of a warm request's
//! authentication), compared in full, or by the credential's digest (a session's cookies).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use foldhash::fast::RandomState;
use hashbrown::{Equivalent, HashMap};

/// Entries a thread keeps of one kind; past it, it forgets them all and starts again (the
/// shared cache still has them).
pub(super) const CAPACITY: usize = 4096;
/// The bytes of credentials a thread keeps of one kind, past which it starts again too: 2 MiB
/// holds about 2,000 id_tokens of a typical size.
pub(super) const CAPACITY_BYTES: usize = 2 << 20;

/// A number for an authenticator that no other authenticator of this process has had.
pub(super) fn new_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An entry's deadline: when the shared cache drops it, and a recollection stops answering with it.
pub(super) trait Lapses {
    fn until(&self) -> Instant;
}

/// One thread's entries of one kind, by authenticator and credential (`K`, looked up as `Q`).
/// Credentials are the caller's text, so the hasher's seed is chosen at random.
pub(super) struct Recollection<K, V> {
    entries: HashMap<(u64, K), V, RandomState>,
    bytes: usize,
}

/// A lookup of `(owner, key)` by a borrowed key: hashes as the tuple does.
struct Probe<'a, Q: ?Sized>(u64, &'a Q);

impl<Q: ?Sized + Hash> Hash for Probe<'_, Q> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl<Q: ?Sized + Eq, K: Borrow<Q>> Equivalent<(u64, K)> for Probe<'_, Q> {
    fn equivalent(&self, key: &(u64, K)) -> bool {
        self.0 == key.0 && self.1 == key.1.borrow()
    }
}

impl<K: Hash + Eq + AsRef<[u8]>, V: Clone + Lapses> Recollection<K, V> {
    pub(super) fn new() -> Self {
        Self {
            entries: HashMap::with_hasher(RandomState::default()),
            bytes: 0,
        }
    }

    /// The entry, while its deadline is ahead of `now`; one past it is forgotten.
    pub(super) fn get<Q>(&mut self, owner: u64, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        let value = self.entries.get(&Probe(owner, key))?;
        if value.until() > now {
            return Some(value.clone());
        }
        self.forget(owner, key);
        None
    }

    /// Keeps `value`, unless its credential alone is larger than the bound (the shared cache still
    /// has it).
    pub(super) fn keep(&mut self, owner: u64, key: K, value: V) {
        let bytes = key.as_ref().len();
        if bytes > CAPACITY_BYTES {
            return;
        }
        if self.entries.len() >= CAPACITY || self.bytes + bytes > CAPACITY_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        if self.entries.insert((owner, key), value).is_none() {
            self.bytes += bytes;
        }
    }

    pub(super) fn forget<Q>(&mut self, owner: u64, key: &Q)
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        if let Some(((_, key), _)) = self.entries.remove_entry(&Probe(owner, key)) {
            self.bytes -= key.as_ref().len();
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Declares a thread's recollection of `V` by credentials kept as `K` and looked up as `Q`, and
/// the three ways to use it, none of which can panic (while the thread is being torn down, or
/// should a use ever nest, they do nothing).
macro_rules! thread_recollection {
    ($name:ident: $key:ty, $lookup:ty => $value:ty) => {
        thread_local! {
            static $name: std::cell::RefCell<$crate::identity::recall::Recollection<$key, $value>> =
                std::cell::RefCell::new($crate::identity::recall::Recollection::new());
        }

        /// The entry this thread holds, while it is within its deadline.
        fn recalled(owner: u64, key: &$lookup) -> Option<$value> {
            $name
                .try_with(|cell| {
                    cell.try_borrow_mut()
                        .ok()?
                        .get(owner, key, std::time::Instant::now())
                })
                .ok()
                .flatten()
        }

        fn remember(owner: u64, key: $key, value: $value) {
            let _ = $name.try_with(|cell| {
                if let Ok(mut entries) = cell.try_borrow_mut() {
                    entries.keep(owner, key, value);
                }
            });
        }

        // Used by authenticators whose entries can also lapse otherwise (an id_token's exp by the
        // test clock); a decision lapses by its deadline alone.
        #[allow(dead_code)]
        fn forget(owner: u64, key: &$lookup) {
            let _ = $name.try_with(|cell| {
                if let Ok(mut entries) = cell.try_borrow_mut() {
                    entries.forget(owner, key);
                }
            });
        }
    };
}
pub(super) use thread_recollection;

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[derive(Clone, Debug, PartialEq)]
    struct Entry(usize, Instant);

    impl Lapses for Entry {
        fn until(&self) -> Instant {
            self.1
        }
    }

    #[test]
    fn an_entry_is_found_only_under_its_own_authenticator_and_digest_and_before_its_deadline() {
        let (one, other) = (new_owner(), new_owner());
        assert_ne!(one, other);
        let now = Instant::now();
        let alice = Entry(1, now + Duration::from_secs(10));
        let mut recollection = Recollection::new();
        recollection.keep(one, [1; 32], alice.clone());
        assert_eq!(recollection.get(one, &[1; 32], now), Some(alice.clone()));
        assert_eq!(recollection.get(other, &[1; 32], now), None, "another authenticator's");
        assert_eq!(recollection.get(one, &[2; 32], now), None, "another credential's");
        let later = now + Duration::from_secs(10);
        assert_eq!(recollection.get(one, &[1; 32], later), None, "at its deadline");
        assert_eq!(recollection.len(), 0, "forgotten once past it");
        recollection.keep(one, [1; 32], alice);
        recollection.forget(one, &[1; 32]);
        assert_eq!(recollection.get(one, &[1; 32], now), None);
    }

    #[test]
    fn a_credential_kept_whole_is_found_only_whole_and_its_bytes_are_bounded() {
        let owner = new_owner();
        let now = Instant::now();
        let until = now + Duration::from_secs(10);
        let mut recollection: Recollection<Box<[u8]>, Entry> = Recollection::new();
        recollection.keep(owner, b"eyJ.a.b"[..].into(), Entry(1, until));
        assert_eq!(recollection.get(owner, &b"eyJ.a.b"[..], now), Some(Entry(1, until)));
        for other in [&b"eyJ.a."[..], b"eyJ.a.bc", b"eyJ.a.c", b""] {
            assert_eq!(recollection.get(owner, other, now), None, "{other:?}");
        }
        // Each kept credential counts its bytes: the third megabyte does not fit beside two.
        let large = |fill: u8| vec![fill; 1 << 20].into_boxed_slice();
        recollection.keep(owner, large(1), Entry(2, until));
        assert_eq!(recollection.len(), 2);
        recollection.keep(owner, large(2), Entry(3, until));
        assert_eq!(recollection.len(), 1, "cleared when the bytes would pass the bound");
        assert_eq!(recollection.get(owner, &large(2)[..], now), Some(Entry(3, until)));
        recollection.forget(owner, &large(2)[..]);
        recollection.keep(owner, large(3), Entry(4, until));
        recollection.keep(owner, large(4), Entry(5, until));
        assert_eq!(recollection.len(), 2, "a forgotten credential's bytes count no more");
        recollection.keep(owner, vec![5; CAPACITY_BYTES + 1].into_boxed_slice(), Entry(6, until));
        assert_eq!(recollection.len(), 2, "a credential larger than the bound is not kept");
    }

    #[test]
    fn past_its_capacity_a_thread_starts_again() {
        let owner = new_owner();
        let mut recollection = Recollection::new();
        let now = Instant::now();
        let until = now + Duration::from_secs(10);
        for i in 0..=CAPACITY {
            let mut digest = [0; 32];
            digest[..8].copy_from_slice(&(i as u64).to_le_bytes());
            recollection.keep(owner, digest, Entry(i, until));
        }
        assert_eq!(recollection.len(), 1, "cleared when full, then the newest kept");
        let mut newest = [0; 32];
        newest[..8].copy_from_slice(&(CAPACITY as u64).to_le_bytes());
        assert_eq!(recollection.get(owner, &newest, now), Some(Entry(CAPACITY, until)));
    }
}
