//! The cache on a manual clock, against a stand-in token endpoint and an in-memory shared tier.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use parking_lot::Mutex;
use secrecy::ExposeSecret;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::scope::Scope;
use crate::tokens::store::StoredToken;
use crate::upstream::TokenClient;

/// Issues `token-1`, `token-2`, … living `expires_in` seconds.
struct Issue {
    issued: Arc<AtomicUsize>,
    expires_in: u64,
}

impl Respond for Issue {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({ "access_token": format!("token-{n}"), "expires_in": self.expires_in }))
            .set_delay(Duration::from_millis(50))
    }
}

struct Fixture {
    _server: MockServer,
    issued: Arc<AtomicUsize>,
    upstream: Arc<Upstream>,
    clock: Arc<ManualClock>,
    cache: TokenCache,
    scopes: ScopeSet,
}

async fn fixture(expires_in: u64, shared: Option<Arc<dyn SharedStore>>) -> Fixture {
    let server = MockServer::start().await;
    let issued = Arc::new(AtomicUsize::new(0));
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Issue {
            issued: issued.clone(),
            expires_in,
        })
        .mount(&server)
        .await;
    let toml = format!(
        "[upstreams.u]\ntoken_url = \"{}/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\nscopes = [\"r\"]\ntimeout = \"1s\"\n\
         [[authenticators]]\ntype = \"api_key\"\nkeys = [{{ id = \"k\", hash = \"sha256:{}\", subject = \"s\" }}]\n",
        server.uri(),
        "0".repeat(64),
    );
    let settings = crate::settings::Settings::from_toml(&toml, &Default::default()).unwrap();
    let clock = ManualClock::new();
    let metrics = Arc::new(Metrics::new());
    let client = TokenClient::new(TokenClient::http_client(), Duration::from_secs(300));
    let upstream = Arc::new(Upstream::new(
        settings.upstreams["u"].clone(),
        client,
        clock.clone(),
        metrics.clone(),
    ));
    let cache = TokenCache::new(clock.clone(), metrics, 100, Duration::from_secs(60), shared);
    Fixture {
        _server: server,
        issued,
        upstream,
        clock,
        cache,
        scopes: [Scope::parse("r").unwrap()].into(),
    }
}

impl Fixture {
    async fn token(&self) -> (String, bool) {
        let served = self.cache.get(&self.upstream, &self.scopes).await.unwrap();
        (served.token.access_token.expose_secret().to_string(), served.cache_hit)
    }

