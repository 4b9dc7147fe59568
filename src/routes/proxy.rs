//! `ANY /v1/proxy/{upstream}/{path}`: the caller is authenticated and authorised as on the token
//! route, the path and method are checked against the upstream's allow-list, and the request is
//! forwarded to the API with the cached token added. The browser never sees the token.

use crate::telemetry::audit::RequestProxied;
use crate::telemetry::traces;
use opentelemetry::trace::SpanKind;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::dev::{AppService, HttpServiceFactory, ResourceDef};
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use secrecy::ExposeSecret;

use crate::http::errors::ApiError;
use crate::http::observe::{state_of, ClientAddress, RequestId};
use crate::policy::Denied;
use crate::proxy::config::ProxySettings;
use crate::proxy::forward::ForwardError;
use crate::proxy::forward::{connection_names, list_items, returned, Answer, Body, Caller};
use crate::proxy::path::ProxyPath;
use crate::proxy::websocket;
use crate::routes::common::{authenticate_as, upstream_name, CrossSiteCheck};
use crate::state::Broker;
use crate::tokens::CachedToken;
use crate::upstream::Upstream;

/// Bodies up to this size are read whole, so that the request can be sent again after the token
/// is replaced; larger ones stream through once.
const REPLAYABLE_BODY_BYTES: u64 = 64 * 1024;
/// The longest query string forwarded (nginx's default request line buffer is 8 KiB).
const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Chunks of a streamed body in flight between the caller and the API: back-pressure beyond it.
const STREAM_CHUNKS: usize = 8;

const PREFIX: &str = "/v1/proxy/";
/// The routes' names: the `route` label of their metric.
const ROUTE: &str = "/v1/proxy/{upstream}/{path}";
const ROOT_ROUTE: &str = "/v1/proxy/{upstream}";

/// The proxy routes of the upstreams named when the app is built: `/v1/proxy/<name>` and every
/// path below it, which actix-web matches by comparing text. [`general`] serves the others.
pub fn fixed(cfg: &mut web::ServiceConfig, upstreams: &[String]) {
    for name in upstreams {
        cfg.service(UpstreamRoutes(format!("{PREFIX}{name}")));
    }
}

/// The proxy routes with an `{upstream}` segment, which actix-web matches with a regular
/// expression (on a warm request, that and the token routes' expressions tried before it cost
/// about 4% of the broker's instructions): they serve the upstreams a reload adds.
pub fn general(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/proxy/{upstream}/{path:.*}")
            .name(ROUTE)
            .default_service(web::to(proxy)),
    )
    .service(
        web::resource(ROOT_ROUTE)
            .name(ROOT_ROUTE)
            .default_service(web::to(proxy)),
    );
}

/// One upstream's two routes: its root, and a prefix (actix-web's resources are exact paths, so
/// the prefix is registered as a service of its own, as a scope is, without a scope's layers).
struct UpstreamRoutes(String);

impl HttpServiceFactory for UpstreamRoutes {
    fn register(self, config: &mut AppService) {
        let mut root = ResourceDef::new(self.0.as_str());
        root.set_name(ROOT_ROUTE);
        config.register_service(root, None, web::to(proxy), None);
        let mut below = ResourceDef::prefix(self.0);
        below.set_name(ROUTE);
        config.register_service(below, None, web::to(proxy), None);
    }
}

