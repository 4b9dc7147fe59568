//! The admin listener: never exposed publicly. With `server.admin_token` set, every route but
//! `/healthz` and `/readyz` (which orchestrators probe without credentials) wants
//! `Authorization: Bearer <admin token>`.

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::http::errors::ApiError;
use crate::identity::{bearer_token, AuthError};
use crate::state::Broker;
use crate::upstream::Upstream;
use std::sync::Arc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/admin/tokens", web::get().to(list_tokens))
        .route("/admin/tokens/{upstream}", web::delete().to(evict_tokens))
        .route("/admin/tokens/{upstream}/refresh", web::post().to(refresh_tokens))
        .route("/admin/upstreams", web::get().to(upstreams));
}

/// The cached tokens: upstream, scopes, credential fingerprint, source, times and the token's
/// fingerprint; never a token.
async fn list_tokens(req: HttpRequest, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    require_admin_token(&req, &broker)?;
    Ok(no_store(HttpResponse::Ok()).json(broker.tokens.list()))
}

/// Evicts the upstream's tokens here and in Redis (whose other replicas drop theirs too).
async fn evict_tokens(
    req: HttpRequest,
    broker: web::Data<Broker>,
    upstream: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let upstream = admin_upstream(&req, &broker, &upstream)?;
    let (here, shared) = broker.tokens.evict(upstream.name()).await;
    tracing::info!(upstream = %upstream.name(), evicted = here, shared_evicted = ?shared, "tokens evicted by an operator");
    Ok(no_store(HttpResponse::Ok()).json(serde_json::json!({
        "upstream": upstream.name(),
        "evicted": here,
        "shared_evicted": shared,
    })))
}

/// Fetches new tokens now for the upstream's cached keys.
async fn refresh_tokens(
    req: HttpRequest,
    broker: web::Data<Broker>,
    upstream: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let upstream = admin_upstream(&req, &broker, &upstream)?;
    let (refreshed, failed) = broker.tokens.refresh_now(&upstream).await;
    tracing::info!(upstream = %upstream.name(), refreshed, failed, "tokens refreshed by an operator");
    Ok(no_store(HttpResponse::Ok()).json(serde_json::json!({
        "upstream": upstream.name(),
        "refreshed": refreshed,
        "failed": failed,
    })))
}

/// Per upstream: breaker, last outcome and error, quota, credentials, discovery.
async fn upstreams(req: HttpRequest, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    require_admin_token(&req, &broker)?;
    let state = broker.state();
    let statuses: Vec<_> = state.upstreams.values().map(|u| u.status()).collect();
    Ok(no_store(HttpResponse::Ok()).json(statuses))
}

/// The upstream an admin route names, once the admin token is checked.
fn admin_upstream(req: &HttpRequest, broker: &Broker, name: &str) -> Result<Arc<Upstream>, ApiError> {
    require_admin_token(req, broker)?;
    broker
        .state()
        .upstreams
        .get(name)
        .cloned()
        .ok_or(ApiError::UnknownUpstream)
}

fn no_store(mut builder: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    builder.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
    builder
}

/// 200 while the process runs.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// 200 once configured and listening; 503 while draining on shutdown.
async fn readyz(broker: web::Data<Broker>) -> HttpResponse {
    if broker.is_draining() {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining\n")
    } else {
        HttpResponse::Ok().content_type("text/plain").body("ready\n")
    }
}

/// Prometheus / OpenMetrics text.
async fn metrics(req: HttpRequest, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    require_admin_token(&req, &broker)?;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(
            broker
                .metrics
                .encode()
                .map_err(|_| ApiError::Internal("the metrics could not be written"))?,
        ))
}

/// Refuses the request unless it carries the configured admin token (compared in constant time).
fn require_admin_token(req: &HttpRequest, broker: &Broker) -> Result<(), ApiError> {
    let state = broker.state();
    let Some(expected) = &state.settings.server.admin_token else {
        return Ok(());
    };
    let presented = bearer_token(req.headers()).ok_or(AuthError::Missing)?;
    if bool::from(presented.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Invalid.into())
    }
}
