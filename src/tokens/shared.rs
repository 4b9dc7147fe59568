//! The Redis tier that replicas share, behind each replica's memory cache.
//!
//! - Entries are AES-256-GCM encrypted (random 96-bit nonce per write; the Redis key is the
//!   associated data, so an entry cannot be moved to another key). The Redis key is the prefix, a
//!   short id of the encryption key, and a SHA-256 of the cache key: neither names nor values
//!   reveal a token or a secret, and replicas with different keys never read each other's entries.
//! - Redis TTL is the token's served life. Entries that do not decrypt or parse are ignored.
//! - One replica fetches a missing token: `SET lock NX PX` with an owner value, released only by
//!   its owner (compare-and-delete in Lua); the others poll for the result, boundedly.
//! - Every operation is bounded by `timeout`; a failure is counted and reported as `None`/
//!   `Unavailable`, so the caller carries on with its memory cache and the upstream.

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::key::CacheKey;
use super::store::{Lock, SharedStore, StoredToken};
use crate::metrics::Metrics;
use crate::scope::join_scopes;
use crate::tokens::config::{redact_url_password, RedisSettings};
use crate::upstream::config::Fingerprint;

const NONCE_LEN: usize = 12;
/// How old an eviction message may be when it arrives.
const EVICTION_MAX_AGE_MS: u64 = 60_000;

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why the shared tier cannot be set up (start-up only: a Redis that is down is not an error).
#[derive(Debug, thiserror::Error)]
pub enum SharedTierError {
    /// The URL (its password redacted) or the CA certificates are not usable.
    #[error("cache.redis.url {url}: {source}")]
    Url {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cache.redis: {0}")]
    Connect(#[source] redis::RedisError),
}

pub struct SharedTier {
    redis: ConnectionManager,
    /// For the eviction channel's own connection.
    client: redis::Client,
    /// The URL's password, kept only to keep it out of log lines.
    password: Option<String>,
    namespace: String,
    cipher: Aes256Gcm,
    /// Names the Redis keys (see `hashed`); derived from the encryption key.
    name_key: ring::hmac::Key,
    timeout: Duration,
    metrics: Arc<Metrics>,
    release: redis::Script,
}

/// A Redis client for `url`; with `ca_pem`, a `rediss://` URL trusts only that CA, without it the
/// system's roots.
pub fn redis_client(url: &str, ca_pem: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca_pem {
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
}

impl SharedTier {
    /// Connects lazily: a Redis that is down at start-up is retried on use, never fatal.
    pub fn new(settings: &RedisSettings, metrics: Arc<Metrics>) -> Result<Self, SharedTierError> {
        let client =
            redis_client(&settings.url, settings.ca_pem.as_deref()).map_err(|source| SharedTierError::Url {
                url: redact_url_password(&settings.url),
                source,
            })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let redis =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(SharedTierError::Connect)?;
        let key_id = hex::encode(
            &Sha256::digest([b"token-broker cache key id:".as_slice(), &settings.encryption_key].concat())[..4],
        );
        let password = url::Url::parse(&settings.url)
            .ok()
            .and_then(|u| u.password().map(str::to_string));
        Ok(Self {
            redis,
            client,
            password,
            namespace: format!("{}{key_id}:", settings.key_prefix),
            cipher: Aes256Gcm::new(&settings.encryption_key.into()),
            name_key: ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &Sha256::digest([b"token-broker cache key names:".as_slice(), &settings.encryption_key].concat()),
            ),
            timeout: settings.timeout,
            metrics,
            release: redis::Script::new(
                r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#,
            ),
        })
    }

    /// The cache key as Redis sees it: an HMAC under the encryption key, so that without that key
    /// a guess at a secret cannot be checked against the names in Redis. `credential` (hex) is
    /// the fingerprint of the credential a token was fetched with: deployments with other
    /// credentials file theirs elsewhere; the lock is per key alone (`None`).
    fn hashed(&self, key: &CacheKey, credential: Option<&str>) -> String {
        let mut context = ring::hmac::Context::with_key(&self.name_key);
        context.update(key.upstream.as_bytes());
        context.update(&[0]);
        context.update(&key.settings.0);
        context.update(join_scopes(&key.scopes).as_bytes());
        if let Some(credential) = credential {
            context.update(&[0]);
            context.update(credential.as_bytes());
        }
        hex::encode(context.sign().as_ref())
    }

    /// Entries are named `<namespace>token:<upstream tag>:<hash>`, so that an upstream's entries
    /// can be found (and evicted) without naming the upstream in Redis.
    fn entry_key(&self, key: &CacheKey, credential: &str) -> String {
        format!(
            "{}token:{}:{}",
            self.namespace,
            self.tag(&key.upstream),
            self.hashed(key, Some(credential))
        )
    }

    fn tag(&self, upstream: &str) -> String {
        let mut context = ring::hmac::Context::with_key(&self.name_key);
        context.update(b"upstream\0");
        context.update(upstream.as_bytes());
        hex::encode(&context.sign().as_ref()[..16])
    }

    fn evictions_channel(&self) -> String {
        format!("{}evictions", self.namespace)
    }

    /// SCANs for the upstream's entries and deletes them, then announces the eviction (also when
    /// Redis failed part way, so the other replicas drop their copies anyway).
    async fn delete_upstream(&self, upstream: &str) -> Option<usize> {
        let tag = self.tag(upstream);
        let deleted = self.delete_entries(&tag).await;
        let _: Option<i64> = self
            .run(
                redis::cmd("PUBLISH")
                    .arg(self.evictions_channel())
                    .arg(self.signed_eviction(&tag, now_millis()))
                    .clone(),
            )
            .await;
        deleted
    }

    async fn delete_entries(&self, tag: &str) -> Option<usize> {
        let pattern = format!("{}token:{tag}:*", self.namespace);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .clone();
            let (next, keys): (u64, Vec<String>) = self.run(scan).await?;
            if !keys.is_empty() {
                deleted += self.run::<usize>(redis::cmd("DEL").arg(&keys).clone()).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Some(deleted)
    }

    /// An eviction message: the tag, the time, and an HMAC over both under the key that names
    /// entries, so that only replicas holding the encryption key can evict (and only recently).
    fn signed_eviction(&self, tag: &str, at_ms: u64) -> String {
        let signed = format!("{tag}.{at_ms}");
        let mac = ring::hmac::sign(
            &self.name_key,
            [b"eviction\0".as_slice(), signed.as_bytes()].concat().as_slice(),
        );
        format!("{signed}.{}", hex::encode(mac.as_ref()))
    }

    /// The tag of a genuine, recent eviction message; `None` for anything else.
    fn verified_eviction(name_key: &ring::hmac::Key, message: &str, now_ms: u64) -> Option<String> {
        let (signed, mac) = message.rsplit_once('.')?;
        let (tag, at_ms) = signed.split_once('.')?;
        let at_ms: u64 = at_ms.parse().ok()?;
        let mac = hex::decode(mac).ok()?;
        ring::hmac::verify(
            name_key,
            [b"eviction\0".as_slice(), signed.as_bytes()].concat().as_slice(),
            &mac,
        )
        .ok()?;
        (now_ms.abs_diff(at_ms) <= EVICTION_MAX_AGE_MS).then(|| tag.to_string())
    }

    /// Subscribes to the eviction channel, again after any loss of the connection. Messages that
    /// are not signed with this deployment's key, or are old, are ignored; an upstream evicted
    /// again within a second is not evicted twice.
    fn watch(
        &self,
        evicted: Box<dyn Fn(&str) + Send + Sync>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let client = self.client.clone();
        let channel = self.evictions_channel();
        let name_key = self.name_key.clone();
        async move {
            let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
            loop {
                if let Ok(mut pubsub) = client.get_async_pubsub().await {
                    if pubsub.subscribe(&channel).await.is_ok() {
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let Ok(payload) = message.get_payload::<String>() else {
                                continue;
                            };
                            let now = now_millis();
                            let Some(tag) = Self::verified_eviction(&name_key, &payload, now) else {
                                continue;
                            };
                            if last.get(&tag).is_some_and(|at| now.saturating_sub(*at) < 1000) {
                                continue;
                            }
                            last.retain(|_, at| now.saturating_sub(*at) < 1000);
                            last.insert(tag.clone(), now);
                            evicted(&tag);
                        }
                    }
                }
                tracing::debug!("shared cache: eviction channel lost; subscribing again shortly");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}lock:{}", self.namespace, self.hashed(key, None))
    }

    /// Checks once that Redis answers, and warns when it does not. Failures while serving are
    /// counted (`shared_cache_errors`) and logged at debug level only, so a wrong address,
    /// password or CA certificate would otherwise pass unnoticed at start-up.
    fn check_once(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut connection = self.redis.clone();
        let within = self.timeout.max(Duration::from_secs(5));
        let password = self.password.clone();
        async move {
            let ping = redis::cmd("PING");
            let failure = match tokio::time::timeout(within, ping.query_async::<String>(&mut connection)).await {
                Ok(Ok(_)) => return tracing::info!("shared cache: Redis answers"),
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {within:?}"),
            };
            // The redis crate's messages carry no password, and this makes sure of it.
            let failure = match &password {
                Some(password) if !password.is_empty() => failure.replace(password.as_str(), "[redacted]"),
                _ => failure,
            };
            tracing::warn!(
                error = %failure,
                "shared cache: Redis is not usable; each replica fetches its own tokens until it is"
            );
        }
    }

    /// Runs one Redis command within the timeout; failures are counted, never raised.
    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Option<T> {
        let mut connection = self.redis.clone();
        match tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.metrics.shared_cache_errors.inc();
                tracing::debug!(error = %error, "shared cache operation failed");
                None
            }
            Err(_) => {
                self.metrics.shared_cache_errors.inc();
                tracing::debug!("shared cache operation timed out");
                None
            }
        }
    }

    /// The first token stored for `key` under one of `credentials`, in their order (one MGET).
    async fn get(&self, key: &CacheKey, credentials: &[Fingerprint]) -> Option<StoredToken> {
        let redis_keys: Vec<String> = credentials
            .iter()
            .map(|credential| self.entry_key(key, &hex::encode(credential.0)))
            .collect();
        if redis_keys.is_empty() {
            return None;
        }
        let values: Vec<Option<Vec<u8>>> = self.run(redis::cmd("MGET").arg(&redis_keys).clone()).await?;
        redis_keys
            .iter()
            .zip(values)
            .find_map(|(redis_key, bytes)| self.open(redis_key, bytes.as_deref()?))
    }

    /// The token sealed in `bytes` under `redis_key`; `None` when it does not decrypt or parse
    /// (another key, another Redis key, tampering, an older format).
    fn open(&self, redis_key: &str, bytes: &[u8]) -> Option<StoredToken> {
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: redis_key.as_bytes(),
                },
            )
            .ok();
        let Some(plain) = plain else {
            tracing::debug!("a shared cache entry did not decrypt; ignoring it");
            return None;
        };
        serde_json::from_slice(&plain).ok()
    }

    async fn set(&self, key: &CacheKey, token: &StoredToken, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let redis_key = self.entry_key(key, &token.credential);
        let Some(value) = self.seal(&redis_key, token) else {
            return;
        };
        let px = ttl.as_millis().max(1) as u64;
        let _: Option<()> = self
            .run(redis::cmd("SET").arg(&redis_key).arg(value).arg("PX").arg(px).clone())
            .await;
    }

    /// `token` encrypted under a random nonce, `redis_key` bound in as associated data.
    fn seal(&self, redis_key: &str, token: &StoredToken) -> Option<Vec<u8>> {
        let plain = serde_json::to_vec(token).ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: redis_key.as_bytes(),
                },
            )
            .ok()?;
        Some([nonce.as_slice(), &sealed].concat())
    }

    /// Tries to become the one replica that fetches `key`, for at most `ttl`.
    async fn lock(&self, key: &CacheKey, ttl: Duration) -> Lock {
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let command = redis::cmd("SET")
            .arg(self.lock_key(key))
            .arg(&owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .clone();
        match self.run::<Option<String>>(command).await {
            Some(Some(_)) => Lock::Acquired(owner),
            Some(None) => Lock::Held,
            None => Lock::Unavailable,
        }
    }

    /// Whether some replica holds the lock for `key` (`None`: Redis did not answer).
    async fn is_locked(&self, key: &CacheKey) -> Option<bool> {
        self.run::<i64>(redis::cmd("EXISTS").arg(self.lock_key(key)).clone())
            .await
            .map(|n| n > 0)
    }

    /// Releases the lock if this replica still owns it.
    async fn unlock(&self, key: &CacheKey, owner: &str) {
        let mut connection = self.redis.clone();
        let mut invocation = self.release.key(self.lock_key(key));
        invocation.arg(owner);
        let released = invocation.invoke_async::<i64>(&mut connection);
        if !matches!(tokio::time::timeout(self.timeout, released).await, Ok(Ok(_))) {
            self.metrics.shared_cache_errors.inc();
        }
    }
}