async fn proxy(req: HttpRequest, payload: web::Payload, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    let state = state_of(&req, &broker);
    let websocket = is_websocket_handshake(&req);
    let check = if websocket {
        CrossSiteCheck::AllowedOrigin
    } else {
        CrossSiteCheck::CsrfHeader
    };
    // Sub-futures that hold a whole exchange with another server (authentication's key fetches
    // and session calls, a token fetch) are boxed where they start, so this handler's future
    // stays small: actix moves it into a box of its own on every request.
    let identity = authenticate_as(&req, &state, check).await?;
    let name = upstream_name(&req, PREFIX);
    let upstream = state.upstreams.get(name).ok_or(ApiError::UnknownUpstream)?;
    let settings = upstream.settings.proxy.as_ref().ok_or(ApiError::UnknownUpstream)?;
    if !settings.methods.contains(req.method()) {
        let allowed: Vec<&str> = settings.methods.iter().map(|m| m.as_str()).collect();
        return Err(ApiError::ProxyMethodNotAllowed(allowed.join(", ")));
    }
    let path = proxied_path(&req).ok_or(ApiError::AccessDenied(Denied::PathNotAllowed))?;
    if req.uri().query().is_some_and(|query| query.len() > MAX_QUERY_BYTES) {
        return Err(ApiError::InvalidRequest(format!(
            "the query string is over {MAX_QUERY_BYTES} bytes"
        )));
    }
    if !settings.paths.iter().any(|pattern| pattern.matches(&path)) {
        return Err(ApiError::AccessDenied(Denied::PathNotAllowed));
    }
    let entitlement = state.policy.entitle(&identity, name, settings.scopes.clone())?;
    let served = traces::in_span(
        "cache",
        SpanKind::Internal,
        broker.tokens.get(upstream, &entitlement.scopes),
    )
    .await?;
    let target = target_of(settings, &path, req.uri().query());
    let unforwardable = || ApiError::InvalidRequest("the request's address cannot be forwarded".into());
    let uri = http::Uri::try_from(target.as_str()).map_err(|_| unforwardable())?;
    let request_id = RequestId::with(&req, str::to_string);
    let caller = Caller {
        ip: ClientAddress::of(&req),
        scheme: ClientAddress::scheme_of(&req),
        request_id: &request_id,
    };
    if websocket {
        let token = served.token.access_token.expose_secret();
        let url = url::Url::parse(&target).map_err(|_| unforwardable())?;
        return Box::pin(open_websocket(&req, payload, url, &caller, token, settings))
            .await
            .inspect(|_| {
                upstream.proxy_metrics.answered(101, std::time::Duration::ZERO);
                audit(&req, &identity, name, &path, 101, &served.token.fingerprint);
            });
    }
    let too_large = Arc::new(AtomicBool::new(false));
    let bytes_in = upstream.proxy_metrics.bytes_in.clone();
    let body = match body_kind(&req, settings.max_body_bytes)? {
        BodyKind::Empty => Body::Empty,
        kind => {
            Box::pin(request_body(
                kind,
                payload,
                settings.max_body_bytes,
                settings.timeout,
                too_large.clone(),
                bytes_in,
            ))
            .await?
        }
    };
    let send = |token: Arc<CachedToken>, body: Body| {
        let uri = uri.clone();
        let caller = &caller;
        let req = &req;
        let csrf = state.settings.server.csrf_header.clone();
        let forwarder = broker.forwarder.clone();
        async move {
            forwarder
                .send(
                    req.method(),
                    (uri, &settings.host),
                    req.headers(),
                    &csrf,
                    caller,
                    token.access_token.expose_secret(),
                    body,
                    settings.timeout,
                )
                .await
        }
    };

    let started = Instant::now();
    let replay = body.replay();
    // The cached token itself: the request's header is the one copy made of it. `used` is the
    // token the answer came with, which the audit line names.
    let mut used = served.token.clone();
    let mut answer = send(used.clone(), body).await;
    // The API refused the token: replace it once (as a report would) and send again, when the body
    // can be sent again.
    if let (Ok(first), Some(body)) = (&answer, replay) {
        if first.response.status() == 401 {
            if let Some(fresh) = Box::pin(replacement(
                &broker,
                upstream,
                &entitlement.scopes,
                served.token.access_token.expose_secret(),
                &state,
                &identity,
            ))
            .await
            {
                used = fresh.clone();
                answer = Box::pin(send(fresh, body)).await;
            }
        }
    }
    let response = answer.map_err(|error| {
        if too_large.load(Ordering::Relaxed) {
            ApiError::BodyTooLarge
        } else {
            ApiError::Api(error)
        }
    })?;
    let status = response.response.status().as_u16();
    upstream.proxy_metrics.answered(status, started.elapsed());
    audit(&req, &identity, name, &path, status, &used.fingerprint);
    answer_of(response, upstream).await
}

/// The API's URL for `path` (checked) and the caller's query: the configured base, its own query
/// and fragment left out.
fn target_of(settings: &ProxySettings, path: &ProxyPath, query: Option<&str>) -> String {
    let origin = &settings.url[..url::Position::BeforePath];
    let base = settings.url.path().trim_end_matches('/');
    let mut target = String::with_capacity(origin.len() + base.len() + path.as_str().len() + 64);
    target.push_str(origin);
    target.push_str(base);
    target.push_str(path.as_str());
    if target.len() == origin.len() {
        target.push('/');
    }
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    target
}

