//! What the routes that serve callers share: who is calling (with the CSRF and rate checks that
//! come with it), and reading a bounded request body.

use crate::telemetry::traces;
use opentelemetry::trace::SpanKind;
use std::time::Duration;

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::http::errors::ApiError;
use crate::http::observe::ClientAddress;
use crate::identity::{AuthError, Identity};
use crate::policy::Denied;
use crate::state::AppState;

/// The upstream a route names: its `{upstream}` segment, or on a route of one upstream's own
/// (a fixed path under `prefix`) the segment after the prefix, of the path as matched.
pub fn upstream_name<'a>(req: &'a HttpRequest, prefix: &str) -> &'a str {
    let path = req.match_info();
    path.get("upstream")
        .or_else(|| {
            let rest = path.as_str().strip_prefix(prefix)?;
            Some(rest.split_once('/').map_or(rest, |(name, _)| name))
        })
        .unwrap_or_default()
}

/// Authenticates the caller, then applies the checks every caller-facing route needs. An address
/// that failed too often is refused first, before any authentication work; costly work reserves
/// against that budget as it starts (see [`crate::http::auth_failures`]).
pub async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Identity, ApiError> {
    authenticate_as(req, state, CrossSiteCheck::CsrfHeader).await
}

/// How a cookie-authenticated request proves it comes from a page the CORS policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossSiteCheck {
    /// The CSRF header, which a page can only send cross-site after a CORS preflight.
    CsrfHeader,
    /// An allowed `Origin`: a browser cannot add headers to a WebSocket handshake, but always
    /// sends its page's origin (cross-site WebSocket hijacking is the attack).
    AllowedOrigin,
}

/// As [`authenticate`], with the cross-site check a request of this kind can carry.
pub async fn authenticate_as(req: &HttpRequest, state: &AppState, check: CrossSiteCheck) -> Result<Identity, ApiError> {
    let attempt = state
        .auth_failures
        .attempt(ClientAddress::of(req))
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let authenticated = traces::in_span(
        "authenticate",
        SpanKind::Internal,
        state.identity.authenticate(req.headers(), &attempt),
    );
    let identity = match authenticated.await {
        Ok(identity) => {
            attempt.succeeded();
            identity
        }
        Err(AuthError::Throttled) => {
            let retry_after = attempt.refused_for().unwrap_or(Duration::from_secs(1));
            return Err(ApiError::RateLimited { retry_after });
        }
        Err(error) => {
            // A session endpoint that cannot judge a guessed cookie must not be asked without limit either.
            if matches!(error, AuthError::Invalid | AuthError::Unavailable) {
                attempt.failed();
            } else {
                attempt.succeeded();
            }
            return Err(error.into());
        }
    };
    // A cookie travels with any cross-site request; a custom header cannot without CORS consent.
    if identity.via_cookie {
        let proven = match check {
            CrossSiteCheck::CsrfHeader => req.headers().contains_key(&state.settings.server.csrf_header),
            CrossSiteCheck::AllowedOrigin => state
                .cors
                .allowed(req.headers().get(actix_web::http::header::ORIGIN))
                .is_some(),
        };
        if !proven {
            return Err(match check {
                CrossSiteCheck::CsrfHeader => ApiError::CsrfHeaderMissing,
                CrossSiteCheck::AllowedOrigin => ApiError::AccessDenied(Denied::CrossSiteWebSocket),
            });
        }
    }
    state
        .rate_limit
        .check(&identity.authenticator, &identity.subject)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    Ok(identity)
}

/// The request body, refused with 413 past `limit` bytes (declared or streamed).
pub async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::BodyTooLarge);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::InvalidRequest("the request body could not be read".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
