//! `GET|POST /v1/token/{upstream}`: who is calling → what they may get → the cached token.

use crate::telemetry::audit::TokenServed;
use crate::telemetry::traces;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use opentelemetry::trace::SpanKind;
use serde::Deserialize;

use crate::http::errors::ApiError;
use crate::http::headers::{put_no_store, with_no_store};
use crate::http::observe::{state_of, RequestId};
use crate::policy::Denied;
use crate::routes::common::{authenticate, read_body, upstream_name};
use crate::scope::{parse_scope_param, ScopeSet};
use crate::state::{AppState, Broker};
use crate::tokens::ReplaceError;
use crate::upstream::UpstreamError;

/// The token routes of the upstreams named when the app is built: each gets a route of its own,
/// a fixed path that actix-web matches by comparing text. [`general`] serves the others.
pub fn fixed(cfg: &mut web::ServiceConfig, upstreams: &[String]) {
    for name in upstreams {
        cfg.service(web::resource(format!("{PREFIX}{name}")).name(ROUTE).to(token));
    }
}

/// The token routes with an `{upstream}` segment, which actix-web matches with a regular
/// expression (on a warm request, that cost about 4% of the broker's instructions): they serve the
/// upstreams a reload adds; the name of one a reload removes finds no upstream, as on a fixed route.
///
/// The routes are the app's own, not a scope's, and put the no-store headers on their answers
/// themselves: a scope and its middleware were two more layers for every request to pass.
pub fn general(cfg: &mut web::ServiceConfig) {
    cfg.service(
        // One handler that looks at the method itself: actix-web's method guards record
        // every guard they try in the request (an allocation and an extension each).
        web::resource(ROUTE).name(ROUTE).to(token),
    )
    .service(
        web::resource("/v1/token/{upstream}/refresh")
            .name("/v1/token/{upstream}/refresh")
            .default_service(web::to(refresh)),
    );
}

const PREFIX: &str = "/v1/token/";
/// The token route's pattern, and its name: the `route` label of its metric.
const ROUTE: &str = "/v1/token/{upstream}";

/// The `scope` parameter, from the query or a form/JSON body, and on the refresh route the
/// `access_token` the API rejected; other fields are ignored.
#[derive(Deserialize, Default)]
struct ScopeParam {
    scope: Option<String>,
    access_token: Option<String>,
}

async fn token(req: HttpRequest, payload: web::Payload, broker: web::Data<Broker>) -> HttpResponse {
    let answer = match *req.method() {
        Method::GET => get_token(req, broker).await,
        Method::POST => post_token(req, payload, broker).await,
        _ => Err(ApiError::MethodNotAllowed("GET, POST")),
    };
    // A token's answer has the no-store headers already (see `serve`); an error's are added.
    answer.unwrap_or_else(|error| with_no_store(error.error_response()))
}

/// `POST /v1/token/{upstream}/refresh`; other methods are answered 405.
async fn refresh(req: HttpRequest, payload: web::Payload, broker: web::Data<Broker>) -> HttpResponse {
    let answer = match *req.method() {
        Method::POST => post_refresh(req, payload, broker).await,
        _ => Err(ApiError::MethodNotAllowed("POST")),
    };
    // A token's answer has the no-store headers already (see `serve`); an error's are added.
    answer.unwrap_or_else(|error| with_no_store(error.error_response()))
}

async fn get_token(req: HttpRequest, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    let param: ScopeParam = serde_urlencoded::from_str(req.query_string())
        .map_err(|_| ApiError::InvalidRequest("the query string could not be read".into()))?;
    serve(&req, Requested::Param(param), Mode::Current, &broker).await
}

async fn post_token(
    req: HttpRequest,
    payload: web::Payload,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    serve(&req, Requested::Body(payload), Mode::Current, &broker).await
}

/// `POST /v1/token/{upstream}/refresh` with `{"access_token": "<rejected>"}`.
async fn post_refresh(
    req: HttpRequest,
    payload: web::Payload,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    serve(&req, Requested::Body(payload), Mode::ReplaceRejected, &broker).await
}

/// Whether the caller reports the current token as rejected by the API.
#[derive(PartialEq, Eq)]
enum Mode {
    Current,
    ReplaceRejected,
}

/// Where the requested scope comes from; a body is read only once the caller is authenticated.
enum Requested {
    Param(ScopeParam),
    Body(web::Payload),
}

