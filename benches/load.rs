//! The broker's warm paths against nginx returning the same JSON from memory, under wrk at 64
//! connections, interleaved; plus the cold stampede and memory after 10,000 distinct JWT users.
//! A third reference, the "actix-web floor", is this bench's own binary serving the same JSON from
//! a one-route actix-web app: what the HTTP server the broker is built on costs before the broker
//! does anything. Run with `cargo bench --bench load` (needs nginx and wrk; scripts/bench installs
//! them).
//! Prints figures; asserts nothing.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpResponse, HttpServer};
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::{
    broker, free_port, nginx, print_table, rotated, rss_kib, stand_in, wait_for_port, workers, workers_of, wrk,
    Figures, Killed,
};

const API_KEY: &str = "bench-api-key";
use support::{CONNECTIONS, ROUND, ROUNDS};
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The app's identity side: OIDC discovery and JWKS (the fixture Ed25519 key), and a session endpoint.
fn identity_stand_in() -> (String, actix_web::dev::ServerHandle) {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let jwk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/ed25519.jwk.json")).unwrap()).unwrap();
    let discovery = serde_json::json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") });
    let server = HttpServer::new(move || {
        let (discovery, jwks) = (discovery.clone(), serde_json::json!({ "keys": [jwk.clone()] }));
        App::new()
            .route(
                "/.well-known/openid-configuration",
                web::get().to(move || {
                    let body = discovery.clone();
                    async move { HttpResponse::Ok().json(body) }
                }),
            )
            .route(
                "/jwks",
                web::get().to(move || {
                    let body = jwks.clone();
                    async move { HttpResponse::Ok().json(body) }
                }),
            )
            .route(
                "/session",
                web::get().to(|| async { HttpResponse::Ok().json(serde_json::json!({"sub": "bench"})) }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", port))
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (issuer, handle)
}

fn id_token(issuer: &str, sub: &str) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/ed25519.pem")).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed25519".into());
    let claims = serde_json::json!({"iss": issuer, "aud": "bench-app", "sub": sub, "iat": now(), "exp": now() + 3600});
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap()
}

fn broker_config(port: u16, admin: u16, token_url: &str, issuer: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = {workers}
# One identity drives the whole load: the limit stays on (its cost is measured) but never bites.
rate_limit_per_second = 1000000
rate_limit_burst = 1000000

[upstreams.bench]
token_url = "{token_url}"
client_id = "bench"
client_secret = "bench-secret"
scopes = ["reports:read"]

[[authenticators]]
type = "api_key"
keys = [{{ id = "bench", hash = "{hash}", subject = "bench" }}]

[[authenticators]]
type = "jwt"
issuer = "{issuer}"
audiences = ["bench-app"]

[[authenticators]]
type = "forward"
url = "{issuer}/session"
forward_cookies = ["app_session"]

[[grants]]
authenticators = ["api_key", "jwt", "forward"]
subjects = ["*"]
upstreams = {{ bench = ["reports:read"] }}
"#,
        hash = token_broker::identity::hash_key(API_KEY),
        workers = workers(),
    )
}

/// Set in the environment of this bench's own child process: serve the floor on this port.
const FLOOR_PORT: &str = "TOKEN_BROKER_BENCH_FLOOR_PORT";
const FLOOR_BODY: &str = "TOKEN_BROKER_BENCH_FLOOR_BODY";

fn main() {
    match (std::env::var(FLOOR_PORT), std::env::var(FLOOR_BODY)) {
        (Ok(port), Ok(body)) => serve_floor(port.parse().expect("a port"), body),
        _ => tokio::runtime::Runtime::new().unwrap().block_on(run()),
    }
}

/// The actix-web floor: the broker's answer from memory, with the headers nginx adds, one route.
fn serve_floor(port: u16, body: String) {
    let body = web::Bytes::from(body);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let body = body.clone();
            App::new().route(
                "/v1/token/{upstream}",
                web::get().to(move || {
                    let body = body.clone();
                    async move {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .insert_header(("Cache-Control", "no-store"))
                            .body(body)
                    }
                }),
            )
        })
        .workers(workers())
        .disable_signals()
        .bind(("127.0.0.1", port))
        .unwrap()
        .run()
        .await
        .unwrap()
    })
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, _identity) = identity_stand_in();
    let counter = Arc::new(AtomicU64::new(0));
    let (token_url, _upstream) = stand_in(counter.clone(), 3600, Duration::ZERO);
    let (port, admin) = (free_port(), free_port());
    let broker_process = broker(
        dir.path(),
        "broker",
        &broker_config(port, admin, &token_url, &issuer),
        port,
        "info",
    );
    let url = format!("http://127.0.0.1:{port}/v1/token/bench");
    let jwt = id_token(&issuer, "bench-user");

    // Warm every path once, and take the broker's answer as nginx's body.
    let client = reqwest::Client::new();
    let body = client
        .get(&url)
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for headers in [
        vec![("Authorization", format!("Bearer {jwt}"))],
        vec![
            ("Cookie", "app_session=bench".to_string()),
            ("X-Requested-With", "bench".to_string()),
        ],
    ] {
        let mut request = client.get(&url);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        assert!(request.send().await.unwrap().status().is_success());
    }
    let nginx_port = free_port();
    let nginx_process = nginx(
        dir.path(),
        "static",
        nginx_port,
        &format!(
            r#"server {{
        listen 127.0.0.1:{nginx_port};
        location / {{
            default_type application/json;
            add_header Cache-Control no-store;
            return 200 '{body}';
        }}
    }}"#
        ),
    );
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/v1/token/bench");
    let floor_port = free_port();
    let floor = Killed(
        std::process::Command::new(std::env::current_exe().unwrap())
            .env(FLOOR_PORT, floor_port.to_string())
            .env(FLOOR_BODY, &body)
            .spawn()
            .unwrap(),
    );
    wait_for_port(floor_port);
    let floor_url = format!("http://127.0.0.1:{floor_port}/v1/token/bench");
    // The process whose CPU time each case is charged: nginx's one worker, the broker itself.
    let nginx_workers = workers_of(&nginx_process);
    let broker_pid = vec![broker_process.0.id()];

    let cases: Vec<(&str, String, Vec<String>, Vec<u32>)> = vec![
        ("nginx static", nginx_url.clone(), vec![], nginx_workers),
        ("actix-web floor", floor_url, vec![], vec![floor.0.id()]),
        (
            "API key",
            url.clone(),
            vec![format!("X-API-Key: {API_KEY}")],
            broker_pid.clone(),
        ),
        (
            "JWT (id_token)",
            url.clone(),
            vec![format!("Authorization: Bearer {jwt}")],
            broker_pid.clone(),
        ),
        (
            "forward-auth cookie",
            url.clone(),
            vec![
                "Cookie: app_session=bench".to_string(),
                "X-Requested-With: bench".to_string(),
            ],
            broker_pid,
        ),
    ];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
    // Interleaved rounds, so drift in the machine's speed hits every case alike.
    for round in 0..ROUNDS {
        for i in rotated(cases.len(), round) {
            let (_, url, headers, server) = &cases[i];
            runs[i].push(wrk(url, headers, server));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "warm paths: wrk -t1 -c{CONNECTIONS} -d{ROUND}, {ROUNDS} interleaved rounds (medians), broker and nginx with {} worker(s) each, {cores} cores, broker logging at info",
        workers()
    );
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    print_table(&names, &runs, 0, "nginx", "server");

    // Memory: 10,000 distinct JWT users, each verified once, then held in the verified-token cache.
    let tokens: Vec<String> = (0..10_000).map(|n| id_token(&issuer, &format!("user-{n}"))).collect();
    let before = rss_kib(broker_process.0.id());
    for chunk in tokens.chunks(64) {
        let requests = chunk.iter().map(|t| client.get(&url).bearer_auth(t).send());
        for response in join_all(requests).await {
            assert!(response.unwrap().status().is_success());
        }
    }
    let after = rss_kib(broker_process.0.id());
    println!();
    println!(
        "memory: RSS {:.1} MiB before, {:.1} MiB after 10,000 distinct JWT users",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    drop(broker_process);

    // Cold stampede: 1,000 concurrent first requests against a fresh broker and a slow endpoint.
    let cold_counter = Arc::new(AtomicU64::new(0));
    let (cold_url, _cold_upstream) = stand_in(cold_counter.clone(), 3600, Duration::from_millis(200));
    let (port, admin) = (free_port(), free_port());
    let _cold = broker(
        dir.path(),
        "cold",
        &broker_config(port, admin, &cold_url, &issuer),
        port,
        "warn",
    );
    let url = format!("http://127.0.0.1:{port}/v1/token/bench");
    let stampede = (0..1000).map(|_| client.get(&url).header("X-API-Key", API_KEY).send());
    let ok = join_all(stampede)
        .await
        .into_iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status().is_success()))
        .count();
    println!(
        "cold stampede: 1,000 concurrent first requests, {ok} answered 200, {} upstream request(s)",
        cold_counter.load(Ordering::SeqCst)
    );
}
