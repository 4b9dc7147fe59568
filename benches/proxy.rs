//! Proxy mode against nginx's `proxy_pass`: the same API (an nginx serving a small JSON answer and
//! a 1 MiB file), reached directly, through nginx (one worker, keep-alive to the API) and through
//! the broker (one worker, adding the token), under wrk at 64 connections, interleaved.
//! Run with `cargo bench --bench proxy` (needs nginx and wrk; scripts/bench installs them).
//! Prints figures; asserts nothing.

mod support;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    broker, free_port, median, nginx, p50_p99, print_table, rotated, stand_in, workers, workers_of, wrk, Figures,
};
use support::{CONNECTIONS, ROUND, ROUNDS};

const API_KEY: &str = "bench-api-key";
const SMALL: &str = r#"{"id":42,"name":"quarterly report","status":"ready","pages":12}"#;
const MIB: usize = 1 << 20;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("www/api")).unwrap();
    std::fs::write(dir.path().join("www/api/big"), vec![b'x'; MIB]).unwrap();

    // The API: a small JSON answer from memory and a 1 MiB file.
    let api_port = free_port();
    let api = nginx(
        dir.path(),
        "api",
        api_port,
        &format!(
            r#"server {{
        listen 127.0.0.1:{api_port};
        keepalive_requests 100000;
        location = /api/small {{ default_type application/json; return 200 '{SMALL}'; }}
        location /api/ {{ root {www}; }}
    }}"#,
            www = dir.path().join("www").display()
        ),
    );
    // nginx in front of it, as a reverse proxy with keep-alive to the API.
    let front_port = free_port();
    let front = nginx(
        dir.path(),
        "front",
        front_port,
        &format!(
            r#"upstream api {{ server 127.0.0.1:{api_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{front_port};
        keepalive_requests 100000;
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer bench-token";
            proxy_buffering off;
        }}
    }}"#
        ),
    );
    // The broker, proxying the same API with a token from a stand-in endpoint.
    let (token_url, _tokens) = stand_in(Arc::new(AtomicU64::new(0)), 3600, Duration::ZERO);
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = {workers}
rate_limit_per_second = 0

[upstreams.bench]
token_url = "{token_url}"
client_id = "bench"
client_secret = "bench-secret"
scopes = ["api:read"]

[upstreams.bench.proxy]
url = "http://127.0.0.1:{api_port}/api"
paths = ["/**"]

[[authenticators]]
type = "api_key"
keys = [{{ id = "bench", hash = "{hash}", subject = "bench" }}]

[[grants]]
subjects = ["*"]
upstreams = {{ bench = ["api:read"] }}
"#,
        hash = token_broker::identity::hash_key(API_KEY),
        workers = workers(),
    );
    let broker_process = broker(dir.path(), "broker", &config, port, "info");
    // Warm the token and every connection pool.
    let client = reqwest::Client::new();
    let warm = client
        .get(format!("http://127.0.0.1:{port}/v1/proxy/bench/small"))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(warm.text().await.unwrap(), SMALL);

    let (api_workers, front_workers, broker_pid) = (workers_of(&api), workers_of(&front), vec![broker_process.0.id()]);
    let key = vec![format!("X-API-Key: {API_KEY}")];
    for (size, path) in [("small JSON", "small"), ("1 MiB", "big")] {
        let cases: Vec<(&str, String, Vec<String>, Vec<u32>)> = vec![
            (
                "API directly",
                format!("http://127.0.0.1:{api_port}/api/{path}"),
                vec![],
                api_workers.clone(),
            ),
            (
                "nginx proxy_pass",
                format!("http://127.0.0.1:{front_port}/api/{path}"),
                vec![],
                front_workers.clone(),
            ),
            (
                "broker proxy",
                format!("http://127.0.0.1:{port}/v1/proxy/bench/{path}"),
                key.clone(),
                broker_pid.clone(),
            ),
        ];
        let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
        for round in 0..ROUNDS {
            for i in rotated(cases.len(), round) {
                let (_, url, headers, server) = &cases[i];
                runs[i].push(wrk(url, headers, server));
            }
        }
        println!(
            "{size}: wrk -t1 -c{CONNECTIONS} -d{ROUND}, {ROUNDS} interleaved rounds (medians); nginx and the broker with {} worker(s) each",
            workers()
        );
        let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
        print_table(&names, &runs, 1, "nginx proxy_pass", "proxy");
        let direct_p99 = median(runs[0].iter().map(|f| f.p99_ms).collect());
        let broker_p99 = median(runs[2].iter().map(|f| f.p99_ms).collect());
        println!(
            "p99 at 64 connections, broker minus direct (mostly queueing at saturation): {:.2} ms\n",
            broker_p99 - direct_p99
        );
    }
    latency_added(&client, api_port, port).await;
}

/// What the broker adds to one request when nothing queues: small JSON asked directly and through
/// the broker in turn, one request at a time over kept-alive connections.
async fn latency_added(client: &reqwest::Client, api_port: u16, port: u16) {
    const PAIRS: usize = 5000;
    let direct_url = format!("http://127.0.0.1:{api_port}/api/small");
    let broker_url = format!("http://127.0.0.1:{port}/v1/proxy/bench/small");
    let (mut direct, mut through) = (Vec::with_capacity(PAIRS), Vec::with_capacity(PAIRS));
    for i in 0..PAIRS + 200 {
        let started = Instant::now();
        let answer = client.get(&direct_url).send().await.unwrap().bytes().await.unwrap();
        let direct_us = started.elapsed().as_secs_f64() * 1e6;
        let started = Instant::now();
        let answer_through = client
            .get(&broker_url)
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let through_us = started.elapsed().as_secs_f64() * 1e6;
        assert_eq!(answer, answer_through);
        // The first requests warm both paths' connections.
        if i >= 200 {
            direct.push(direct_us);
            through.push(through_us);
        }
    }
    let added: Vec<f64> = through.iter().zip(&direct).map(|(t, d)| t - d).collect();
    let (d50, d99) = p50_p99(direct);
    let (t50, t99) = p50_p99(through);
    let (a50, a99) = p50_p99(added);
    println!("one request at a time, {PAIRS} pairs (small JSON directly, then through the broker):");
    println!("| | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    println!("| API directly | {d50:.0} µs | {d99:.0} µs |");
    println!("| through the broker | {t50:.0} µs | {t99:.0} µs |");
    println!("| what the broker adds (per pair) | {a50:.0} µs | {a99:.0} µs |");
}
