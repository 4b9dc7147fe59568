//! `[[authenticators]]` as the authenticators use them.

use std::fmt;
use std::time::Duration;

use url::Url;

/// An authenticator and its name: identities are (name, subject) pairs, so the same subject from
/// two authenticators is two callers.
#[derive(Debug, Clone)]
pub struct NamedAuthenticator {
    pub name: std::sync::Arc<str>,
    pub settings: AuthenticatorSettings,
}

#[derive(Debug, Clone)]
pub enum AuthenticatorSettings {
    ApiKey {
        keys: Vec<ApiKeySettings>,
    },
    Jwt(JwtSettings),
    Forward(ForwardSettings),
    /// Tokens minted at `POST /v1/public-tokens`, verified with `[public_tokens]` keys.
    PublicToken,
}

/// An OIDC issuer whose id_tokens authenticate callers.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    /// The issuer as configured; discovery starts from it.
    pub issuer: String,
    /// Every `iss` value accepted (Google uses two spellings).
    pub accepted_issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub jwks_url: Option<Url>,
    pub hosted_domain: Option<String>,
    /// Google's issuer: an address counts only with `hd` equal to its domain, or at gmail.com,
    /// since `email_verified` alone holds for a consumer account made for anyone's address.
    pub google: bool,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub groups_claim: String,
    pub max_token_bytes: usize,
    /// How long keys are kept when the JWKS answer has no `Cache-Control: max-age`.
    pub jwks_cache_ttl: Duration,
    pub timeout: Duration,
}

/// The app's own session endpoint, asked with the caller's cookies.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardSettings {
    pub url: Url,
    pub forward_cookies: Vec<String>,
    pub forward_authorization: bool,
    pub subject_field: String,
    pub email_field: Option<String>,
    pub groups_field: Option<String>,
    pub cache_ttl: Duration,
    pub timeout: Duration,
}

pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// Google's id_tokens carry either spelling of its issuer.
pub const GOOGLE_ISSUERS: [&str; 2] = [GOOGLE_ISSUER, "accounts.google.com"];

#[derive(Clone)]
pub struct ApiKeySettings {
    pub id: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    pub subject: String,
}

impl fmt::Debug for ApiKeySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeySettings")
            .field("id", &self.id)
            .field("hash", &"[redacted]")
            .field("subject", &self.subject)
            .finish()
    }
}
