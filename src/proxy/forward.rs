//! One request forwarded to the API with the token added, and its answer back, both streamed.
//!
//! Never forwarded: the caller's `Cookie`, `Authorization`, `X-API-Key`, the CSRF header, `Origin`
//! and `Referer`, hop-by-hop headers (and those `Connection` names), `Host`, `Forwarded`,
//! `X-Forwarded-*` and `X-Real-IP`: the broker sets `X-Forwarded-For`, `-Proto`, `-Host` and
//! `X-Request-Id` itself. Never returned: `Set-Cookie`, hop-by-hop headers, and the API's own
//! `Access-Control-*` headers (the broker's CORS policy decides who may read the answer).

use crate::telemetry::traces;
use opentelemetry::trace::SpanKind;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderMap as InHeaders, HeaderName as InName};
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, HOST};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

/// Request headers the broker never passes on, besides hop-by-hop ones, `X-Forwarded-*`, names with
/// an underscore (which CGI-style servers read as their dashed twins) and the CSRF header: the
/// caller's credentials, its claims about addresses and hosts, and the headers some servers let
/// override the method or the path the allow-lists decided on.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "cookie",
    "cookie2",
    "authorization",
    "x-api-key",
    "origin",
    "referer",
    "content-length",
    "expect",
    "http2-settings",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-original-host",
    "x-host",
    "x-request-id",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
    "x-envoy-original-path",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), never passed either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The body of a forwarded request.
pub enum Body {
    Empty,
    /// Read whole: it can be sent again after the token is replaced.
    Buffered(Bytes),
    /// Passed on as it arrives; it cannot be sent twice.
    Streaming(Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + Unpin>),
}

impl Body {
    /// The body as the outbound client sends it; its length, when known, becomes `Content-Length`.
    fn outbound(self) -> BoxBody<Bytes, std::io::Error> {
        match self {
            Body::Empty => Empty::new().map_err(|never| match never {}).boxed(),
            Body::Buffered(bytes) => Full::new(bytes).map_err(|never| match never {}).boxed(),
            Body::Streaming(stream) => StreamBody::new(stream.map_ok(Frame::data)).boxed(),
        }
    }

    /// A second copy, for a retry, when there is one.
    pub fn replay(&self) -> Option<Body> {
        match self {
            Body::Empty => Some(Body::Empty),
            Body::Buffered(bytes) => Some(Body::Buffered(bytes.clone())),
            Body::Streaming(_) => None,
        }
    }
}

/// What the broker knows of the caller, for the forwarding headers it sets itself.
pub struct Caller<'a> {
    pub ip: Option<IpAddr>,
    pub scheme: &'a str,
    pub request_id: &'a str,
}

impl Caller<'_> {
    /// The client's address as `X-Forwarded-For` carries it.
    pub fn address(&self) -> Option<String> {
        self.ip.map(address_text)
    }

    /// `Forwarded` (RFC 7239): the client's address (an IPv6 one quoted in brackets) and scheme;
    /// `address` is [`Self::address`].
    pub fn forwarded(&self, address: Option<&str>) -> String {
        let mut text = String::with_capacity(32);
        match (self.ip, address) {
            (Some(IpAddr::V6(_)), Some(address)) => {
                text.push_str("for=\"[");
                text.push_str(address);
                text.push_str("]\";");
            }
            (Some(_), Some(address)) => {
                text.push_str("for=");
                text.push_str(address);
                text.push(';');
            }
            _ => {}
        }
        text.push_str("proto=");
        text.push_str(self.scheme);
        text
    }
}

/// `Bearer <token>`, written once into the buffer the header keeps (no formatted copy of the token
/// between); none for a token that is not visible ASCII (a token endpoint's are checked so when
/// fetched, the shared tier's copies are not), as a header value made from text would refuse it.
pub(super) fn bearer(token: &str) -> Option<HeaderValue> {
    if !token.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return None;
    }
    let mut bearer = bytes::BytesMut::with_capacity("Bearer ".len() + token.len());
    bearer.extend_from_slice(b"Bearer ");
    bearer.extend_from_slice(token.as_bytes());
    let mut value = HeaderValue::from_maybe_shared(bearer.freeze()).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// An address as text, an IPv4 one written octet by octet: the standard library's `Display`
