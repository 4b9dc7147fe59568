//! `[cache]` and `[cache.redis]` as the token cache uses them.

use std::fmt;
use std::time::Duration;

use url::Url;

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub max_entries: u64,
    pub refresh_skew: Duration,
    pub default_ttl: Duration,
    /// The tier shared by replicas; absent: memory only.
    pub redis: Option<RedisSettings>,
}

/// `[cache.redis]`: a Redis (or Valkey) that replicas share.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    /// With a `rediss://` URL: the CA certificates (PEM) Redis's certificate must chain to, read
    /// from `ca_file`; absent, the system's trusted roots.
    pub ca_pem: Option<Vec<u8>>,
    pub key_prefix: String,
    /// AES-256-GCM key for the stored tokens.
    pub encryption_key: [u8; 32],
    pub timeout: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url_password(&self.url))
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|pem| format!("{} bytes", pem.len())),
            )
            .field("key_prefix", &self.key_prefix)
            .field("encryption_key", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Redis URL with its password (if any) replaced, for logs and `Debug`.
pub fn redact_url_password(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "[unparsable]".to_string(),
    }
}
