//! The admin listener: never exposed publicly. With `server.admin_token` set, every route but
//! `/healthz` and `/readyz` (which orchestrators probe without credentials) wants
//! `Authorization: Bearer <admin token>`.

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::http::errors::ApiError;
use crate::identity::{bearer_token, AuthError};
use crate::state::Broker;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
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
