//! One request id per request, an access log line (debug level), the HTTP metric, and
//! `X-Request-Id` echoed on the answer. The id comes from `X-Request-Id` only when the peer is a
//! trusted proxy; otherwise it is generated. Handlers find it in the request's extensions and put it
//! on their own lines (the audit line among them); a debug-level span carries it for subscribers
//! that want spans. Fields are explicit on each line because formatting span fields into every
//! JSON line cost a third of the broker's throughput.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use tracing::Instrument;

use crate::startup::Broker;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's address as `trusted_proxies` resolves it, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl ClientAddress {
    pub fn of(req: &actix_web::HttpRequest) -> Option<std::net::IpAddr> {
        use actix_web::HttpMessage;
        req.extensions().get::<ClientAddress>().and_then(|a| a.0)
    }
}

/// The id of the request being served, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// Calls `f` with the id of `req` without copying it ("" outside this middleware: tests of
    /// single handlers).
    pub fn with<R>(req: &actix_web::HttpRequest, f: impl FnOnce(&str) -> R) -> R {
        use actix_web::HttpMessage;
        let extensions = req.extensions();
        f(extensions.get::<RequestId>().map_or("", |id| id.0.as_str()))
    }
}

fn usable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let plain = !text.is_empty()
        && text.len() <= 128
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    plain.then(|| text.to_string())
}

/// Displays an optional address without allocating.
struct ClientIp(Option<std::net::IpAddr>);

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => Ok(()),
        }
    }
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
    let scheme = if req.app_config().secure() { "https" } else { "http" };
    let client = state
        .trusted_proxies
        .client(req.peer_addr().map(|a| a.ip()), scheme, req.headers());
    let request_id = client
        .via_trusted_proxy
        .then(|| req.headers().get(REQUEST_ID).and_then(usable_request_id))
        .flatten()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = tracing::debug_span!("request", request_id = %request_id);
    let method = req.method().clone();
    // Only the access line (debug level) needs the path: copy it only when that line is on.
    let path = tracing::enabled!(target: "token_broker::access", tracing::Level::DEBUG).then(|| req.path().to_string());
    {
        let mut extensions = actix_web::HttpMessage::extensions_mut(&req);
        extensions.insert(RequestId(request_id.clone()));
        extensions.insert(ClientAddress(client.ip));
        extensions.insert(state);
    }

    let started = Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    // Resources are named after their pattern: the label is known after routing, unallocated.
    let route = response.request().match_name().unwrap_or("unmatched");
    broker.metrics.request(route, status);
    span.in_scope(|| {
        tracing::debug!(
            target: "token_broker::access",
            request_id = %request_id,
            method = %method,
            path = path.as_deref().unwrap_or_default(),
            client_ip = %ClientIp(client.ip),
            scheme = %client.scheme,
            route,
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
