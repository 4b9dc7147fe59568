//! `[cache]`: the memory cache and the shared Redis tier.

use std::time::Duration;

use base64::Engine;
use secrecy::ExposeSecret;
use url::Url;

use super::check::Check;
use super::{raw, Env};
use crate::tokens::config::{CacheSettings, RedisSettings};

/// `[cache]` and `[cache.redis]`.
pub(super) fn validate(check: &mut Check, section: &raw::Cache, env: &Env) -> CacheSettings {
    let cache = CacheSettings {
        max_entries: section.max_entries.unwrap_or(10_000),
        refresh_skew: check.duration(
            "cache.refresh_skew",
            section.refresh_skew.as_ref(),
            Duration::from_secs(60),
        ),
        default_ttl: check.duration(
            "cache.default_ttl",
            section.default_ttl.as_ref(),
            Duration::from_secs(300),
        ),
        redis: section
            .redis
            .as_ref()
            .and_then(|redis| validate_redis(check, redis, env)),
    };
    if cache.max_entries == 0 {
        check.problem("cache.max_entries", "must be greater than 0");
    }
    cache
}

fn validate_redis(check: &mut Check, raw: &raw::Redis, env: &Env) -> Option<RedisSettings> {
    // The URL may carry a password, so it is read like a secret: literal, env or file.
    let url = check.secret("cache.redis.url", &raw.url, env);
    let url = url.expose_secret().to_string();
    let parsed = Url::parse(&url).ok();
    let tls = parsed.as_ref().is_some_and(|u| u.scheme() == "rediss");
    let url_ok = match &parsed {
        Some(u) if u.fragment() == Some("insecure") => {
            check.problem(
                "cache.redis.url",
                "#insecure would accept any certificate: give cache.redis.ca_file, the CA that signed Redis's certificate",
            );
            false
        }
        Some(u) if u.scheme() == "redis" || u.scheme() == "rediss" => true,
        _ if url.is_empty() => false,
        _ => {
            check.problem(
                "cache.redis.url",
                "must be a redis:// or rediss:// (TLS) URL such as redis://127.0.0.1:6379/0",
            );
            false
        }
    };
    let ca_pem = raw.ca_file.as_deref().and_then(|path| {
        if !tls {
            check.problem("cache.redis.ca_file", "applies to a rediss:// (TLS) url only");
            return None;
        }
        match std::fs::read(path) {
            Ok(pem) if pem::parse_many(&pem).is_ok_and(|blocks| blocks.iter().any(|b| b.tag() == "CERTIFICATE")) => {
                Some(pem)
            }
            Ok(_) => {
                check.problem("cache.redis.ca_file", format!("{path}: no PEM certificate in it"));
                None
            }
            Err(e) => {
                check.problem("cache.redis.ca_file", format!("cannot read {path}: {e}"));
                None
            }
        }
    });
    let key = check.secret("cache.redis.encryption_key", &raw.encryption_key, env);
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.expose_secret().trim());
    let encryption_key: Option<[u8; 32]> = match decoded {
        Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(array) => Some(array),
            Err(_) => {
                check.problem(
                    "cache.redis.encryption_key",
                    "must be 32 bytes, base64-encoded (openssl rand -base64 32)",
                );
                None
            }
        },
        Err(_) if key.expose_secret().is_empty() => None,
        Err(_) => {
            check.problem("cache.redis.encryption_key", "is not base64 (openssl rand -base64 32)");
            None
        }
    };
    let timeout = check.duration("cache.redis.timeout", raw.timeout.as_ref(), Duration::from_millis(200));
    let key_prefix = raw.key_prefix.clone().unwrap_or_else(|| "token-broker:".to_string());
    (url_ok).then_some(())?;
    Some(RedisSettings {
        url,
        ca_pem,
        key_prefix,
        encryption_key: encryption_key?,
        timeout,
    })
}