    fn fetches(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

/// The warm path looks tokens up by a borrowed key; one that hashed or compared differently from
/// the stored key would still be answered, by the slow path, so this is checked on its own.
#[tokio::test]
async fn a_borrowed_key_finds_the_token_filed_under_its_owned_key() {
    let f = fixture(3600, None).await;
    f.token().await;
    let borrowed = KeyRef::new(&f.upstream, &f.scopes);
    let owned = CacheKey::new(&f.upstream, &f.scopes);
    let hasher = std::hash::RandomState::new();
    assert_eq!(
        std::hash::BuildHasher::hash_one(&hasher, &borrowed),
        std::hash::BuildHasher::hash_one(&hasher, &owned)
    );
    assert!(f.cache.entries.get(&borrowed).await.is_some());
    let other: ScopeSet = [Scope::parse("w").unwrap()].into();
    assert!(f.cache.entries.get(&KeyRef::new(&f.upstream, &other)).await.is_none());
}

#[tokio::test]
async fn concurrent_misses_of_one_key_make_one_fetch() {
    let f = fixture(3600, None).await;
    let tokens = join_all((0..20).map(|_| f.token())).await;
    assert!(tokens.iter().all(|(t, _)| t == "token-1"));
    assert_eq!(tokens.iter().filter(|(_, hit)| !hit).count(), 1, "one caller fetched");
    assert_eq!(f.fetches(), 1);
}

#[tokio::test]
async fn a_token_is_served_until_its_served_life_ends_then_fetched_anew() {
    // 100 s of life: served for 100 − min(60, 100/4) = 75 s.
    let f = fixture(100, None).await;
    assert_eq!(f.token().await, ("token-1".into(), false));
    f.clock.advance(Duration::from_secs(40));
    assert_eq!(f.token().await, ("token-1".into(), true));
    let served = f.cache.get(&f.upstream, &f.scopes).await.unwrap();
    assert_eq!(
        served.expires_in.as_secs(),
        34,
        "counts down to the end of the served life"
    );
    f.clock.advance(Duration::from_secs(36));
    assert_eq!(f.token().await, ("token-2".into(), false));
    assert_eq!(f.fetches(), 2);
}

#[tokio::test]
async fn once_most_of_its_life_has_passed_a_token_is_refreshed_in_the_background() {
    let f = fixture(100, None).await;
    f.token().await;
    // 80% ± 5% of 75 s is at most 63.75 s; the caller still gets the current token at once.
    f.clock.advance(Duration::from_secs(65));
    assert_eq!(f.token().await, ("token-1".into(), true));
    for _ in 0..100 {
        if f.fetches() == 2 && f.token().await.0 == "token-2" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no background refresh: {} fetches", f.fetches());
}

/// An in-memory shared tier: what another replica stored, and a lock someone may hold.
#[derive(Default)]
struct MemoryStore {
    entries: Mutex<HashMap<CacheKey, StoredToken>>,
    lock_held_by_another: AtomicBool,
    writes: AtomicUsize,
}

impl SharedStore for MemoryStore {
    fn read<'a>(&'a self, key: &'a CacheKey, credentials: &'a [Fingerprint]) -> BoxFuture<'a, Option<StoredToken>> {
        let found = self
            .entries
            .lock()
            .get(key)
            .filter(|token| credentials.iter().any(|c| hex::encode(c.0) == token.credential))
            .cloned();
        async move { found }.boxed()
    }

    fn write<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken, _ttl: Duration) -> BoxFuture<'a, ()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.entries.lock().insert(key.clone(), token.clone());
        async {}.boxed()
    }

    fn lock<'a>(&'a self, _key: &'a CacheKey, _ttl: Duration) -> BoxFuture<'a, Lock> {
        let lock = if self.lock_held_by_another.load(Ordering::SeqCst) {
            Lock::Held
        } else {
            Lock::Acquired("me".into())
        };
        async move { lock }.boxed()
    }

    fn is_locked<'a>(&'a self, _key: &'a CacheKey) -> BoxFuture<'a, Option<bool>> {
        let held = self.lock_held_by_another.load(Ordering::SeqCst);
        async move { Some(held) }.boxed()
    }

    fn unlock<'a>(&'a self, _key: &'a CacheKey, _owner: &'a str) -> BoxFuture<'a, ()> {
        async {}.boxed()
    }

    fn probe(&self) -> BoxFuture<'static, ()> {
        async {}.boxed()
    }

    fn evict<'a>(&'a self, upstream: &'a str) -> BoxFuture<'a, Option<usize>> {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|key, _| key.upstream != upstream);
        let deleted = before - entries.len();
        async move { Some(deleted) }.boxed()
    }

    fn watch_evictions(&self, _evicted: Box<dyn Fn(&str) + Send + Sync>) -> BoxFuture<'static, ()> {
        futures_util::future::pending().boxed()
    }

    fn upstream_tag(&self, upstream: &str) -> String {
        upstream.to_string()
    }
}

#[tokio::test]
async fn a_token_another_replica_stored_is_adopted_without_a_fetch() {
    let store = Arc::new(MemoryStore::default());
    let f = fixture(3600, Some(store.clone())).await;
    store.entries.lock().insert(
        CacheKey::new(&f.upstream, &f.scopes),
        stored_by_another_replica(&f, f.upstream.credentials[0]),
    );
    assert_eq!(f.token().await.0, "from-another-replica");
    assert_eq!(f.fetches(), 0);
    let served = f.cache.get(&f.upstream, &f.scopes).await.unwrap();
    assert_eq!(
        served.expires_in.as_secs(),
        3_529,
        "its served life as the other replica set it"
    );
}

