//! The broker's warm paths against nginx returning the same JSON from memory, under wrk at 64
//! connections, interleaved; plus the cold stampede and memory after 10,000 distinct JWT users.
//! Run with `cargo bench --bench load` (needs nginx and wrk; scripts/bench installs them).
//! Prints figures; asserts nothing.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpResponse, HttpServer};
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::{broker, free_port, stand_in, wait_for_port, Killed};

const API_KEY: &str = "bench-api-key";
const CONNECTIONS: u32 = 64;
const ROUND: &str = "5s";
const ROUNDS: usize = 3;
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
workers = 1
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
    )
}

/// nginx with one worker answering `body` from memory, as the physical reference.
fn nginx(dir: &std::path::Path, port: u16, body: &str) -> Killed {
    let d = dir.display();
    let user = if Command::new("id").arg("-u").output().unwrap().stdout.starts_with(b"0") {
        "user root;"
    } else {
        ""
    };
    let conf = format!(
        r#"{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            add_header Cache-Control no-store;
            return 200 '{body}';
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/bench installs it)");
    wait_for_port(port);
    Killed(child)
}

#[derive(Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time (user + system) the server spent per request, in microseconds.
    cpu_us: f64,
}

/// wrk's latency figure ("812.00us", "1.20ms", "2.01s") in milliseconds.
fn millis(text: &str) -> f64 {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => f64::NAN,
    }
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name, so that the process
/// state is `[0]`, the parent's pid `[1]`, utime `[11]` and stime `[12]` (proc(5) fields 3, 4, 14, 15).
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // The state is a letter: it reads as 0, and is never used.
    rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect()
}

/// CPU time a process has used (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(pid);
    fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)
}

/// The children of `parent` (nginx's worker, under its master), found through `/proc`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).get(1) == Some(&u64::from(parent)))
        .collect()
}

/// Clock ticks per second, as `/proc/<pid>/stat` counts them (USER_HZ: 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// wrk against `url`, with the CPU time `server` spent over the run divided by the requests made.
fn wrk(url: &str, headers: &[String], server: u32) -> Figures {
    let ticks_before = cpu_ticks(server);
    let mut command = Command::new("wrk");
    command.args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{ROUND}"), "--latency"]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .arg(url)
        .output()
        .expect("wrk is installed (scripts/bench installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut figures = Figures::default();
    let mut non_2xx = 0;
    let mut requests = 0u64;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rps] => figures.rps = rps.parse().unwrap_or(0.0),
            ["50%", latency] => figures.p50_ms = millis(latency),
            ["99%", latency] => figures.p99_ms = millis(latency),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().unwrap_or(0),
            [n, "requests", "in", ..] => requests = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    let ticks = cpu_ticks(server) - ticks_before;
    figures.cpu_us = ticks as f64 / TICKS_PER_SECOND * 1e6 / requests.max(1) as f64;
    assert_eq!(non_2xx, 0, "{url} answered errors under load:\n{text}");
    figures
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
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
    let nginx_process = nginx(dir.path(), nginx_port, &body);
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/v1/token/bench");
    // The process whose CPU time each case is charged: nginx's one worker, the broker itself.
    let nginx_worker = loop {
        if let [worker] = children(nginx_process.0.id())[..] {
            break worker;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let broker_pid = broker_process.0.id();

    let cases: Vec<(&str, String, Vec<String>, u32)> = vec![
        ("nginx static", nginx_url.clone(), vec![], nginx_worker),
        (
            "API key",
            url.clone(),
            vec![format!("X-API-Key: {API_KEY}")],
            broker_pid,
        ),
        (
            "JWT (id_token)",
            url.clone(),
            vec![format!("Authorization: Bearer {jwt}")],
            broker_pid,
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
    for _ in 0..ROUNDS {
        for (i, (_, url, headers, server)) in cases.iter().enumerate() {
            runs[i].push(wrk(url, headers, *server));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "warm paths: wrk -t1 -c{CONNECTIONS} -d{ROUND}, {ROUNDS} interleaved rounds (medians), broker and nginx with 1 worker each, {cores} cores, broker logging at info"
    );
    println!("| case | requests/s | p50 | p99 | vs nginx | server CPU per request |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let nginx_rps = median(runs[0].iter().map(|f| f.rps).collect());
    for (i, (name, ..)) in cases.iter().enumerate() {
        let rps = median(runs[i].iter().map(|f| f.rps).collect());
        let p50 = median(runs[i].iter().map(|f| f.p50_ms).collect());
        let p99 = median(runs[i].iter().map(|f| f.p99_ms).collect());
        let cpu = median(runs[i].iter().map(|f| f.cpu_us).collect());
        println!(
            "| {name} | {rps:.0} | {p50:.2} ms | {p99:.2} ms | {:.2}× | {cpu:.1} µs |",
            rps / nginx_rps
        );
    }

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
