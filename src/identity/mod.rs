//! Who is calling: the authenticator chain and the [`Identity`] it produces.
//!
//! Authenticators are tried in configured order; the first that recognises the credential a
//! request carries decides, so a forged credential is refused rather than handed to the next one.
//! Identity headers a client sends itself (`X-Forwarded-User` and the like) are never read.

pub(crate) mod api_key;
pub mod config;
mod forward;
mod jwks;
mod jwt;
mod public_token;
mod recall;

use actix_web::http::header::{HeaderMap, AUTHORIZATION};

pub use api_key::{hash_key, ApiKeyAuthenticator};
pub use forward::ForwardAuthenticator;
pub use jwt::{unverified_issuer, JwtAuthenticator};
pub use public_token::PublicTokenAuthenticator;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use crate::clock::SharedClock;
use crate::identity::config::{AuthenticatorSettings, NamedAuthenticator};
use crate::public_tokens::PublicTokens;
use crate::scope::ScopeSet;

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ApiKey,
    Jwt,
    Forward,
    PublicToken,
}

impl Method {
    /// The authenticator name a method has when the configuration gives none.
    pub fn default_name(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
            Self::Forward => "forward",
            Self::PublicToken => "public_token",
        }
    }

    /// [`Self::default_name`], shared: every identity starts with it before the chain gives it
    /// the configured name, which must not cost an allocation per request.
    fn shared_default_name(self) -> Arc<str> {
        static NAMES: LazyLock<[Arc<str>; 4]> = LazyLock::new(|| {
            [Method::ApiKey, Method::Jwt, Method::Forward, Method::PublicToken].map(|m| Arc::from(m.default_name()))
        });
        NAMES[self as usize].clone()
    }
}

/// Where an identity's rights come from.
#[derive(Debug, Clone)]
pub enum Rights {
    /// The grants table of the configuration.
    Grants,
    /// Rights carried by the credential itself, which replace the grants table.
    Carried(BTreeMap<String, ScopeSet>),
}

/// An authenticated caller: the pair (authenticator name, subject). The same subject from two
/// authenticators is two callers.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The name of the authenticator that vouched for this caller.
    pub authenticator: Arc<str>,
    pub subject: String,
    /// Only set when the authenticator vouches that the address was verified.
    pub verified_email: Option<String>,
    pub groups: Vec<String>,
    pub method: Method,
    /// Whether a cookie authenticated the request (then the CSRF header is required).
    pub via_cookie: bool,
    pub rights: Rights,
}

