//! An issuer's signing keys: found by OIDC discovery (or a configured `jwks_url`), cached as the
//! JWKS answer's `Cache-Control: max-age` says (bounded), re-fetched for an unknown `kid` at most
//! once per 30 s however many callers ask, and kept when a re-fetch fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use reqwest::header::CACHE_CONTROL;
use serde::Deserialize;
use url::Url;

use crate::clock::{later, SharedClock};
use crate::identity::config::JwtSettings;
use crate::outbound::{self, FetchError};

/// Unknown `kid`s re-fetch the key set at most this often.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
const MIN_MAX_AGE: Duration = Duration::from_secs(60);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const MAX_BODY_BYTES: usize = 256 * 1024;
/// A failed fetch is remembered this long: callers meanwhile are answered at once (503 when no
/// keys were ever fetched) instead of each waiting on a fetch of their own in turn.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(5);

pub struct VerificationKey {
    pub kid: Option<String>,
    /// The algorithm the JWK names, when it names one.
    pub alg: Option<Algorithm>,
    pub kty: KeyType,
    pub key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ec,
    Okp,
}

impl KeyType {
    /// Whether `alg` is one this type of key can verify: never an HMAC algorithm.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::Ec => matches!(alg, ES256 | ES384),
            KeyType::Okp => alg == EdDSA,
        }
    }
}

struct KeySet {
    keys: Vec<Arc<VerificationKey>>,
    fetched_at: Instant,
    max_age: Duration,
    generation: u64,
}

#[derive(Default)]
struct Refresh {
    jwks_uri: Option<Url>,
    last_unknown_kid_fetch: Option<Instant>,
    /// When the last fetch failed, while no fetch has succeeded since.
    failed_at: Option<Instant>,
    generation: u64,
}

/// Why no key verifies a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    /// No key of that `kid` (and algorithm) is published.
    #[error("no key of that kid and algorithm is published")]
    Unknown,
    /// The keys could never be fetched.
    #[error("the issuer's keys could not be fetched")]
    Unavailable,
}

/// Why fetching an issuer's keys failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyFetchError {
    #[error("the {what}: {source}")]
    Fetch {
        what: &'static str,
        #[source]
        source: FetchError,
    },
    #[error("the discovery document's jwks_uri is not a URL")]
    BadJwksUri(#[source] url::ParseError),
    #[error("the discovery document's jwks_uri is not https:// (nor http:// on loopback)")]
    InsecureJwksUri,
}

impl KeyFetchError {
    fn of(what: &'static str) -> impl Fn(FetchError) -> Self {
        move |source| Self::Fetch { what, source }
    }
}

pub struct KeySource {
    http: reqwest::Client,
    issuer: String,
    jwks_url: Option<Url>,
    default_max_age: Duration,
    clock: SharedClock,
    current: RwLock<Option<Arc<KeySet>>>,
    refresh: tokio::sync::Mutex<Refresh>,
}

impl KeySource {
    pub fn new(settings: &JwtSettings, clock: SharedClock) -> Self {
        Self {
            http: outbound::client(Some(settings.timeout)),
            issuer: settings.issuer.trim_end_matches('/').to_string(),
            jwks_url: settings.jwks_url.clone(),
            default_max_age: settings.jwks_cache_ttl,
            clock,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(Refresh::default()),
        }
    }

    /// The keys that may verify a token with this `kid` and `alg`.
    pub async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<VerificationKey>>, KeyLookupError> {
        let now = self.clock.now();
        let set = match self.snapshot() {
            Some(set) if now < later(set.fetched_at, set.max_age) => set,
            stale => {
                let seen = stale.as_ref().map_or(0, |s| s.generation);
                self.refetch(seen, false).await;
                self.snapshot().ok_or(KeyLookupError::Unavailable)?
            }
        };
        let found = matching(&set, kid, alg);
        if !found.is_empty() {
            return Ok(found);
        }
        // An unknown key may be a rotation: look again, within the rate limit.
        self.refetch(set.generation, true).await;
        let set = self.snapshot().ok_or(KeyLookupError::Unavailable)?;
        let found = matching(&set, kid, alg);
        if found.is_empty() {
            Err(KeyLookupError::Unknown)
        } else {
            Ok(found)
        }
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current.read().clone()
    }

    /// Fetches a new key set unless another caller did since generation `seen`; callers arriving
    /// together share one fetch. A failed fetch keeps the last good keys.
    async fn refetch(&self, seen: u64, unknown_kid: bool) {
        let mut refresh = self.refresh.lock().await;
        if refresh.generation != seen {
            return;
        }
        let now = self.clock.now();
        if refresh
            .failed_at
            .is_some_and(|at| now.saturating_duration_since(at) < FAILURE_MEMORY)
        {
            return;
        }
        if unknown_kid {
            if refresh
                .last_unknown_kid_fetch
                .is_some_and(|at| now.saturating_duration_since(at) < UNKNOWN_KID_REFETCH_INTERVAL)
            {
                return;
            }
            refresh.last_unknown_kid_fetch = Some(now);
        }
        match self.fetch(&mut refresh).await {
            Ok((keys, max_age)) => {
                refresh.failed_at = None;
                refresh.generation += 1;
                tracing::debug!(issuer = %self.issuer, keys = keys.len(), "fetched the issuer's keys");
                *self.current.write() = Some(Arc::new(KeySet {
                    keys,
                    fetched_at: now,
                    max_age,
                    generation: refresh.generation,
                }));
            }
            Err(why) => {
                refresh.failed_at = Some(self.clock.now());
                tracing::warn!(issuer = %self.issuer, error = %why, "could not fetch the issuer's keys; keeping the last good ones");
                // Try again soon, not on every request: the old keys stay in service meanwhile.
                if let Some(old) = self.snapshot() {
                    refresh.generation += 1;
                    *self.current.write() = Some(Arc::new(KeySet {
                        keys: old.keys.clone(),
                        fetched_at: now,
                        max_age: MIN_MAX_AGE,
                        generation: refresh.generation,
                    }));
                }
            }
        }
    }

