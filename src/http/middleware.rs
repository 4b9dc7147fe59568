//! The middleware every public request passes, [`Front`]: in this order, the request id, client
//! address, access line and metric (see [`crate::http::observe`]), CORS (see
//! [`crate::http::cors`]) and the header size limit (see [`crate::http::limits`]). They are one
//! middleware, not three, because each layer of actix-web's `from_fn` boxes the service within
//! and the future it returns: on the token route, three layers cost about as much as the
//! handler's own work. The configuration snapshot is taken once, here, and kept in the request
//! for the routes (see [`super::observe::state_of`]): all agree on one configuration.

use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use futures_util::future::LocalBoxFuture;
use opentelemetry::context::FutureExt as _;
use tracing::Instrument;

use super::cors::PREFLIGHT_MAX_AGE;
use super::errors::ApiError;
use super::headers::with_no_store;
use super::limits::header_bytes;
use super::observe::{usable_request_id, ClientAddress, ClientIp, Observed, RequestId, REQUEST_ID};
use crate::state::{AppState, Broker};
use crate::telemetry::traces;

/// The broker the app was built with; an app without one is a wiring mistake, answered 500.
fn broker_of(req: &ServiceRequest) -> Result<web::Data<Broker>, actix_web::Error> {
    req.app_data::<web::Data<Broker>>()
        .cloned()
        .ok_or_else(|| actix_web::error::ErrorInternalServerError("the broker is not registered"))
}

/// The public app's middleware (`App::new().wrap(Front)`).
pub struct Front;

impl<S, B> Transform<S, ServiceRequest> for Front
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = FrontService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(FrontService {
            service: Rc::new(service),
        }))
    }
}

pub struct FrontService<S> {
    service: Rc<S>,
}

impl<S, B> Service<ServiceRequest> for FrontService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        Box::pin(observe(req, Rc::clone(&self.service)))
    }
}

/// One request id per request, the access line and the HTTP metric (see [`crate::http::observe`]).
async fn observe<S, B>(req: ServiceRequest, service: Rc<S>) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let broker = broker_of(&req)?;
    let state = broker.state();
    let scheme = if req.app_config().secure() { "https" } else { "http" };
    let client = state
        .trusted_proxies
        .client(req.peer_addr().map(|a| a.ip()), scheme, req.headers());
    let request_id = client
        .via_trusted_proxy
        .then(|| req.headers().get(REQUEST_ID).and_then(usable_request_id))
        .flatten()
        .unwrap_or_else(RequestId::generate);
    let span = tracing::debug_span!("request", request_id = request_id.as_str());
    let method = req.method().clone();
    // Only the access line (debug level) needs the path: copy it only when that line is on.
    let path = tracing::enabled!(target: "token_broker::access", tracing::Level::DEBUG).then(|| req.path().to_string());
    actix_web::HttpMessage::extensions_mut(&req).insert(Observed {
        id: request_id,
        address: ClientAddress {
            ip: client.ip,
            scheme: client.scheme,
        },
        state: Arc::clone(&state),
    });

    // Only the access line needs the request's duration.
    let started = path.is_some().then(Instant::now);
    // With traces on, the request runs in its span's context (a child of a trusted proxy's
    // `traceparent`); with them off, nothing is made.
    let trace = broker
        .tracing
        .as_ref()
        .map(|tracing| tracing.request_context(req.headers(), client.via_trusted_proxy, method.as_str()));
    let mut response = match &trace {
        None => answer(req, &state, &service).instrument(span.clone()).await?,
        Some(cx) => {
            answer(req, &state, &service)
                .instrument(span.clone())
                .with_context(cx.clone())
                .await?
        }
    };
    let status = response.status().as_u16();
    // Resources are named after their pattern: the label is known after routing, unallocated.
    let route = response.request().match_name().unwrap_or("unmatched");
    broker.metrics.request(route, status);
    if let Some(cx) = &trace {
        traces::finish_request(cx, method.as_str(), route, status);
    }
    // The id goes back out of the request onto the answer: moved, not copied.
    let observed = actix_web::HttpMessage::extensions_mut(response.request()).remove::<Observed>();
    span.in_scope(|| {
        tracing::debug!(
            target: "token_broker::access",
            request_id = observed.as_ref().map_or("", |o| o.id.as_str()),
            method = %method,
            path = path.as_deref().unwrap_or_default(),
            client_ip = %ClientIp(client.ip),
            scheme = %client.scheme,
            route,
            status,
            latency_ms = started.map_or(0.0, |started| started.elapsed().as_secs_f64() * 1000.0),
            "request"
        );
    });
    if let Some(observed) = observed {
        response.headers_mut().insert(REQUEST_ID, observed.id.0);
    }
    Ok(response)
}

/// CORS on every answer, errors included (see [`crate::http::cors`]); within it, the header size
/// limit: 431 past `server.max_header_bytes` (see [`crate::http::limits`]), then the routes.
async fn answer<S, B>(
    req: ServiceRequest,
    state: &AppState,
    service: &S,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let policy = &state.cors;
    let allowed = policy.allowed(req.headers().get(header::ORIGIN)).cloned();

    let is_preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if is_preflight {
        let mut response = HttpResponse::NoContent();
        response.insert_header((header::VARY, "Origin"));
        if let Some(origin) = allowed {
            response
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
                .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, policy.allow_methods.clone()))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    policy.allow_headers_for(req.path(), req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS)),
                ))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE));
        }
        return Ok(req.into_response(response.finish()).map_into_right_body());
    }

    let limit = state.settings.server.max_header_bytes;
    let mut response = if limit != 0 && header_bytes(req.headers()) > limit {
        // Answered before any route, so with the headers of the token routes' answers (harmless
        // on any other path's error).
        let answer = with_no_store(actix_web::ResponseError::error_response(&ApiError::HeadersTooLarge));
        req.into_response(answer).map_into_right_body()
    } else {
        service.call(req).await?.map_into_left_body()
    };
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After, X-Request-Id, X-Token-Broker-Error"),
        );
    }
    Ok(response)
}
