//! One request id and one span per request, an access log line, the HTTP metrics, and
//! `X-Request-Id` echoed on the answer. The id comes from `X-Request-Id` only when the peer is a
//! trusted proxy; otherwise it is generated.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use tracing::Instrument;

use crate::http::forwarded::ClientInfo;
use crate::startup::Broker;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn usable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let plain = !text.is_empty()
        && text.len() <= 128
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    plain.then(|| text.to_string())
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let broker = req
        .app_data::<web::Data<Broker>>()
        .expect("Broker is registered")
        .clone();
    let state = broker.state();
    let scheme = req.connection_info().scheme().to_string();
    let client: ClientInfo = state
        .trusted_proxies
        .client(req.peer_addr().map(|a| a.ip()), &scheme, req.headers());
    let request_id = client
        .via_trusted_proxy
        .then(|| req.headers().get(REQUEST_ID).and_then(usable_request_id))
        .flatten()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_string());
    let client_ip = client.ip.map(|ip| ip.to_string()).unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        route = %route,
        client_ip = %client_ip,
        scheme = %client.scheme,
    );
    req.extensions_mut().insert(RequestId(request_id.clone()));
    req.extensions_mut().insert(client);

    let started = Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    broker.metrics.request(&route, status);
    span.in_scope(|| {
        tracing::info!(
            target: "token_broker::access",
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}