/// A token as another replica stored it ten seconds ago, fetched with `credential`.
fn stored_by_another_replica(f: &Fixture, credential: Fingerprint) -> StoredToken {
    let now_ms = f.clock.unix_now_millis();
    StoredToken {
        access_token: "from-another-replica".into(),
        scope: "r".into(),
        lifetime_ms: 3_600_000,
        fetched_at_ms: now_ms - 10_000,
        serve_until_ms: now_ms + 3_530_000,
        credential: hex::encode(credential.0),
    }
}

/// A replica configured with other credentials (or one from before rotation, which recorded none)
/// never adopts the token: it fetches its own.
#[tokio::test]
async fn a_token_another_replica_fetched_with_a_credential_not_configured_here_is_not_adopted() {
    let store = Arc::new(MemoryStore::default());
    let f = fixture(3600, Some(store.clone())).await;
    for credential in [Fingerprint([7; 32]), Fingerprint([0; 32])] {
        store.entries.lock().insert(
            CacheKey::new(&f.upstream, &f.scopes),
            stored_by_another_replica(&f, credential),
        );
        f.cache.invalidate_upstream("u");
        f.cache.entries.run_pending_tasks().await;
        assert_ne!(f.token().await.0, "from-another-replica");
    }
    assert_eq!(f.fetches(), 2);
}

#[tokio::test]
async fn a_token_fetched_here_is_published_for_the_other_replicas() {
    let store = Arc::new(MemoryStore::default());
    let f = fixture(3600, Some(store.clone())).await;
    assert_eq!(f.token().await.0, "token-1");
    let stored = store
        .entries
        .lock()
        .get(&CacheKey::new(&f.upstream, &f.scopes))
        .cloned();
    assert_eq!(stored.map(|s| s.access_token).as_deref(), Some("token-1"));
    assert_eq!(store.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_lock_held_elsewhere_is_waited_for_at_most_the_upstream_timeout() {
    let store = Arc::new(MemoryStore {
        lock_held_by_another: AtomicBool::new(true),
        ..Default::default()
    });
    let f = fixture(3600, Some(store)).await;
    let started = std::time::Instant::now();
    assert_eq!(f.token().await.0, "token-1");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1_800),
        "{waited:?}"
    );
    assert_eq!(f.fetches(), 1);
}

/// A replica that finds another holding the refresh lock looks again after a quarter of the
/// served life left (from 250 ms), not a fixed second: near the end of a short life the other
/// replica may have failed, and the token's last moments are this replica's to use.
#[tokio::test]
async fn a_refresh_left_to_another_replica_is_tried_again_before_the_token_lapses() {
    let store = Arc::new(MemoryStore::default());
    // 100 s tokens are served for 75 s.
    let f = fixture(100, Some(store.clone())).await;
    assert_eq!(f.token().await.0, "token-1");
    // 1 s of served life left: the refresh ahead is due, and another replica holds the lock.
    store.lock_held_by_another.store(true, Ordering::SeqCst);
    f.clock.advance(Duration::from_secs(74));
    let started = std::time::Instant::now();
    assert_eq!(f.token().await, ("token-1".to_string(), true));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // That replica gave up; after the pause (a quarter of the life left), this one refreshes.
    store.lock_held_by_another.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::from_millis(300));
    let mut latest = f.token().await;
    // Before the token lapses (1 s after `started`), when a miss would fetch token-2 too.
    while latest.0 == "token-1" && started.elapsed() < Duration::from_millis(600) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        latest = f.token().await;
    }
    assert_eq!(
        latest,
        ("token-2".to_string(), true),
        "refreshed ahead, not fetched on a miss"
    );
    assert_eq!(f.fetches(), 2);
}

