//! Who is calling: the authenticator chain and the [`Identity`] it produces.
//!
//! Authenticators are tried in configured order; the first that recognises the kind of credential
//! a request carries decides, so a forged credential is refused rather than handed to the next one.
//! Identity headers a client sends itself (`X-Forwarded-User` and the like) are never read.

mod api_key;

use actix_web::http::header::HeaderMap;

pub use api_key::{hash_key, ApiKeyAuthenticator};

use crate::policy::Rights;
use crate::settings::AuthenticatorSettings;

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ApiKey,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Identity {
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
            subject: subject.into(),
            verified_email: None,
            groups: Vec::new(),
            method,
            via_cookie: false,
            rights: Rights::Grants,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential")]
    Missing,
    #[error("the credential failed verification")]
    Invalid,
}

/// What one authenticator makes of a request.
pub enum Outcome {
    /// The request carries no credential of this authenticator's kind.
    NotMine,
    Authenticated(Identity),
    Rejected(AuthError),
}

/// The configured authenticators.
pub enum Authenticator {
    ApiKey(ApiKeyAuthenticator),
}

impl Authenticator {
    pub fn from_settings(settings: &AuthenticatorSettings) -> Self {
        match settings {
            AuthenticatorSettings::ApiKey { keys } => Self::ApiKey(ApiKeyAuthenticator::new(keys)),
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Outcome {
        match self {
            Self::ApiKey(a) => a.authenticate(headers),
        }
    }
}

/// The authenticators, tried in order.
pub struct Chain {
    authenticators: Vec<Authenticator>,
}

impl Chain {
    pub fn new(settings: &[AuthenticatorSettings]) -> Self {
        Self {
            authenticators: settings.iter().map(Authenticator::from_settings).collect(),
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        for authenticator in &self.authenticators {
            match authenticator.authenticate(headers).await {
                Outcome::NotMine => continue,
                Outcome::Authenticated(identity) => return Ok(identity),
                Outcome::Rejected(error) => return Err(error),
            }
        }
        Err(AuthError::Missing)
    }
}
