//! `Authorization: Bearer <id_token>` from an OIDC issuer (Google or any other).
//!
//! The authenticator claims a bearer JWT whose (unverified) `iss` is its issuer, then verifies it
//! completely: allow-listed asymmetric algorithm fitting the key's type, a key from the issuer's
//! own JWKS by `kid` (`jku`, `x5u` and embedded `jwk` headers are ignored), exact `iss`, an
//! audience of ours, `exp` required, `nbf` honoured, with leeway. Verified tokens are remembered
//! by their hash until `exp`, so the hot path does not redo the signature check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use base64::Engine;
use foldhash::fast::RandomState;
use jsonwebtoken::Validation;
use moka::future::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwks::{KeyLookupError, KeySource};
use super::{bearer_token, AuthError, Gate, Identity, Method, Outcome};
use crate::clock::SharedClock;
use crate::identity::config::JwtSettings;

const VERIFIED_CACHE_ENTRIES: u64 = 100_000;
/// Longest a verified token is remembered, whatever its `exp`.
const VERIFIED_CACHE_MAX: Duration = Duration::from_secs(3600);

// Each worker thread's verified tokens, in front of the shared cache (see `super::recall`).
// Filed by the token itself, compared in full: its SHA-256, the shared cache's key, is worked out
// only when this thread does not recall it (on a warm request it cost about 0.3 µs).
super::recall::thread_recollection!(VERIFIED: Box<[u8]>, [u8] => Verified);

#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    exp: u64,
    /// When the token must be verified again: at `exp`, and at most [`VERIFIED_CACHE_MAX`] after
    /// this verification (so that a key the issuer withdraws stops being trusted within that
    /// time). The shared cache drops the entry then, and a thread's recollection stops using it.
    until: Instant,
}

impl Verified {
    fn new(identity: Identity, exp: u64) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let life = Duration::from_secs(exp.saturating_sub(now)).min(VERIFIED_CACHE_MAX);
        Self {
            identity: Arc::new(identity),
            exp,
            until: Instant::now() + life,
        }
    }
}

impl super::recall::Lapses for Verified {
    fn until(&self) -> Instant {
        self.until
    }
}

struct UntilExp;

impl moka::Expiry<[u8; 32], Verified> for UntilExp {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Verified, created_at: Instant) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

pub struct JwtAuthenticator {
    settings: JwtSettings,
    keys: KeySource,
    clock: SharedClock,
    verified: Cache<[u8; 32], Verified, RandomState>,
    /// This authenticator's entries in each thread's recollection.
    owner: u64,
}

impl JwtAuthenticator {
    pub fn new(settings: &JwtSettings, clock: SharedClock) -> Self {
        Self {
            keys: KeySource::new(settings, clock.clone()),
            settings: settings.clone(),
            clock,
            verified: Cache::builder()
                .max_capacity(VERIFIED_CACHE_ENTRIES)
                .expire_after(UntilExp)
                .build_with_hasher(RandomState::default()),
            owner: super::recall::new_owner(),
        }
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    pub async fn authenticate(&self, headers: &HeaderMap, gate: &dyn Gate) -> Outcome {
        let Some(token) = bearer_token(headers) else {
            return Outcome::NotMine;
        };
        if token.len() > self.settings.max_token_bytes {
            return Outcome::NotMine;
        }
        // A token this authenticator verified before is of its issuer: the hot path skips decoding.
        // Worked out once, when first needed.
        let mut digest = {
            let mut known = None;
            move || -> [u8; 32] { *known.get_or_insert_with(|| Sha256::digest(token.as_bytes()).into()) }
        };
        let hit = match recalled(self.owner, token.as_bytes()) {
            Some(hit) => Some(hit),
            None => {
                let hit = self.verified.get(&digest()).await;
                hit.inspect(|hit| remember(self.owner, token.as_bytes().into(), hit.clone()))
            }
        };
        if let Some(hit) = hit {
            let leeway = self.settings.leeway.as_secs();
            if self.clock.unix_now() <= hit.exp.saturating_add(leeway) {
                return Outcome::Authenticated((*hit.identity).clone());
            }
            forget(self.owner, token.as_bytes());
            Box::pin(self.verified.invalidate(&digest())).await;
        }
        match unverified_issuer(token) {
            Some(iss) if self.settings.accepted_issuers.contains(&iss) => {}
            _ => return Outcome::NotMine,
        }
        // Concurrent requests with one new token verify it once; only that verification asks the
        // gate, so a page's burst of first requests costs one failure's worth at most.
        // Boxed where it starts: the verification's state (a key fetch among it) would otherwise
        // be part of every request's future, and moved with it.
        let verified = Box::pin(self.verified.try_get_with(digest(), async {
            if !gate.admit() {
                return Err(AuthError::Throttled);
            }
            self.verify(token).await
        }))
        .await;
        match verified {
            Ok(verified) => Outcome::Authenticated((*verified.identity).clone()),
            Err(error) => Outcome::Rejected(*error),
        }
    }

    async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let alg = header.alg;
        if !self.settings.algorithms.contains(&alg) {
            return Err(AuthError::Invalid);
        }
        let keys = self
            .keys
            .keys_for(header.kid.as_deref(), alg)
            .await
            .map_err(|e| match e {
                KeyLookupError::Unknown => AuthError::Invalid,
                KeyLookupError::Unavailable => AuthError::Unavailable,
            })?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&self.settings.accepted_issuers);
        validation.set_audience(&self.settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway.as_secs();
        let claims = keys
            .iter()
            .find_map(|key| jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).ok())
            .ok_or(AuthError::Invalid)?
            .claims;
        self.identity_from(&claims)
            .map(|(identity, exp)| Verified::new(identity, exp))
    }

    fn identity_from(&self, claims: &Map<String, Value>) -> Result<(Identity, u64), AuthError> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Invalid)?;
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or(AuthError::Invalid)?;
        if let Some(domain) = &self.settings.hosted_domain {
            let hd = claims.get("hd").and_then(Value::as_str).map(str::to_ascii_lowercase);
            if hd.as_deref() != Some(domain) {
                return Err(AuthError::Invalid);
            }
        }
        let mut identity = Identity::new(subject, Method::Jwt);
        // An address counts only when the issuer says it verified it.
        let verified = matches!(claims.get("email_verified"), Some(Value::Bool(true)))
            || claims.get("email_verified").and_then(Value::as_str) == Some("true");
        if verified {
            let email = claims.get("email").and_then(Value::as_str).map(str::to_ascii_lowercase);
            identity.verified_email = match email {
                // `email_verified` holds for a consumer Google account made for any address its
                // maker once received mail at (a leaver's, a shared alias): Google vouches for an
                // address only within the Workspace domain `hd` names, or at gmail.com.
                Some(email) if self.settings.google => {
                    let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
                    let hd = claims.get("hd").and_then(Value::as_str).map(str::to_ascii_lowercase);
                    (domain == "gmail.com" || hd.as_deref() == Some(domain)).then_some(email)
                }
                email => email,
            };
        }
        identity.groups = match claims.get(&self.settings.groups_claim) {
            Some(Value::Array(values)) => values.iter().filter_map(Value::as_str).map(String::from).collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok((identity, exp))
    }
}

