//! `token-broker demo`: the broker, an in-process stand-in token endpoint and a demo API key,
//! all on loopback, so the whole path can be tried with one curl line and no setup.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::dev::Server;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use rand::RngCore;

use crate::identity::hash_key;
use crate::settings::{Env, Settings};

pub const DEMO_API_KEY: &str = "demo-api-key";
const CLIENT_ID: &str = "demo-client";
/// Short, so caching is visible: served for 45 s (60 s less a quarter), then fetched again.
const TOKEN_LIFETIME_SECS: u64 = 60;

/// The stand-in token endpoint: checks the client credentials and issues random opaque tokens.
pub struct StandIn {
    pub url: String,
    pub server: Server,
}

struct StandInState {
    client_secret: String,
    issued: AtomicU64,
}

pub fn start_stand_in(client_secret: String) -> std::io::Result<StandIn> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/token", listener.local_addr()?);
    let state = web::Data::new(StandInState {
        client_secret,
        issued: AtomicU64::new(0),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/token", web::post().to(issue))
    })
    .workers(1)
    .listen(listener)?
    .run();
    Ok(StandIn { url, server })
}

async fn issue(
    req: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
    state: web::Data<StandInState>,
) -> HttpResponse {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let credentials = basic_credentials(&req).or_else(|| Some((field("client_id")?, field("client_secret")?)));
    let authenticated = credentials.is_some_and(|(id, secret)| id == CLIENT_ID && secret == state.client_secret);
    if !authenticated {
        return HttpResponse::Unauthorized().json(serde_json::json!({"error": "invalid_client"}));
    }
    if field("grant_type").as_deref() != Some("client_credentials") {
        return HttpResponse::BadRequest().json(serde_json::json!({"error": "unsupported_grant_type"}));
    }
    let number = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    tracing::info!(number, "stand-in token endpoint issued a token");
    let mut token = [0u8; 24];
    rand::rng().fill_bytes(&mut token);
    HttpResponse::Ok().json(serde_json::json!({
        "access_token": format!("demo-{}", hex::encode(token)),
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECS,
        "scope": field("scope").unwrap_or_default(),
    }))
}

/// RFC 6749 §2.3.1: Basic credentials are form-urlencoded before base64.
fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

/// The demo's settings: one upstream `demo` at the stand-in, one API key, one grant.
pub fn settings(token_url: &str, client_secret: &str, listen: SocketAddr, admin_listen: SocketAddr) -> Settings {
    let text = format!(
        r#"
        [server]
        listen = "{listen}"
        admin_listen = "{admin_listen}"
        workers = 2

        [cache]
        refresh_skew = "60s"

        [upstreams.demo]
        token_url = "{token_url}"
        client_id = "{CLIENT_ID}"
        client_secret = {{ env = "DEMO_CLIENT_SECRET" }}
        auth_method = "client_secret_basic"
        scopes = ["read", "write"]

        [[authenticators]]
        type = "api_key"
        keys = [{{ id = "demo", hash = "{hash}", subject = "demo-user" }}]

        [[grants]]
        subjects = ["demo-user"]
        upstreams = {{ demo = ["read", "write"] }}
        "#,
        hash = hash_key(DEMO_API_KEY),
    );
    let env: Env = [("DEMO_CLIENT_SECRET".to_string(), client_secret.to_string())].into();
    Settings::from_toml(&text, &env).expect("the demo settings are valid")
}

/// `preferred` when it is free, else any free loopback port.
pub fn free_address(preferred: SocketAddr) -> SocketAddr {
    match TcpListener::bind(preferred) {
        Ok(_) => preferred,
        Err(_) => SocketAddr::new(preferred.ip(), 0),
    }
}

pub fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
