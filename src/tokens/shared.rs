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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::key::CacheKey;
use crate::metrics::Metrics;
use crate::scope::join_scopes;
use crate::tokens::config::{redact_url_password, RedisSettings};

const NONCE_LEN: usize = 12;

/// A token as replicas share it. Times are wall-clock milliseconds since the Unix epoch.
/// Its `Debug` leaves the token out.
#[derive(Serialize, Deserialize)]
pub struct StoredToken {
    pub access_token: String,
    pub scope: String,
    pub lifetime_ms: u64,
    pub fetched_at_ms: u64,
    pub serve_until_ms: u64,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[redacted]")
            .field("scope", &self.scope)
            .field("lifetime_ms", &self.lifetime_ms)
            .field("fetched_at_ms", &self.fetched_at_ms)
            .field("serve_until_ms", &self.serve_until_ms)
            .finish()
    }
}

pub enum Lock {
    /// This replica may fetch; release with the owner value.
    Acquired(String),
    /// Another replica is fetching.
    Held,
    /// Redis did not answer: fetch without coordination.
    Unavailable,
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
        let redis = ConnectionManager::new_lazy_with_config(client, config).map_err(SharedTierError::Connect)?;
        let key_id = hex::encode(
            &Sha256::digest([b"token-broker cache key id:".as_slice(), &settings.encryption_key].concat())[..4],
        );
        let password = url::Url::parse(&settings.url)
            .ok()
            .and_then(|u| u.password().map(str::to_string));
        Ok(Self {
            redis,
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
    /// a guess at a secret cannot be checked against the names in Redis.
    fn hashed(&self, key: &CacheKey) -> String {
        let mut context = ring::hmac::Context::with_key(&self.name_key);
        context.update(key.upstream.as_bytes());
        context.update(&[0]);
        context.update(&key.credentials.0);
        context.update(join_scopes(&key.scopes).as_bytes());
        hex::encode(context.sign().as_ref())
    }

    fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}token:{}", self.namespace, self.hashed(key))
    }

    fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}lock:{}", self.namespace, self.hashed(key))
    }

    /// Checks once that Redis answers, and warns when it does not. Failures while serving are
    /// counted (`shared_cache_errors`) and logged at debug level only, so a wrong address,
    /// password or CA certificate would otherwise pass unnoticed at start-up.
    pub fn probe(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
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

    pub async fn read(&self, key: &CacheKey) -> Option<StoredToken> {
        let redis_key = self.entry_key(key);
        let bytes: Option<Vec<u8>> = self.run(redis::cmd("GET").arg(&redis_key).clone()).await?;
        let bytes = bytes?;
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

    /// Stores `token` for `ttl` (its remaining served life).
    pub async fn write(&self, key: &CacheKey, token: &StoredToken, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let redis_key = self.entry_key(key);
        let plain = serde_json::to_vec(token).expect("a stored token serializes");
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
            .expect("AES-GCM encrypts any message of this size");
        let value = [nonce.as_slice(), &sealed].concat();
        let px = ttl.as_millis().max(1) as u64;
        let _: Option<()> = self
            .run(redis::cmd("SET").arg(&redis_key).arg(value).arg("PX").arg(px).clone())
            .await;
    }

    /// Removes the entry for `key` if it still holds `access_token` (reported as rejected).
    pub async fn remove_if(&self, key: &CacheKey, access_token: &str) {
        if self
            .read(key)
            .await
            .is_some_and(|stored| stored.access_token == access_token)
        {
            let _: Option<i64> = self.run(redis::cmd("DEL").arg(self.entry_key(key)).clone()).await;
        }
    }

    /// Tries to become the one replica that fetches `key`, for at most `ttl`.
    pub async fn lock(&self, key: &CacheKey, ttl: Duration) -> Lock {
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
    pub async fn is_locked(&self, key: &CacheKey) -> Option<bool> {
        self.run::<i64>(redis::cmd("EXISTS").arg(self.lock_key(key)).clone())
            .await
            .map(|n| n > 0)
    }

    /// Releases the lock if this replica still owns it.
    pub async fn unlock(&self, key: &CacheKey, owner: &str) {
        let mut connection = self.redis.clone();
        let mut invocation = self.release.key(self.lock_key(key));
        invocation.arg(owner);
        let released = invocation.invoke_async::<i64>(&mut connection);
        if !matches!(tokio::time::timeout(self.timeout, released).await, Ok(Ok(_))) {
            self.metrics.shared_cache_errors.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_token_never_shows_its_token_in_debug_output() {
        let stored = StoredToken {
            access_token: "canary-access-token".into(),
            scope: "reports:read".into(),
            lifetime_ms: 1,
            fetched_at_ms: 2,
            serve_until_ms: 3,
        };
        let debug = format!("{stored:?}");
        assert!(!debug.contains("canary-access-token"), "{debug}");
        assert!(
            debug.contains("reports:read") && debug.contains("[redacted]"),
            "{debug}"
        );
    }
}