async fn serve(req: &HttpRequest, requested: Requested, mode: Mode, broker: &Broker) -> Result<HttpResponse, ApiError> {
    let state = state_of(req, broker);
    let identity = authenticate(req, &state).await?;
    // Borrowed rather than extracted into a new String.
    let upstream = state
        .upstreams
        .get(upstream_name(req, PREFIX))
        .ok_or(ApiError::UnknownUpstream)?;
    if !upstream.settings.expose_tokens {
        return Err(ApiError::AccessDenied(Denied::TokensNotExposed));
    }
    let param = match requested {
        Requested::Param(param) => param,
        // Boxed, as the rare paths below: inlined, their state would be moved with every warm
        // request's future (which was 3.9 KB that way, against a few hundred bytes now).
        Requested::Body(payload) => Box::pin(param_of_post(req, payload, &state)).await?,
    };
    let rejected =
        match mode {
            Mode::Current => None,
            Mode::ReplaceRejected => Some(param.access_token.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
                ApiError::InvalidRequest("access_token, the token the API rejected, is required".into())
            })?),
        };

    let requested_scopes = requested_scopes(param)?;
    let entitlement = state.policy.entitle(&identity, upstream.name(), requested_scopes)?;

    let served = match &rejected {
        None => traces::in_span(
            "cache",
            SpanKind::Internal,
            broker.tokens.get(upstream, &entitlement.scopes),
        )
        .await
        .inspect_err(|error| log_exchange_failure(req, upstream.name(), error))?,
        Some(rejected) => {
            // A report that replaces the token costs an upstream fetch: each caller may start only a few.
            let may_replace = || state.refresh_limit.check(&identity.authenticator, &identity.subject);
            let replaced = broker
                .tokens
                .replace_rejected(upstream, &entitlement.scopes, rejected, may_replace);
            Box::pin(traces::in_span("cache", SpanKind::Internal, replaced))
                .await
                .inspect_err(|error| {
                    if let ReplaceError::Upstream(error) = error {
                        log_exchange_failure(req, upstream.name(), error)
                    }
                })?
        }
    };
    upstream.served_metrics.served(served.cache_hit);
    RequestId::with(req, |request_id| {
        TokenServed {
            request_id,
            authenticator: &identity.authenticator,
            subject: &identity.subject,
            upstream: upstream.name(),
            // The served token's key is these scopes: its copy of them, joined once, is written.
            scopes: served.token.answer.requested(),
            cache_hit: served.cache_hit,
            token_fingerprint: served.token.answer.fingerprint(),
        }
        .log()
    });
    let json = served.token.answer.body(served.expires_in.as_secs(), served.expires_at);
    let mut response = HttpResponse::Ok().body(json);
    put_no_store(response.headers_mut());
    Ok(response)
}

/// The parameters of a POST: the body's, with a `scope` in the query counting as in the body.
async fn param_of_post(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Result<ScopeParam, ApiError> {
    let mut param = parse_body(
        req,
        read_body(req, payload, state.settings.server.max_body_bytes).await?,
    )?;
    // A `scope` in the query of a POST counts as in the body: ignoring it would answer
    // for the whole grant where the caller asked for less.
    let query: ScopeParam = serde_urlencoded::from_str(req.query_string())
        .map_err(|_| ApiError::InvalidRequest("the query string could not be read".into()))?;
    match (&param.scope, query.scope) {
        (Some(body), Some(query)) if *body != query => {
            return Err(ApiError::InvalidRequest(
                "scope is given twice, differently, in the query and the body".into(),
            ))
        }
        (None, query) => param.scope = query,
        _ => {}
    }
    Ok(param)
}

fn log_exchange_failure(req: &HttpRequest, upstream: &str, error: &UpstreamError) {
    RequestId::with(req, |request_id| {
        if error.is_refusal() {
            // The broker's configuration (secret, scopes) and the server's disagree: an operator must act.
            tracing::error!(
                request_id,
                upstream,
                error = %error,
                oauth_error = error.oauth_error(),
                "the token endpoint refused the broker's request or granted more than it asked"
            );
        } else {
            tracing::warn!(request_id, upstream, error = %error, "token exchange failed");
        }
    });
}

fn requested_scopes(param: ScopeParam) -> Result<Option<ScopeSet>, ApiError> {
    match param.scope {
        None => Ok(None),
        Some(text) => parse_scope_param(&text)
            .map(Some)
            .map_err(|e| ApiError::InvalidRequest(format!("malformed scope: {e}"))),
    }
}

fn parse_body(req: &HttpRequest, body: web::BytesMut) -> Result<ScopeParam, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ScopeParam::default());
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => {
            serde_json::from_slice(&body).map_err(|_| ApiError::InvalidRequest("the JSON body is malformed".into()))
        }
        "application/x-www-form-urlencoded" => serde_urlencoded::from_bytes(&body)
            .map_err(|_| ApiError::InvalidRequest("the form body is malformed".into())),
        _ => Err(ApiError::InvalidRequest(
            "send the body as application/x-www-form-urlencoded or application/json".into(),
        )),
    }
}