/// The audit line of a proxied request (a WebSocket's has status 101).
fn audit(
    req: &HttpRequest,
    identity: &crate::identity::Identity,
    upstream: &str,
    path: &ProxyPath,
    status: u16,
    token_fingerprint: &str,
) {
    RequestId::with(req, |request_id| {
        RequestProxied {
            request_id,
            authenticator: &identity.authenticator,
            subject: &identity.subject,
            upstream,
            method: req.method().as_str(),
            path: path.shown(),
            status,
            token_fingerprint,
        }
        .log()
    });
}

/// A `GET` asking to become a WebSocket (RFC 6455 §4.1).
fn is_websocket_handshake(req: &HttpRequest) -> bool {
    let has = |name, token: &str| {
        list_items(req.headers().get_all(name).filter_map(|v| v.to_str().ok())).any(|v| v.eq_ignore_ascii_case(token))
    };
    req.method() == actix_web::http::Method::GET
        && has(actix_web::http::header::UPGRADE, "websocket")
        && has(actix_web::http::header::CONNECTION, "upgrade")
}

/// Opens the API's side of the WebSocket with the token, then answers the page's handshake and
/// relays messages until either side closes.
async fn open_websocket(
    req: &HttpRequest,
    payload: web::Payload,
    url: url::Url,
    caller: &Caller<'_>,
    token: &str,
    settings: &ProxySettings,
) -> Result<HttpResponse, ApiError> {
    let protocols = req
        .headers()
        .get(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    // The page's handshake is checked (key, version) before the API is contacted with the token.
    let (mut response, session, from_page) = actix_ws::handle(req, payload)
        .map_err(|_| ApiError::InvalidRequest("not a WebSocket handshake this server can accept".into()))?;
    let (api, chosen) = websocket::connect(url, token, caller, protocols, settings.timeout)
        .await
        .map_err(|error| ApiError::Api(ForwardError::WebSocket(Box::new(error))))?;
    if let Some(chosen) = chosen.and_then(|c| actix_web::http::header::HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL, chosen);
    }
    actix_web::rt::spawn(websocket::relay(api, session, from_page));
    Ok(response)
}

/// The path after `/v1/proxy/<name>`, as the client sent it (percent-encoded), if it is safe.
fn proxied_path(req: &HttpRequest) -> Option<ProxyPath> {
    let raw = req.uri().path().strip_prefix("/v1/proxy/")?;
    let tail = raw.find('/').map_or("", |at| &raw[at..]);
    ProxyPath::parse(tail).ok()
}

/// How a request's body is forwarded, decided from its headers alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// No `Content-Length` (or 0) and not chunked.
    Empty,
    /// Declared small enough to read whole, so it can be sent again after the token is replaced.
    Replayable,
    /// Larger, or of unknown length: streamed through once.
    Streamed,
}

/// The request's [`BodyKind`]; 413 when it declares more than `max` bytes.
fn body_kind(req: &HttpRequest, max: u64) -> Result<BodyKind, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(ApiError::BodyTooLarge);
    }
    Ok(match declared {
        None if !req.headers().contains_key(TRANSFER_ENCODING) => BodyKind::Empty,
        Some(0) => BodyKind::Empty,
        Some(len) if len <= REPLAYABLE_BODY_BYTES => BodyKind::Replayable,
        _ => BodyKind::Streamed,
    })
}