    async fn fetch(&self, refresh: &mut Refresh) -> Result<(Vec<Arc<VerificationKey>>, Duration), KeyFetchError> {
        let jwks_uri = match (&self.jwks_url, &refresh.jwks_uri) {
            (Some(url), _) | (None, Some(url)) => url.clone(),
            (None, None) => {
                let discovered = self.discover().await?;
                refresh.jwks_uri = Some(discovered.clone());
                discovered
            }
        };
        let jwks = KeyFetchError::of("JWKS");
        let response = self
            .http
            .get(jwks_uri)
            .send()
            .await
            .map_err(|e| jwks(FetchError::Transport(e)))?;
        if !response.status().is_success() {
            return Err(jwks(FetchError::Status(response.status().as_u16())));
        }
        let max_age = max_age(response.headers())
            .unwrap_or(self.default_max_age)
            .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        let body = outbound::read_capped(response, MAX_BODY_BYTES).await.map_err(&jwks)?;
        let keys = parse_jwks(&body).map_err(&jwks)?;
        Ok((keys, max_age))
    }

    /// OIDC Discovery 1.0 §4: the `jwks_uri` of `{issuer}/.well-known/openid-configuration`.
    async fn discover(&self) -> Result<Url, KeyFetchError> {
        #[derive(Deserialize)]
        struct Metadata {
            jwks_uri: String,
        }
        let discovery = KeyFetchError::of("discovery document");
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| discovery(FetchError::Transport(e)))?;
        if !response.status().is_success() {
            return Err(discovery(FetchError::Status(response.status().as_u16())));
        }
        let body = outbound::read_capped(response, MAX_BODY_BYTES)
            .await
            .map_err(&discovery)?;
        let metadata: Metadata = serde_json::from_slice(&body).map_err(|e| discovery(FetchError::Json(e)))?;
        let url = Url::parse(&metadata.jwks_uri).map_err(KeyFetchError::BadJwksUri)?;
        if outbound::is_secure_url(&url) {
            Ok(url)
        } else {
            Err(KeyFetchError::InsecureJwksUri)
        }
    }
}

fn matching(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerificationKey>> {
    set.keys
        .iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .filter(|k| k.kty.fits(alg) && k.alg.is_none_or(|a| a == alg))
        .cloned()
        .collect()
}

/// `Cache-Control: max-age=N` (RFC 9111 §5.2.2.1).
fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        name.eq_ignore_ascii_case("max-age")
            .then(|| seconds.trim().trim_matches('"').parse().ok().map(Duration::from_secs))
            .flatten()
    })
}

/// The signing keys of a JWKS (RFC 7517 §5); keys of other types or uses are skipped one by one.
fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<VerificationKey>>, FetchError> {
    #[derive(Deserialize)]
    struct Jwks {
        keys: Vec<serde_json::Value>,
    }
    let jwks: Jwks = serde_json::from_slice(body).map_err(FetchError::Json)?;
    let keys = jwks
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter_map(|jwk| {
            use jsonwebtoken::jwk::AlgorithmParameters as P;
            let kty = match &jwk.algorithm {
                P::RSA(_) => KeyType::Rsa,
                P::EllipticCurve(_) => KeyType::Ec,
                P::OctetKeyPair(_) => KeyType::Okp,
                P::OctetKey(_) => return None,
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            Some(Arc::new(VerificationKey {
                kid: jwk.common.key_id.clone(),
                alg,
                kty,
                key: DecodingKey::from_jwk(&jwk).ok()?,
            }))
        })
        .collect();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_cache_control_gives_a_max_age_or_none(value in "[ -~]{0,60}", digits in "max-age=[0-9]{1,40}") {
            for value in [value, digits] {
                let Ok(value) = value.parse() else { continue };
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(CACHE_CONTROL, value);
                // Bounded where it is used, so an absurd value cannot overflow a deadline.
                let age = max_age(&headers).unwrap_or(MIN_MAX_AGE).clamp(MIN_MAX_AGE, MAX_MAX_AGE);
                proptest::prop_assert!(later(Instant::now(), age) > Instant::now());
            }
        }
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            "public, max-age=19204, must-revalidate, no-transform".parse().unwrap(),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(19204)));
        headers.insert(CACHE_CONTROL, "no-cache".parse().unwrap());
        assert_eq!(max_age(&headers), None);
    }

    #[test]
    fn symmetric_and_unknown_keys_are_skipped() {
        let body = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"weird","kid":"x"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"}
        ]}"#;
        let keys = parse_jwks(body).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert!(keys[0].kty.fits(Algorithm::EdDSA));
        assert!(!keys[0].kty.fits(Algorithm::HS256));
    }
}
