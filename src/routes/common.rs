//! What the routes that serve callers share: who is calling (with the CSRF and rate checks that
//! come with it), and reading a bounded request body.

use std::time::Duration;

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::http::errors::ApiError;
use crate::http::observe::ClientAddress;
use crate::identity::{AuthError, Identity};
use crate::state::AppState;

/// Authenticates the caller, then applies the checks every caller-facing route needs. An address
/// that failed too often is refused first, before any authentication work; costly work reserves
/// against that budget as it starts (see [`crate::http::auth_failures`]).
pub async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Identity, ApiError> {
    let attempt = state
        .auth_failures
        .attempt(ClientAddress::of(req))
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let identity = match state.identity.authenticate(req.headers(), &attempt).await {
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
    if identity.via_cookie && !req.headers().contains_key(&state.settings.server.csrf_header) {
        return Err(ApiError::CsrfHeaderMissing);
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
