//! Every error a route can return, turned into a status and a JSON body in this one place.
//! Bodies carry our own fixed descriptions: never the upstream's text, a secret or a token.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::identity::AuthError;
use crate::policy::Denied;
use crate::proxy::forward::ForwardError;
use crate::tokens::ReplaceError;
use crate::upstream::UpstreamError;

/// Names the `error` code of an answer the broker made itself (not a proxied API's).
pub const BROKER_ERROR: header::HeaderName = header::HeaderName::from_static("x-token-broker-error");

/// How long a browser should wait when the identity provider cannot be reached.
const AUTH_RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body over the limit")]
    BodyTooLarge,
    #[error("request headers over the limit")]
    HeadersTooLarge,
    #[error("the caller is not authenticated")]
    Unauthenticated(#[source] AuthError),
    #[error("the caller may not have this")]
    AccessDenied(#[source] Denied),
    #[error("cookie-authenticated request without the CSRF header")]
    CsrfHeaderMissing,
    #[error("over the request rate")]
    RateLimited { retry_after: Duration },
    #[error("unknown upstream")]
    UnknownUpstream,
    /// No route of that path.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    NotConfigured(&'static str),
    #[error("method not allowed")]
    /// With the methods the route does allow, e.g. "GET, POST".
    MethodNotAllowed(&'static str),
    /// Proxy mode: the API could not be asked.
    #[error("the API could not be asked")]
    Api(#[source] ForwardError),
    /// A method the proxy does not forward for this upstream, with those it does.
    #[error("method not allowed")]
    ProxyMethodNotAllowed(String),
    /// Something the broker itself could not do; never expected.
    #[error("{0}")]
    Internal(&'static str),
    #[error("the token exchange failed")]
    Upstream(#[source] Arc<UpstreamError>),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl ApiError {
    /// The `error` code and `error_description` of the JSON body.
    fn code_and_description(&self) -> (&'static str, String) {
        match self {
            Self::InvalidRequest(why) => ("invalid_request", why.clone()),
            Self::BodyTooLarge => ("invalid_request", "the request body is over the limit".into()),
            Self::HeadersTooLarge => ("invalid_request", "the request headers are over the limit".into()),
            Self::Unauthenticated(AuthError::Missing) => (
                "unauthenticated",
                "no credential: send X-API-Key or Authorization: Bearer".into(),
            ),
            Self::Unauthenticated(AuthError::Invalid) => ("unauthenticated", "the credential was not accepted".into()),
            Self::Unauthenticated(AuthError::Unavailable) => (
                "auth_unavailable",
                "the identity provider cannot be reached; try again later".into(),
            ),
            Self::AccessDenied(denied) => ("access_denied", denied.to_string()),
            Self::CsrfHeaderMissing => (
                "csrf_header_missing",
                "cookie-authenticated requests must carry the CSRF header".into(),
            ),
            Self::RateLimited { .. } | Self::Unauthenticated(AuthError::Throttled) => {
                ("rate_limited", "too many requests; slow down".into())
            }
            Self::UnknownUpstream => ("unknown_upstream", "no upstream of that name".into()),
            Self::NotFound => ("not_found", "no such route".into()),
            Self::Internal(_) => ("internal_error", "the broker could not complete the answer".into()),
            Self::Api(ForwardError::Timeout) => ("upstream_timeout", "the API did not answer in time".into()),
            Self::Api(ForwardError::Unreachable(_)) => ("upstream_error", "the API could not be reached".into()),
            Self::Api(ForwardError::Broken(_)) => ("upstream_error", "the API's answer broke off".into()),
            Self::Api(ForwardError::Informational(_)) => (
                "upstream_error",
                "the API answered with a status a request cannot end on".into(),
            ),
            Self::Api(ForwardError::WebSocket(_)) => (
                "upstream_error",
                "the API refused or failed the WebSocket handshake".into(),
            ),
            Self::ProxyMethodNotAllowed(allowed) => ("method_not_allowed", format!("use {allowed}")),
            Self::NotConfigured(what) => ("not_found", (*what).into()),
            Self::MethodNotAllowed(allowed) => ("method_not_allowed", format!("use {allowed}")),
            Self::Upstream(error) => match error.as_ref() {
                UpstreamError::Timeout => ("upstream_timeout", "the token endpoint did not answer in time".into()),
                UpstreamError::Unreachable(_) | UpstreamError::ServerError { .. } => (
                    "upstream_unavailable",
                    "the token endpoint is unavailable; try again later".into(),
                ),
                UpstreamError::RateLimited { .. } => (
                    "upstream_unavailable",
                    "the token endpoint is rate-limiting; try again later".into(),
                ),
                UpstreamError::CircuitOpen { .. } => (
                    "upstream_unavailable",
                    "the token endpoint is failing and cooling down; try again later".into(),
                ),
                UpstreamError::QuotaExhausted { .. } => (
                    "upstream_unavailable",
                    "the hourly token quota for this upstream is used up; try again later".into(),
                ),
                UpstreamError::Refused { .. } | UpstreamError::CertificateRefused => {
                    ("upstream_error", "the token endpoint refused the request".into())
                }
                UpstreamError::ScopeWidened => (
                    "upstream_error",
                    "the token endpoint granted more than was asked; the token was not served".into(),
                ),
                UpstreamError::InvalidResponse(_) => (
                    "upstream_error",
                    "the token endpoint answered something unusable".into(),
                ),
            },
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unauthenticated(AuthError::Unavailable) => Some(AUTH_RETRY_AFTER),
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Upstream(error) => error.retry_after(),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthenticated(AuthError::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated(AuthError::Throttled) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::AccessDenied(_) | Self::CsrfHeaderMissing => StatusCode::FORBIDDEN,
            Self::UnknownUpstream | Self::NotFound | Self::NotConfigured(_) => StatusCode::NOT_FOUND,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Api(ForwardError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Self::Api(
                ForwardError::Unreachable(_)
                | ForwardError::Broken(_)
                | ForwardError::WebSocket(_)
                | ForwardError::Informational(_),
            ) => StatusCode::BAD_GATEWAY,
            Self::ProxyMethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Upstream(error) => match error.as_ref() {
                UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                UpstreamError::Unreachable(_)
                | UpstreamError::ServerError { .. }
                | UpstreamError::RateLimited { .. }
                | UpstreamError::CircuitOpen { .. }
                | UpstreamError::QuotaExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
                UpstreamError::Refused { .. }
                | UpstreamError::CertificateRefused
                | UpstreamError::ScopeWidened
                | UpstreamError::InvalidResponse(_) => StatusCode::BAD_GATEWAY,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(what) = self {
            tracing::error!(problem = *what, "an answer could not be made");
        }
        let (error, description) = self.code_and_description();
        let mut response = HttpResponse::build(self.status_code());
        // An error answer is about this request only: never stored (the token routes say so too).
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        // Marks the broker's own errors, which a proxied API's answers never carry.
        response.insert_header((BROKER_ERROR, HeaderValue::from_static(error)));
        match self {
            // RFC 6750 §3: a challenge on every 401; `invalid_token` once a credential was refused.
            Self::Unauthenticated(AuthError::Missing) => {
                response.insert_header((header::WWW_AUTHENTICATE, r#"Bearer realm="token-broker""#));
            }
            Self::Unauthenticated(AuthError::Invalid) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    r#"Bearer realm="token-broker", error="invalid_token""#,
                ));
            }
            Self::MethodNotAllowed(allowed) => {
                response.insert_header((header::ALLOW, HeaderValue::from_static(allowed)));
            }
            Self::ProxyMethodNotAllowed(allowed) => {
                if let Ok(value) = HeaderValue::from_str(allowed) {
                    response.insert_header((header::ALLOW, value));
                }
            }
            _ => {}
        }
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: waiting less than asked would only be refused again.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response.insert_header((header::RETRY_AFTER, seconds.max(1).to_string()));
        }
        response.json(ErrorBody {
            error,
            error_description: &description,
        })
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            // The route usually knows how long to wait; a second is the least it can be.
            AuthError::Throttled => Self::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            error => Self::Unauthenticated(error),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        Self::AccessDenied(denied)
    }
}

impl From<ReplaceError> for ApiError {
    fn from(error: ReplaceError) -> Self {
        match error {
            ReplaceError::TooFrequent(retry_after) => Self::RateLimited { retry_after },
            ReplaceError::Upstream(error) => Self::Upstream(error),
        }
    }
}

impl From<Arc<UpstreamError>> for ApiError {
    fn from(error: Arc<UpstreamError>) -> Self {
        Self::Upstream(error)
    }
}
