//! One request id per request, an access log line (debug level), the HTTP metric, and
//! `X-Request-Id` echoed on the answer. The id comes from `X-Request-Id` only when the peer is a
//! trusted proxy; otherwise it is generated. Handlers find it in the request's extensions and put it
//! on their own lines (the audit line among them); a debug-level span carries it for subscribers
//! that want spans. Fields are explicit on each line because formatting span fields into every
//! JSON line cost a third of the broker's throughput.

use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};

use crate::state::{AppState, Broker};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's address and scheme as `trusted_proxies` resolves them, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress {
    pub ip: Option<std::net::IpAddr>,
    pub scheme: &'static str,
}

/// What `observe` learns of a request, kept in its extensions as one entry (one insert per
/// request rather than one per fact).
pub struct Observed {
    pub id: RequestId,
    pub address: ClientAddress,
    /// The configuration the request is served with (see [`state_of`]).
    pub state: Arc<AppState>,
}

/// The configuration `req` is served with: the snapshot the public app's middleware took when the
/// request came in and keeps in it, so that the middleware and the route see the same one even if
/// a reload lands in the middle of the request. Outside that middleware, the one in force now.
pub fn state_of(req: &actix_web::HttpRequest, broker: &Broker) -> Arc<AppState> {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<Observed>()
        .map_or_else(|| broker.state(), |observed| Arc::clone(&observed.state))
}

impl ClientAddress {
    pub fn of(req: &actix_web::HttpRequest) -> Option<std::net::IpAddr> {
        use actix_web::HttpMessage;
        req.extensions().get::<Observed>().and_then(|o| o.address.ip)
    }

    /// `https` or `http`, as the client reached the broker (or its trusted proxy).
    pub fn scheme_of(req: &actix_web::HttpRequest) -> &'static str {
        use actix_web::HttpMessage;
        req.extensions().get::<Observed>().map_or("http", |o| o.address.scheme)
    }
}

/// The id of the request being served, as the header value it is echoed in.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// A new id: 32 lowercase hex digits of a random UUID.
    pub fn generate() -> Self {
        let mut text = [0u8; uuid::fmt::Simple::LENGTH];
        let text = uuid::Uuid::new_v4().simple().encode_lower(&mut text);
        Self(HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-")))
    }

    /// The id as text (plain ASCII, checked when it was made).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    /// Calls `f` with the id of `req` without copying it ("" outside this middleware: tests of
    /// single handlers).
    pub fn with<R>(req: &actix_web::HttpRequest, f: impl FnOnce(&str) -> R) -> R {
        use actix_web::HttpMessage;
        let extensions = req.extensions();
        f(extensions.get::<Observed>().map_or("", |o| o.id.as_str()))
    }
}

/// A trusted proxy's `X-Request-Id`, when it is plain enough to pass on and log.
pub(crate) fn usable_request_id(value: &HeaderValue) -> Option<RequestId> {
    let text = value.to_str().ok()?;
    let plain = !text.is_empty()
        && text.len() <= 128
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    plain.then(|| RequestId(value.clone()))
}

/// Displays an optional address without allocating.
pub(crate) struct ClientIp(pub(crate) Option<std::net::IpAddr>);

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => Ok(()),
        }
    }
}