/// Whether `token` has the shape of a JWS compact serialization (three base64url segments).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

/// The `iss` of a JWT before verification, only to route it to the authenticator of that issuer.
pub fn unverified_issuer(token: &str) -> Option<String> {
    if !looks_like_jwt(token) {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: String,
    }
    serde_json::from_slice::<Iss>(&bytes).ok().map(|c| c.iss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderValue, AUTHORIZATION};
    use proptest::prelude::*;

    const ISSUER: &str = "https://login.example.com";

    fn authenticator() -> JwtAuthenticator {
        // Keys from a closed loopback port: every key fetch fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let jwks = format!("http://{}/keys", closed.local_addr().unwrap());
        drop(closed);
        let toml = format!(
            r#"
            [upstreams.u]
            token_url = "https://auth.example.com/token"
            client_id = "id"
            client_secret = "s"
            [[authenticators]]
            type = "jwt"
            issuer = "{ISSUER}"
            jwks_url = "{jwks}"
            audiences = ["app"]
            "#
        );
        let settings = crate::settings::Settings::from_toml(&toml, &Default::default()).unwrap();
        let crate::identity::config::AuthenticatorSettings::Jwt(jwt) = &settings.authenticators[0].settings else {
            unreachable!("the one authenticator is a jwt one")
        };
        JwtAuthenticator::new(jwt, Arc::new(crate::clock::SystemClock))
    }

    fn segment(value: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn hostile() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".{0,16}".prop_map(Value::from),
            prop::sample::select(vec!["RS256", "HS256", "none", "EdDSA", "ES512"]).prop_map(Value::from),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Tokens that claim our issuer with any header and any numbers are refused, never a panic.
        #[test]
        fn any_token_claiming_the_issuer_is_refused_cleanly(
            alg in hostile(), kid in hostile(), typ in hostile(), exp in hostile(), nbf in hostile(),
            signature in "[A-Za-z0-9_-]{0,64}",
        ) {
            let header = serde_json::json!({ "alg": alg, "kid": kid, "typ": typ });
            let claims = serde_json::json!({ "iss": ISSUER, "sub": "x", "aud": "app", "exp": exp, "nbf": nbf });
            let token = format!("{}.{}.{signature}", segment(&header), segment(&claims));
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let outcome = runtime.block_on(authenticator().authenticate(&headers, &super::super::Ungated));
            prop_assert!(matches!(outcome, Outcome::Rejected(_) | Outcome::NotMine));
        }

        #[test]
        fn any_text_has_an_issuer_or_none(token in "[ -~]{0,200}", parts in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,10}") {
            for token in [token, parts] {
                let _ = unverified_issuer(&token);
                let _ = jsonwebtoken::decode_header(&token);
            }
        }
    }
}
