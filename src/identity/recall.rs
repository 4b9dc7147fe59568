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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use foldhash::fast::FixedState;

/// Entries a thread keeps of one kind; past it, it forgets them all and starts again (the
/// shared cache still has them).
pub(super) const CAPACITY: usize = 4096;

/// A number for an authenticator that no other authenticator of this process has had.
pub(super) fn new_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An entry's deadline: when the shared cache drops it, and a recollection stops answering with it.
pub(super) trait Lapses {
    fn until(&self) -> Instant;
}

/// One thread's entries of one kind, by authenticator and the SHA-256 digest of the credential.
/// The digests are not chosen by a caller, so a fixed hasher seed is enough.
pub(super) struct Recollection<V> {
    entries: HashMap<(u64, [u8; 32]), V, FixedState>,
}

impl<V: Clone + Lapses> Recollection<V> {
    pub(super) const fn new() -> Self {
        Self {
            entries: HashMap::with_hasher(FixedState::with_seed(0)),
        }
    }

    /// The entry, while its deadline is ahead of `now`; one past it is forgotten.
    pub(super) fn get(&mut self, owner: u64, digest: &[u8; 32], now: Instant) -> Option<V> {
        let value = self.entries.get(&(owner, *digest))?;
        if value.until() > now {
            return Some(value.clone());
        }
        self.forget(owner, digest);
        None
    }

    pub(super) fn keep(&mut self, owner: u64, digest: [u8; 32], value: V) {
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        self.entries.insert((owner, digest), value);
    }

    pub(super) fn forget(&mut self, owner: u64, digest: &[u8; 32]) {
        self.entries.remove(&(owner, *digest));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Declares a thread's recollection of `V` and the three ways to use it, none of which can panic
/// (while the thread is being torn down, or should a use ever nest, they do nothing).
macro_rules! thread_recollection {
    ($name:ident: $value:ty) => {
        thread_local! {
            static $name: std::cell::RefCell<$crate::identity::recall::Recollection<$value>> =
                const { std::cell::RefCell::new($crate::identity::recall::Recollection::new()) };
        }

        /// The entry this thread holds, while it is within its deadline.
        fn recalled(owner: u64, digest: &[u8; 32]) -> Option<$value> {
            $name
                .try_with(|cell| {
                    cell.try_borrow_mut()
                        .ok()?
                        .get(owner, digest, std::time::Instant::now())
                })
                .ok()
                .flatten()
        }

        fn remember(owner: u64, digest: [u8; 32], value: $value) {
            let _ = $name.try_with(|cell| {
                if let Ok(mut entries) = cell.try_borrow_mut() {
                    entries.keep(owner, digest, value);
                }
            });
        }

        // Used by authenticators whose entries can also lapse otherwise (an id_token's exp by the
        // test clock); a decision lapses by its deadline alone.
        #[allow(dead_code)]
        fn forget(owner: u64, digest: &[u8; 32]) {
            let _ = $name.try_with(|cell| {
                if let Ok(mut entries) = cell.try_borrow_mut() {
                    entries.forget(owner, digest);
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