/// formats into a buffer of its own first, for padding, which cost more than the rest of the
/// forwarding headers.
fn address_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        IpAddr::V6(ip) => ip.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the API did not answer in time")]
    Timeout,
    #[error("the API could not be reached")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    #[error("the API's answer broke off")]
    Broken(#[source] hyper::Error),
    #[error("the API's WebSocket handshake failed")]
    WebSocket(#[source] Box<super::websocket::HandshakeError>),
    /// An answer a plain request cannot have, such as `101 Switching Protocols` to a request that
    /// asked for no upgrade: passed on, it would make a proxy in front treat the connection as a
    /// tunnel.
    #[error("the API answered with status {0}, which a plain request cannot get")]
    Informational(u16),
}

/// Talks to the APIs. One per process: it holds the connection pool.
///
/// hyper's pooled client rather than reqwest: a proxied request is already a parsed URI and a
/// header map, and reqwest's per-request work (parsing the URL again, copying the headers along
/// its layers) was a tenth of a proxied request's cost.
#[derive(Clone)]
pub struct Forwarder {
    http: Client<HttpsConnector<HttpConnector>, BoxBody<Bytes, std::io::Error>>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

/// The API's answer: its head, and the body still to be read before `deadline`.
pub struct Answer {
    pub response: http::Response<Incoming>,
    pub deadline: Instant,
}

impl Forwarder {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|config| config.with_root_certificates(roots).with_no_client_auth())
            .expect("ring supports rustls' default protocol versions");
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        // `Host` is set from the upstream's settings, computed once rather than per request.
        let http = Client::builder(TokioExecutor::new())
            .set_host(false)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(https);
        Self { http }
    }

    /// Sends `method uri` with `token`; the answer's head, its body to be read before the
    /// exchange's deadline (`timeout` from now).
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        method: &actix_web::http::Method,
        (uri, host): (http::Uri, &HeaderValue),
        incoming: &InHeaders,
        csrf_header: &InName,
        caller: &Caller<'_>,
        token: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let deadline = Instant::now() + timeout;
        let method = http::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(http::Method::GET);
        let mut headers = request_headers(incoming, csrf_header);
        headers.insert(HOST, host.clone());
        if let Some(value) = bearer(token) {
            headers.insert(AUTHORIZATION, value);
        }
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        let address = caller.address();
        if let Some(address) = &address {
            set("x-forwarded-for", address);
        }
        set("x-forwarded-proto", caller.scheme);
        set("forwarded", &caller.forwarded(address.as_deref()));
        set("x-request-id", caller.request_id);
        let call = async {
            traces::inject(&mut headers);
            let mut request = http::Request::new(body.outbound());
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            tokio::time::timeout_at(deadline, self.http.request(request)).await
        };
        let response = traces::in_span("proxied call", SpanKind::Client, call)
            .await
            .map_err(|_| ForwardError::Timeout)?
            .map_err(ForwardError::Unreachable)?;
        if response.status().is_informational() {
            return Err(ForwardError::Informational(response.status().as_u16()));
        }
        Ok(Answer { response, deadline })
    }
}