impl SharedStore for SharedTier {
    fn read<'a>(&'a self, key: &'a CacheKey, credentials: &'a [Fingerprint]) -> BoxFuture<'a, Option<StoredToken>> {
        self.get(key, credentials).boxed()
    }

    fn write<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken, ttl: Duration) -> BoxFuture<'a, ()> {
        self.set(key, token, ttl).boxed()
    }

    fn lock<'a>(&'a self, key: &'a CacheKey, ttl: Duration) -> BoxFuture<'a, Lock> {
        SharedTier::lock(self, key, ttl).boxed()
    }

    fn is_locked<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Option<bool>> {
        SharedTier::is_locked(self, key).boxed()
    }

    fn unlock<'a>(&'a self, key: &'a CacheKey, owner: &'a str) -> BoxFuture<'a, ()> {
        SharedTier::unlock(self, key, owner).boxed()
    }

    fn probe(&self) -> BoxFuture<'static, ()> {
        self.check_once().boxed()
    }

    fn evict<'a>(&'a self, upstream: &'a str) -> BoxFuture<'a, Option<usize>> {
        self.delete_upstream(upstream).boxed()
    }

    fn watch_evictions(&self, evicted: Box<dyn Fn(&str) + Send + Sync>) -> BoxFuture<'static, ()> {
        self.watch(evicted).boxed()
    }

    fn upstream_tag(&self, upstream: &str) -> String {
        self.tag(upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{Scope, ScopeSet};
    use crate::tokens::config::RedisSettings;
    use crate::upstream::config::Fingerprint;

    fn tier(encryption_key: [u8; 32]) -> SharedTier {
        let settings = RedisSettings {
            url: "redis://:password@127.0.0.1:1/0".into(),
            ca_pem: None,
            key_prefix: "tb:".into(),
            encryption_key,
            timeout: Duration::from_millis(50),
        };
        SharedTier::new(&settings, Arc::new(Metrics::new())).unwrap()
    }

    fn key(credentials: u8, scopes: &[&str]) -> CacheKey {
        CacheKey::from_parts(
            "triumph",
            Fingerprint([credentials; 32]),
            &scopes.iter().map(|s| Scope::parse(s).unwrap()).collect::<ScopeSet>(),
        )
    }

    fn stored() -> StoredToken {
        StoredToken {
            access_token: "canary-access-token".into(),
            scope: "reports:read".into(),
            lifetime_ms: 3_600_000,
            fetched_at_ms: 1_000,
            serve_until_ms: 3_541_000,
            credential: String::new(),
        }
    }

    #[tokio::test]
    async fn a_sealed_token_opens_under_its_own_key_only() {
        let tier = tier([7; 32]);
        let name = tier.entry_key(&key(1, &["reports:read"]), "c1");
        let sealed = tier.seal(&name, &stored()).unwrap();
        assert!(!sealed.windows(19).any(|w| w == b"canary-access-token"), "encrypted");
        let opened = tier.open(&name, &sealed).expect("opens");
        assert_eq!(opened.access_token, "canary-access-token");
        assert_eq!(opened.serve_until_ms, 3_541_000);

        // Moved to another key's name, tampered with, or read with another encryption key: ignored.
        let other_name = tier.entry_key(&key(1, &["reports:write"]), "c1");
        assert!(tier.open(&other_name, &sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(tier.open(&name, &tampered).is_none());
        assert!(tier.open(&name, &sealed[..8]).is_none());
        assert!(self::tier([8; 32]).open(&name, &sealed).is_none());
    }

    #[tokio::test]
    async fn redis_names_reveal_nothing_and_follow_credentials_and_the_encryption_key() {
        let tier = tier([7; 32]);
        let name = tier.entry_key(&key(1, &["reports:read"]), "c1");
        assert!(name.starts_with("tb:") && name.contains(":token:"), "{name}");
        assert!(!name.contains("triumph") && !name.contains("reports"), "{name}");
        assert_eq!(name, tier.entry_key(&key(1, &["reports:read"]), "c1"), "stable");
        assert_ne!(name, tier.entry_key(&key(2, &["reports:read"]), "c1"), "other settings");
        assert_ne!(
            name,
            tier.entry_key(&key(1, &["reports:read"]), "c2"),
            "another credential"
        );
        assert_ne!(name, self::tier([8; 32]).entry_key(&key(1, &["reports:read"]), "c1"));
        let lock = tier.lock_key(&key(1, &["reports:read"]));
        assert!(lock.starts_with("tb:") && lock.contains(":lock:"), "{lock}");
        assert_ne!(lock, name.replace(":token:", ":lock:"), "one lock for every credential");
    }

    #[tokio::test]
    async fn only_signed_recent_eviction_messages_are_believed() {
        let tier = tier([7; 32]);
        let now = 1_800_000_000_000;
        let message = tier.signed_eviction("abcd", now);
        let believe = |message: &str, at: u64| SharedTier::verified_eviction(&tier.name_key, message, at);
        assert_eq!(believe(&message, now + 5_000).as_deref(), Some("abcd"));
        assert_eq!(believe(&message, now + 61_000), None, "too old");
        assert_eq!(believe("abcd", now), None, "unsigned");
        assert_eq!(believe("junk", now), None);
        assert_eq!(believe(&message.replacen("abcd", "abce", 1), now), None, "another tag");
        let other = self::tier([8; 32]).signed_eviction("abcd", now);
        assert_eq!(believe(&other, now), None, "another deployment's key");
    }
}
