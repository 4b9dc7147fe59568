//! `POST /v1/public-tokens`: the app's backend mints a scoped, short-lived token for its browser;
//! `GET /.well-known/jwks.json`: the keys that verify those tokens.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::http::errors::ApiError;
use crate::http::headers::no_store;
use crate::http::observe::{state_of, RequestId};
use crate::identity::{Identity, Method};
use crate::policy::Denied;
use crate::public_tokens::{expiration, TokenScopes};
use crate::routes::common::{authenticate, read_body};
use crate::scope::{parse_scope_param, ScopeSet};
use crate::state::{AppState, Broker};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/public-tokens")
            .name("/v1/public-tokens")
            .wrap(no_store())
            .route(web::post().to(mint))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ApiError::MethodNotAllowed("POST"))
            })),
    )
    .service(
        web::resource("/.well-known/jwks.json")
            .name("/.well-known/jwks.json")
            .route(web::get().to(jwks)),
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    subject: String,
    #[serde(default)]
    scopes: Option<RequestedScopes>,
    #[serde(rename = "expirationTime", default)]
    expiration_time: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequestedScopes {
    #[serde(default)]
    upstreams: BTreeMap<String, ScopeRequest>,
}

/// `true`: everything the minter may grant for the upstream; a list narrows it.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeRequest {
    All(bool),
    List(Vec<String>),
}

async fn mint(req: HttpRequest, payload: web::Payload, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    let state = state_of(&req, &broker);
    let (Some(tokens), Some(settings)) = (&state.public_tokens, &state.settings.public_tokens) else {
        return Err(ApiError::NotConfigured("public tokens are not configured"));
    };
    let minter = authenticate(&req, &state).await?;
    // Public tokens never mint: a holder must not extend its own life or rights.
    let may_mint = settings
        .mint_authenticators
        .iter()
        .any(|n| **n == *minter.authenticator)
        && settings.mint_subjects.contains(&minter.subject);
    if minter.method == Method::PublicToken || !may_mint {
        return Err(ApiError::AccessDenied(Denied::NotAMinter));
    }
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let request: MintRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("the JSON body is not a mint request: {e}")))?;
    if request.subject.trim().is_empty() || request.subject.len() > 256 {
        return Err(ApiError::InvalidRequest("subject must be 1 to 256 characters".into()));
    }
    let scopes = resolve_scopes(&state, &minter, request.scopes.unwrap_or_default())?;
    let now = broker.clock().unix_now();
    let exp = expiration(
        request.expiration_time.as_ref(),
        now,
        settings.default_expiration,
        settings.max_expiration,
    )
    .map_err(ApiError::InvalidRequest)?;
    let (token, expires_at) = tokens
        .mint(&request.subject, scopes, now, std::time::Duration::from_secs(exp - now))
        .ok_or(ApiError::Internal("the token could not be signed"))?;
    RequestId::with(&req, |request_id| {
        tracing::info!(
            target: "token_broker::audit",
            request_id,
            minter_authenticator = &*minter.authenticator,
            minter = %minter.subject,
            subject = %request.subject,
            expires_at,
            "public token minted"
        )
    });
    Ok(HttpResponse::Ok().json(serde_json::json!({ "token": token, "expires_at": expires_at })))
}

/// Each upstream's scopes, never beyond what the minter itself is granted.
fn resolve_scopes(state: &AppState, minter: &Identity, requested: RequestedScopes) -> Result<TokenScopes, ApiError> {
    let mut upstreams = BTreeMap::new();
    for (name, request) in requested.upstreams {
        if !state.upstreams.contains_key(&name) {
            return Err(ApiError::InvalidRequest(format!("no upstream named `{name}`")));
        }
        let wanted: Option<ScopeSet> = match request {
            ScopeRequest::All(false) => continue,
            ScopeRequest::All(true) => None,
            ScopeRequest::List(list) => Some(
                parse_scope_param(&list.join(" "))
                    .map_err(|e| ApiError::InvalidRequest(format!("malformed scope for `{name}`: {e}")))?,
            ),
        };
        let entitlement = state.policy.entitle(minter, &name, wanted)?;
        let scopes = entitlement.scopes.iter().map(|s| s.as_str().to_string()).collect();
        upstreams.insert(name, scopes);
    }
    Ok(TokenScopes { upstreams })
}

async fn jwks(broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    let state = broker.state();
    let tokens = state
        .public_tokens
        .as_ref()
        .ok_or(ApiError::NotConfigured("public tokens are not configured"))?;
    Ok(HttpResponse::Ok()
        .content_type("application/jwk-set+json")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(tokens.jwks()))
}