impl Identity {
    pub fn new(subject: impl Into<String>, method: Method) -> Self {
        Self {
            authenticator: method.shared_default_name(),
            subject: subject.into(),
            verified_email: None,
            groups: Vec::new(),
            method,
            via_cookie: false,
            rights: Rights::Grants,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential")]
    Missing,
    #[error("the credential failed verification")]
    Invalid,
    #[error("the identity provider cannot be reached")]
    Unavailable,
    /// The gate refused the work a verification needs: this client failed too often.
    #[error("too many failed authentications from this address")]
    Throttled,
}

/// Asked before an authenticator starts work that costs (a signature check, a call to the session
/// endpoint); `false` stops it and the request is refused as [`AuthError::Throttled`].
pub trait Gate: Sync {
    fn admit(&self) -> bool;
}

/// A gate that admits everything: for callers outside the HTTP path (benchmarks, tests).
pub struct Ungated;

impl Gate for Ungated {
    fn admit(&self) -> bool {
        true
    }
}

/// What one authenticator makes of a request.
pub enum Outcome {
    /// The request carries no credential of this authenticator's kind.
    NotMine,
    Authenticated(Identity),
    Rejected(AuthError),
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    // What `HeaderValue::to_str` accepts (visible ASCII, space, tab), checked in one branch-free
    // pass: its byte-by-byte loop was a visible part of a JWT request's cost.
    let visible = value
        .iter()
        .fold(true, |ok, &b| ok & ((0x20..0x7f).contains(&b) | (b == b'\t')));
    if !visible {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The configured authenticators.
pub enum Authenticator {
    ApiKey(ApiKeyAuthenticator),
    Jwt(Arc<JwtAuthenticator>),
    Forward(Arc<ForwardAuthenticator>),
    PublicToken(PublicTokenAuthenticator),
}

impl Authenticator {
    pub fn from_settings(
        settings: &AuthenticatorSettings,
        clock: &SharedClock,
        public_tokens: Option<&Arc<PublicTokens>>,
    ) -> Self {
        match settings {
            AuthenticatorSettings::ApiKey { keys } => Self::ApiKey(ApiKeyAuthenticator::new(keys)),
            AuthenticatorSettings::Jwt(jwt) => Self::Jwt(Arc::new(JwtAuthenticator::new(jwt, clock.clone()))),
            AuthenticatorSettings::Forward(forward) => Self::Forward(Arc::new(ForwardAuthenticator::new(forward))),
            AuthenticatorSettings::PublicToken => Self::PublicToken(PublicTokenAuthenticator::new(
                public_tokens
                    .expect("validation requires [public_tokens] for this authenticator")
                    .clone(),
            )),
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap, gate: &dyn Gate) -> Outcome {
        match self {
            Self::ApiKey(a) => a.authenticate(headers),
            // Boxed: inlined, their cache lookups would make every caller's future (an API
            // key's too) larger; their key fetches and session calls are boxed where they start,
            // so what is boxed here is only a cache lookup's state.
            Self::Jwt(a) => Box::pin(a.authenticate(headers, gate)).await,
            Self::Forward(a) => Box::pin(a.authenticate(headers, gate)).await,
            Self::PublicToken(a) => a.authenticate(headers, gate),
        }
    }
}

/// The authenticators, tried in order, each with its name.
pub struct Chain {
    authenticators: Vec<(Arc<str>, Authenticator)>,
}

impl Chain {
    pub fn new(
        settings: &[NamedAuthenticator],
        clock: &SharedClock,
        public_tokens: Option<&Arc<PublicTokens>>,
    ) -> Self {
        Self {
            authenticators: settings
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        Authenticator::from_settings(&s.settings, clock, public_tokens),
                    )
                })
                .collect(),
        }
    }

    /// As [`Chain::new`], keeping from `previous` each jwt and forward authenticator whose settings
    /// did not change: a reload then keeps the issuer's keys (the last good ones too, should the
    /// issuer be down), the verified tokens and the session decisions.
    pub fn carry_over(
        previous: &Chain,
        settings: &[NamedAuthenticator],
        clock: &SharedClock,
        public_tokens: Option<&Arc<PublicTokens>>,
    ) -> Self {
        let kept = |wanted: &AuthenticatorSettings| {
            previous.authenticators.iter().find_map(|(_, old)| match (old, wanted) {
                (Authenticator::Jwt(a), AuthenticatorSettings::Jwt(s)) if a.settings() == s => {
                    Some(Authenticator::Jwt(a.clone()))
                }
                (Authenticator::Forward(a), AuthenticatorSettings::Forward(s)) if a.settings() == s => {
                    Some(Authenticator::Forward(a.clone()))
                }
                _ => None,
            })
        };
        Self {
            authenticators: settings
                .iter()
                .map(|s| {
                    let authenticator = kept(&s.settings)
                        .unwrap_or_else(|| Authenticator::from_settings(&s.settings, clock, public_tokens));
                    (s.name.clone(), authenticator)
                })
                .collect(),
        }
    }

    /// The caller of `headers`; `gate` is asked before any authenticator starts costly work.
    pub async fn authenticate(&self, headers: &HeaderMap, gate: &dyn Gate) -> Result<Identity, AuthError> {
        for (name, authenticator) in &self.authenticators {
            match authenticator.authenticate(headers, gate).await {
                Outcome::NotMine => continue,
                Outcome::Authenticated(mut identity) => {
                    identity.authenticator = name.clone();
                    return Ok(identity);
                }
                Outcome::Rejected(error) => return Err(error),
            }
        }
        // A credential nobody recognises (a token of an unknown issuer, say) is refused as such.
        if headers.contains_key(AUTHORIZATION) || headers.contains_key(&api_key::HEADER_NAME) {
            Err(AuthError::Invalid)
        } else {
            Err(AuthError::Missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn token_of(value: &[u8]) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        bearer_token(&headers).map(str::to_string)
    }

    fn authenticators(audience: &str) -> Vec<NamedAuthenticator> {
        let toml = format!(
            r#"
            [upstreams.u]
            token_url = "https://auth.example.com/token"
            client_id = "id"
            client_secret = "s"
            [[authenticators]]
            type = "jwt"
            issuer = "https://login.example.com"
            jwks_url = "https://login.example.com/keys"
            audiences = ["{audience}"]
            [[authenticators]]
            type = "forward"
            url = "https://app.example.com/session"
            forward_cookies = ["sid"]
            "#
        );
        crate::settings::Settings::from_toml(&toml, &Default::default())
            .unwrap()
            .authenticators
    }

    fn same(a: &Authenticator, b: &Authenticator) -> bool {
        match (a, b) {
            (Authenticator::Jwt(a), Authenticator::Jwt(b)) => Arc::ptr_eq(a, b),
            (Authenticator::Forward(a), Authenticator::Forward(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    #[test]
    fn a_reload_keeps_an_unchanged_authenticator_and_rebuilds_a_changed_one() {
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        let first = Chain::new(&authenticators("app"), &clock, None);
        let unchanged = Chain::carry_over(&first, &authenticators("app"), &clock, None);
        assert!(same(&first.authenticators[0].1, &unchanged.authenticators[0].1));
        assert!(same(&first.authenticators[1].1, &unchanged.authenticators[1].1));
        // Tokens verified for the old audience must not be taken as verified for the new one.
        let changed = Chain::carry_over(&first, &authenticators("other-app"), &clock, None);
        assert!(!same(&first.authenticators[0].1, &changed.authenticators[0].1));
        assert!(same(&first.authenticators[1].1, &changed.authenticators[1].1));
    }

    #[test]
    fn a_bearer_token_is_read_from_the_authorization_header_and_anything_else_is_not() {
        assert_eq!(token_of(b"Bearer abc.def-_~+/="), Some("abc.def-_~+/=".into()));
        assert_eq!(
            token_of(b"bearer \tabc "),
            Some("abc".into()),
            "scheme in any case, token trimmed"
        );
        assert_eq!(token_of(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
        assert_eq!(token_of(b"Bearer "), None);
        assert_eq!(token_of(b"Bearer"), None);
        // Bytes past ASCII are legal in a header value but never in a token.
        assert_eq!(token_of("Bearer ab\u{e9}".as_bytes()), None);
        assert_eq!(token_of(b"Bearer ab\xff"), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