/// The incoming headers the API may see.
fn request_headers(incoming: &InHeaders, csrf_header: &InName) -> HeaderMap {
    let named_by_connection: Vec<String> = list_items(
        incoming
            .get_all(actix_web::http::header::CONNECTION)
            .filter_map(|v| v.to_str().ok()),
    )
    .map(str::to_ascii_lowercase)
    .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in incoming {
        let lower = name.as_str();
        let dropped = NOT_FORWARDED.contains(&lower)
            || HOP_BY_HOP.contains(&lower)
            || lower.starts_with("x-forwarded-")
            || lower.contains('_')
            || name == csrf_header
            || named_by_connection.iter().any(|n| n == lower);
        if dropped {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// Whether an answer header of the API reaches the browser.
pub fn returned(name: &HeaderName, connection: &[String]) -> bool {
    let lower = name.as_str();
    !(HOP_BY_HOP.contains(&lower)
        || lower == "set-cookie"
        || lower == "set-cookie2"
        || lower == "content-length"
        || lower.starts_with("access-control-")
        || lower == "x-token-broker-error"
        || connection.iter().any(|n| n == lower))
}

/// The header names an answer's `Connection` lists (they are hop-by-hop too).
pub fn connection_names(headers: &HeaderMap) -> Vec<String> {
    list_items(headers.get_all(CONNECTION).iter().filter_map(|v| v.to_str().ok()))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The items of a comma-separated header (`Connection: keep-alive, Upgrade`), trimmed, over all
/// of its lines.
pub fn list_items<'a>(values: impl Iterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    values.flat_map(|v| v.split(',')).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue as InValue;

    proptest::proptest! {
        #[test]
        fn an_address_reads_as_the_standard_library_writes_it(v4: u32, v6: u128) {
            for ip in [IpAddr::from(std::net::Ipv4Addr::from(v4)), IpAddr::from(std::net::Ipv6Addr::from(v6))] {
                proptest::prop_assert_eq!(address_text(ip), ip.to_string());
            }
        }
    }

    #[test]
    fn the_bearer_header_carries_a_visible_ascii_token_and_nothing_else() {
        let value = bearer("tok-1.A_b~").unwrap();
        assert_eq!(value.as_bytes(), b"Bearer tok-1.A_b~");
        assert!(value.is_sensitive());
        for odd in ["tok\u{e9}", "tok\n1", "tok\u{7f}", "tok\u{0}"] {
            assert!(bearer(odd).is_none(), "{odd:?}");
        }
    }

    #[test]
    fn forwarded_names_the_address_quoting_an_ipv6_one_and_the_scheme() {
        let caller = |ip: Option<IpAddr>| Caller {
            ip,
            scheme: "https",
            request_id: "r",
        };
        let forwarded = |ip: Option<IpAddr>| caller(ip).forwarded(caller(ip).address().as_deref());
        assert_eq!(
            forwarded(Some("203.0.113.7".parse().unwrap())),
            "for=203.0.113.7;proto=https"
        );
        assert_eq!(
            forwarded(Some("2001:db8::1".parse().unwrap())),
            "for=\"[2001:db8::1]\";proto=https"
        );
        assert_eq!(forwarded(None), "proto=https");
    }

    #[test]
    fn credentials_cookies_and_hop_by_hop_headers_never_reach_the_api() {
        let mut incoming = InHeaders::new();
        for (name, value) in [
            ("cookie", "app_session=secret"),
            ("authorization", "Bearer caller-token"),
            ("x-api-key", "caller-key"),
            ("x-requested-with", "csrf"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "hop"),
            ("keep-alive", "timeout=5"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("host", "broker.example.com"),
            ("origin", "https://app.example.com"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/admin"),
            ("x_forwarded_host", "evil"),
            ("true-client-ip", "1.2.3.4"),
            ("accept", "application/json"),
            ("x-custom", "kept"),
        ] {
            incoming.append(InName::from_static(name), InValue::from_static(value));
        }
        let headers = request_headers(&incoming, &InName::from_static("x-requested-with"));
        let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-custom"]);
    }

    #[test]
    fn set_cookie_hop_by_hop_and_the_apis_cors_headers_never_reach_the_browser() {
        let connection = vec!["x-hop".to_string()];
        for name in [
            "set-cookie",
            "connection",
            "transfer-encoding",
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "x-token-broker-error",
            "x-hop",
        ] {
            assert!(!returned(&HeaderName::from_static(name), &connection), "{name}");
        }
        for name in [
            "content-type",
            "etag",
            "cache-control",
            "www-authenticate",
            "x-ratelimit-remaining",
        ] {
            assert!(returned(&HeaderName::from_static(name), &connection), "{name}");
        }
    }
}
