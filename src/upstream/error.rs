//! What can go wrong at the token endpoint, kept apart so each maps to one answer to the browser.

use std::time::Duration;

/// What [`UpstreamError::Unreachable`] says when a connection was made and then lost.
pub const BROKE_OFF: &str = "the connection broke off";

/// How long a browser should wait when the upstream gave no `Retry-After` of its own.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// An RFC 6749 §5.2 `error` code, kept only when it is a plain token (safe to log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthErrorCode(String);

impl OAuthErrorCode {
    /// RFC 6749 §5.2: client authentication failed.
    pub const INVALID_CLIENT: &'static str = "invalid_client";

    /// RFC 6749 §5.2: `error` is `%x20-21 / %x23-5B / %x5D-7E`; we also refuse spaces and long values
    /// so that the code can be logged without letting the upstream write into our logs.
    pub fn parse(code: &str) -> Option<Self> {
        let plain = !code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        plain.then(|| Self(code.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The exchange did not finish within the upstream's `timeout`.
    #[error("the token endpoint did not answer in time")]
    Timeout,
    /// Connecting or sending failed: the endpoint is down or unreachable.
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    /// 5xx: the endpoint is up but failing.
    #[error("the token endpoint answered {status}")]
    ServerError { status: u16, retry_after: Option<Duration> },
    /// 429: the endpoint asks us to slow down.
    #[error("the token endpoint is rate-limiting")]
    RateLimited { retry_after: Option<Duration> },
    /// The circuit breaker is open: the upstream is cooling down after consecutive failures.
    #[error("the circuit is open for a cool-down")]
    CircuitOpen { retry_after: Duration },
    /// `max_tokens_per_hour` is used up.
    #[error("the hourly token quota is used up")]
    QuotaExhausted { retry_after: Duration },
    /// A 4xx refusal, usually an RFC 6749 §5.2 error such as `invalid_client`.
    #[error("the token endpoint refused the request with {status} ({})", .error.as_ref().map_or("no error code", |e| e.as_str()))]
    Refused { status: u16, error: Option<OAuthErrorCode> },
    /// The TLS handshake ended with the server refusing the client certificate (RFC 8705): the
    /// certificate-based counterpart of `invalid_client`.
    #[error("the token endpoint refused the client certificate")]
    CertificateRefused,
    /// 2xx with a token for scopes that were not requested: never served.
    #[error("the token endpoint granted a scope that was not requested")]
    ScopeWidened,
    /// 2xx with a body that is not a usable token response.
    #[error("the token endpoint answered something unusable: {0}")]
    InvalidResponse(&'static str),
}

impl UpstreamError {
    /// How long a browser should wait before asking again, when the upstream is only unavailable.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unreachable(_) => Some(DEFAULT_RETRY_AFTER),
            Self::ServerError { retry_after, .. } | Self::RateLimited { retry_after } => {
                Some(retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
            }
            Self::CircuitOpen { retry_after } | Self::QuotaExhausted { retry_after } => Some(*retry_after),
            Self::Timeout
            | Self::Refused { .. }
            | Self::CertificateRefused
            | Self::ScopeWidened
            | Self::InvalidResponse(_) => None,
        }
    }

    /// The `outcome` label of `token_broker_upstream_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::ServerError { .. } => "server_error",
            Self::RateLimited { .. } => "rate_limited",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::QuotaExhausted { .. } => "quota_exhausted",
            Self::Refused { .. } => "refused",
            Self::CertificateRefused => "certificate_refused",
            Self::ScopeWidened => "scope_widened",
            Self::InvalidResponse(_) => "invalid_response",
        }
    }

    /// Whether the endpoint refused the credential presented: `invalid_client`, or a client
    /// certificate refused at the handshake. Another credential may fare better.
    pub fn is_credential_refused(&self) -> bool {
        match self {
            Self::Refused { error: Some(code), .. } => code.as_str() == OAuthErrorCode::INVALID_CLIENT,
            Self::CertificateRefused => true,
            _ => false,
        }
    }

    /// Whether a connection was made and then lost, as when a server that refuses a client
    /// certificate closes the connection without the alert reaching the client (TLS 1.3).
    pub fn broke_off(&self) -> bool {
        matches!(self, Self::Unreachable(message) if message == BROKE_OFF)
    }

    /// Whether the endpoint and the broker's configuration disagree (asking again won't help).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Refused { .. } | Self::CertificateRefused | Self::ScopeWidened
        )
    }

    /// The RFC 6749 §5.2 code, for logs.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            Self::Refused { error, .. } => error.as_ref().map(OAuthErrorCode::as_str),
            _ => None,
        }
    }
}
