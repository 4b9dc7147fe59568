//! The admin listener: never exposed publicly.

use actix_web::{web, HttpResponse};

use crate::startup::Broker;

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
async fn metrics(broker: web::Data<Broker>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(broker.metrics.encode())
}
