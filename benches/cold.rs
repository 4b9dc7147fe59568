//! The cold path: what the broker adds to the first request of a cache key over the token
//! endpoint's own answer time. 1,000 distinct keys (one scope each), asked one after another
//! through the release binary (one worker); the same stand-in endpoint asked directly with the
//! same form gives the upstream's own time. Run with `cargo bench --bench cold` (or
//! `scripts/bench cold`). Prints p50/p99 of both and of the difference; asserts nothing.

mod support;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{broker, free_port, one_upstream_config, p50_p99, stand_in};

const KEYS: usize = 1000;
const API_KEY: &str = "cold-key";

#[tokio::main]
async fn main() {
    let issued = Arc::new(AtomicU64::new(0));
    let (token_url, _handle) = stand_in(issued, 3600, Duration::ZERO);
    let port = free_port();
    let admin = free_port();
    let scopes: Vec<String> = (0..KEYS).map(|k| format!("s{k}")).collect();
    let config = one_upstream_config((port, admin), "cold", &token_url, &scopes, API_KEY, ("", ""));
    let dir = tempfile::tempdir().unwrap();
    let _broker = broker(dir.path(), "cold", &config, port, "info");
    let http = reqwest::Client::new();

    // Warm both connections (client → broker, client → endpoint) and the broker's own pool.
    for _ in 0..20 {
        let _ = http
            .post(&token_url)
            .form(&[("grant_type", "client_credentials"), ("scope", "warm")])
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    let warm = format!("http://127.0.0.1:{port}/v1/token/cold?scope=s0");
    let _ = http
        .get(&warm)
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .bytes()
        .await;

    let (mut direct, mut through) = (Vec::with_capacity(KEYS), Vec::with_capacity(KEYS));
    for k in 1..KEYS {
        let started = Instant::now();
        let response = http
            .post(&token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", &format!("s{k}")),
                ("client_id", "cold"),
                ("client_secret", "cold-secret"),
            ])
            .send()
            .await
            .unwrap();
        let _ = response.bytes().await.unwrap();
        direct.push(started.elapsed().as_secs_f64() * 1e6);

        let started = Instant::now();
        let response = http
            .get(format!("http://127.0.0.1:{port}/v1/token/cold?scope=s{k}"))
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let _ = response.bytes().await.unwrap();
        through.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let overhead: Vec<f64> = through.iter().zip(&direct).map(|(t, d)| t - d).collect();
    let (d50, d99) = p50_p99(direct);
    let (t50, t99) = p50_p99(through);
    let (o50, o99) = p50_p99(overhead);
    println!(
        "cold path: {} distinct keys asked one after another, the broker (1 worker, logging at info) and its token endpoint (answering at once) on loopback",
        KEYS - 1
    );
    println!("| | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    println!("| the token endpoint asked directly | {d50:.0} µs | {d99:.0} µs |");
    println!("| a first request through the broker | {t50:.0} µs | {t99:.0} µs |");
    println!("| what the broker adds (per request, paired) | {o50:.0} µs | {o99:.0} µs |");
}