/// A thread recalls the warm tokens it served, in front of moka: every change to the entries
/// must still reach that thread's next request. Each case reads the token warm twice (the
/// second time it is recalled), changes the entries, and asks again.
#[tokio::test]
async fn a_thread_that_recalls_a_token_sees_every_change_to_the_entries() {
    let f = fixture(3600, None).await;
    let warm = || async {
        let first = f.token().await.0;
        assert_eq!(f.token().await, (first.clone(), true));
        assert_eq!(f.token().await, (first, true));
    };
    warm().await;
    f.cache.invalidate_upstream("u");
    assert_eq!(f.token().await, ("token-2".into(), false), "upstream's tokens dropped");
    warm().await;
    f.cache.retain_credentials("u", Vec::new());
    assert_eq!(f.token().await, ("token-3".into(), false), "credential no longer held");
    warm().await;
    assert_eq!(f.cache.evict("u").await.0, 1);
    assert_eq!(f.token().await, ("token-4".into(), false), "evicted by an operator");
    warm().await;
    assert_eq!(f.cache.refresh_now(&f.upstream).await, (1, 0));
    assert_eq!(f.token().await, ("token-5".into(), true), "refreshed by an operator");
    assert_eq!(f.fetches(), 5);
}

/// Tests (and a process's reloads) make several caches that the same threads serve: a token one
/// cache's thread recalls is never another cache's answer, even at the same count of changes.
#[tokio::test]
async fn a_cache_never_answers_with_a_token_another_cache_served_on_the_same_thread() {
    let f = fixture(3600, None).await;
    f.token().await;
    assert_eq!(f.token().await, ("token-1".into(), true));
    let other = TokenCache::new(
        f.clock.clone(),
        Arc::new(Metrics::new()),
        100,
        Duration::from_secs(60),
        None,
    );
    // One change each: both at the same generation.
    other.invalidate_upstream("u");
    let served = other.get(&f.upstream, &f.scopes).await.unwrap();
    assert_eq!(
        (served.token.access_token.expose_secret(), served.cache_hit),
        ("token-2", false)
    );
    assert_eq!(f.token().await, ("token-1".into(), true));
}

/// Moka evicts for room on its own: a thread that recalls the evicted token must not go on
/// serving it (a report that the API rejected that token would otherwise get it back).
#[tokio::test]
async fn a_token_moka_evicts_for_room_is_not_recalled_afterwards() {
    let f = fixture(3600, None).await;
    let cache = TokenCache::new(
        f.clock.clone(),
        Arc::new(Metrics::new()),
        1,
        Duration::from_secs(60),
        None,
    );
    let sets: [ScopeSet; 2] = [[Scope::parse("r").unwrap()].into(), [Scope::parse("w").unwrap()].into()];
    let token = |n: usize| {
        let (cache, upstream, set) = (cache.clone(), f.upstream.clone(), sets[n].clone());
        async move {
            let served = cache.get(&upstream, &set).await.unwrap();
            served.token.access_token.expose_secret().to_string()
        }
    };
    let first = [token(0).await, token(1).await];
    // Both read warm twice since the last change: this thread recalls both.
    for n in [0, 1, 0, 1] {
        assert_eq!(token(n).await, first[n]);
    }
    assert_eq!(f.fetches(), 2);
    cache.entries.run_pending_tasks().await;
    let kept: Vec<ScopeSet> = cache.entries.iter().map(|(key, _)| key.scopes.clone()).collect();
    assert_eq!(kept.len(), 1, "one entry fits");
    let evicted = usize::from(kept[0] == sets[0]);
    assert_ne!(token(evicted).await, first[evicted], "the evicted key is fetched anew");
    assert_eq!(f.fetches(), 3);
}

/// A change is counted even when its future is dropped before it ends (a caller gone, a
/// timeout): moka may already have applied it.
#[tokio::test]
async fn a_change_dropped_midway_still_counts() {
    let f = fixture(3600, None).await;
    f.token().await;
    let before = f.cache.entries.changes();
    let key = CacheKey::new(&f.upstream, &f.scopes);
    let change = f.cache.entries.compute(key, |_| {
        std::future::pending::<Result<Op<Arc<CachedToken>>, std::convert::Infallible>>()
    });
    assert!(tokio::time::timeout(Duration::from_millis(20), change).await.is_err());
    assert!(f.cache.entries.changes() > before);
}