/// The body to forward: read whole when replayable, else streamed through a bounded channel
/// (back-pressure) with the cap enforced as it flows.
async fn request_body(
    kind: BodyKind,
    mut payload: web::Payload,
    max: u64,
    timeout: std::time::Duration,
    too_large: Arc<AtomicBool>,
    bytes_in: prometheus_client::metrics::counter::Counter,
) -> Result<Body, ApiError> {
    match kind {
        BodyKind::Empty => return Ok(Body::Empty),
        BodyKind::Replayable => {
            // A caller that declares a body and sends it slowly must not hold the request open
            // past the upstream's own time limit.
            let read = async {
                let mut body = web::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk =
                        chunk.map_err(|_| ApiError::InvalidRequest("the request body could not be read".into()))?;
                    if (body.len() + chunk.len()) as u64 > max {
                        return Err(ApiError::BodyTooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            };
            let body = tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ApiError::InvalidRequest("the request body did not arrive in time".into()))??;
            bytes_in.inc_by(body.len() as u64);
            return Ok(Body::Buffered(body.freeze()));
        }
        BodyKind::Streamed => {}
    }
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
    // The payload lives on this worker's thread; a local task hands its chunks to the request.
    actix_web::rt::spawn(async move {
        let mut total = 0u64;
        while let Some(chunk) = payload.next().await {
            let item = match chunk {
                Ok(bytes) => {
                    total += bytes.len() as u64;
                    bytes_in.inc_by(bytes.len() as u64);
                    if total > max {
                        too_large.store(true, Ordering::Relaxed);
                        Err(std::io::Error::other("the request body is over the limit"))
                    } else {
                        Ok(bytes)
                    }
                }
                Err(_) => Err(std::io::Error::other("the caller's body broke off")),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(Body::Streaming(Box::new(Chunks(rx))))
}

/// A streamed body's chunks as they arrive from the caller.
struct Chunks(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A new token for `scopes` in place of `rejected`, as a report of a rejected token would get one
/// (paced by the token's life and the caller's own limit); `None` when it is not replaced.
async fn replacement(
    broker: &Broker,
    upstream: &Arc<Upstream>,
    scopes: &crate::scope::ScopeSet,
    rejected: &str,
    state: &crate::state::AppState,
    identity: &crate::identity::Identity,
) -> Option<Arc<CachedToken>> {
    let may_replace = || state.refresh_limit.check(&identity.authenticator, &identity.subject);
    let served = broker
        .tokens
        .replace_rejected(upstream, scopes, rejected, may_replace)
        .await
        .ok()?;
    (served.token.access_token.expose_secret() != rejected).then_some(served.token)
}

/// The API's answer as the browser gets it: its status, its headers but those never returned, and
/// its body: read whole when it is small (no streaming machinery for a short JSON answer), else
/// streamed through. Either way counted for the metrics, and cut off at the exchange's deadline.
async fn answer_of(answer: Answer, upstream: &Upstream) -> Result<HttpResponse, ApiError> {
    let Answer { response, deadline } = answer;
    let (head, body) = response.into_parts();
    let status = StatusCode::from_u16(head.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer = HttpResponse::build(status);
    let connection = connection_names(&head.headers);
    for (name, value) in &head.headers {
        if returned(name, &connection) {
            if let Ok(value) = actix_web::http::header::HeaderValue::from_bytes(value.as_bytes()) {
                answer.append_header((name.as_str(), value));
            }
        }
    }
    let counter = upstream.proxy_metrics.bytes_out.clone();
    let length = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(length) if length <= REPLAYABLE_BODY_BYTES => {
            let body = tokio::time::timeout_at(deadline, body.collect())
                .await
                .map_err(|_| ApiError::Api(ForwardError::Timeout))?
                .map_err(|error| ApiError::Api(ForwardError::Broken(error)))?
                .to_bytes();
            counter.inc_by(body.len() as u64);
            Ok(answer.body(body))
        }
        length => {
            let body = Relay::start(body, deadline, counter);
            Ok(match length {
                Some(length) => answer.body(SizedStream::new(length, body)),
                None => answer.body(BodyStream::new(body)),
            })
        }
    }
}

/// The API's body as it arrives, counted, and ended with an error at the exchange's deadline
/// (the browser's connection is then closed: its answer is incomplete). A task of its own reads
/// the API against the deadline: the browser's side polls only as fast as the browser reads, and a
/// slow reader must not hold the API's connection past the deadline.
struct Relay {
    chunks: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    timed_out: Arc<AtomicBool>,
    counter: prometheus_client::metrics::counter::Counter,
}

impl Relay {
    fn start(
        body: Incoming,
        deadline: tokio::time::Instant,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let (tx, chunks) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
        let timed_out = Arc::new(AtomicBool::new(false));
        let flag = timed_out.clone();
        actix_web::rt::spawn(async move {
            let pump = async {
                let mut body = body;
                while let Some(frame) = body.frame().await {
                    let item = match frame {
                        // Trailers are not passed on.
                        Ok(frame) => match frame.into_data() {
                            Ok(data) => Ok(data),
                            Err(_) => continue,
                        },
                        Err(error) => Err(std::io::Error::other(error)),
                    };
                    let stop = item.is_err();
                    // The browser went away, or the API's body broke off.
                    if tx.send(item).await.is_err() || stop {
                        return;
                    }
                }
            };
            // Past the deadline the API's body (and so its connection) is dropped; the flag is set
            // before the channel closes, so the browser's side reads it as an error, never as an end.
            if tokio::time::timeout_at(deadline, pump).await.is_err() {
                flag.store(true, Ordering::Release);
            }
            drop(tx);
        });
        Self {
            chunks,
            timed_out,
            counter,
        }
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.counter.inc_by(data.len() as u64);
                Poll::Ready(Some(Ok(data)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) if self.timed_out.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err(std::io::Error::other(ForwardError::Timeout))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
