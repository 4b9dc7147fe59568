//! Upstream token requests per token lifetime under load: 1 replica, 3 replicas with memory caches
//! only, and 3 replicas sharing a real Redis. Run with `cargo bench --bench replicas`
//! (needs redis-server; scripts/test installs it). Prints a table; asserts nothing.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{broker, free_port, one_upstream_config, stand_in, wait_for_port, Killed};

const LIFETIME_SECS: u64 = 8;
const RUN: Duration = Duration::from_secs(24);
const CONNECTIONS: usize = 32;
const KEY: &str = "bench-key";

fn replica(dir: &std::path::Path, token_url: &str, redis: Option<&str>, n: usize) -> (Killed, String) {
    let port = free_port();
    let admin = free_port();
    let redis = redis
        .map(|url| {
            format!(
                "[cache.redis]\nurl = \"{url}\"\nencryption_key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n"
            )
        })
        .unwrap_or_default();
    let config = one_upstream_config((port, admin), "bench", token_url, &[], KEY, (&redis, ""));
    let child = broker(dir, &format!("replica-{n}"), &config, port, "warn");
    (child, format!("http://127.0.0.1:{port}/v1/token/bench"))
}

/// Drives `urls` round-robin from CONNECTIONS tasks for RUN; returns (requests, failures).
async fn load(urls: &[String]) -> (u64, u64) {
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + RUN;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (client, urls, done, failed) = (client.clone(), urls.to_vec(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = i;
                while Instant::now() < until {
                    let url = &urls[n % urls.len()];
                    n += 1;
                    match client.get(url).header("X-API-Key", KEY).send().await {
                        Ok(r) if r.status().is_success() => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() {
    let redis_port = free_port();
    let _redis = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)"),
    );
    wait_for_port(redis_port);
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");

    println!("upstream token requests per token lifetime ({LIFETIME_SECS} s tokens, served {} s), {} s of load from {CONNECTIONS} connections on {} cores",
        LIFETIME_SECS - LIFETIME_SECS / 4, RUN.as_secs(), std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("| setup | requests served | failed | upstream requests | per token lifetime |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let setups: [(&str, usize, bool); 3] = [
        ("1 replica", 1, false),
        ("3 replicas, memory only", 3, false),
        ("3 replicas sharing Redis", 3, true),
    ];
    for (name, replicas, shared) in setups {
        let counter = Arc::new(AtomicU64::new(0));
        let (token_url, handle) = stand_in(counter.clone(), LIFETIME_SECS, Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        let started: Vec<_> = (0..replicas)
            .map(|n| replica(dir.path(), &token_url, shared.then_some(redis_url.as_str()), n))
            .collect();
        let urls: Vec<String> = started.iter().map(|(_, url)| url.clone()).collect();
        let (served, failed) = load(&urls).await;
        let upstream = counter.load(Ordering::SeqCst);
        let lifetimes = RUN.as_secs_f64() / LIFETIME_SECS as f64;
        println!(
            "| {name} | {served} | {failed} | {upstream} | {:.2} |",
            upstream as f64 / lifetimes
        );
        drop(started);
        handle.stop(false).await;
        // Each setup starts with an empty Redis.
        let _ = Command::new("redis-cli")
            .args(["-p", &redis_port.to_string(), "FLUSHALL"])
            .output();
    }
}
