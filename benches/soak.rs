//! A soak under a flapping token endpoint: 60 s of load over several cache keys while a stand-in
//! token endpoint turns, every couple of seconds, from healthy to failing in one of five ways
//! (5xx, too slow, connection reset, 429, garbage) and back, with tokens short enough to be renewed
//! many times under fire. Run with `cargo bench --bench soak` (or `scripts/bench soak`). Prints
//! answers, failures, upstream requests and the renewals a perfect broker would have needed;
//! asserts nothing.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{free_port, one_upstream_config, wait_for_port, Killed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const RUN: Duration = Duration::from_secs(60);
/// One phase of the stand-in; healthy and failing phases alternate.
const PHASE: Duration = Duration::from_secs(2);
/// The tokens' `expires_in`: the broker serves each for 3/4 of it, refreshing ahead from 80% of that.
const LIFETIME_SECS: u64 = 20;
const KEYS: usize = 4;
const CONNECTIONS: usize = 32;
const API_KEY: &str = "soak-key";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Healthy,
    ServerError,
    Slow,
    Reset,
    RateLimited,
    Garbage,
}

const FAILURES: [Mode; 5] = [
    Mode::ServerError,
    Mode::Slow,
    Mode::Reset,
    Mode::RateLimited,
    Mode::Garbage,
];

/// The stand-in's mode at `elapsed`: healthy, a failure, healthy, the next failure, …
fn mode_at(elapsed: Duration) -> Mode {
    let phase = (elapsed.as_millis() / PHASE.as_millis()) as usize;
    if phase % 2 == 0 {
        Mode::Healthy
    } else {
        FAILURES[(phase / 2) % FAILURES.len()]
    }
}

#[derive(Default)]
struct Counts {
    requests: BTreeMap<Mode, u64>,
    issued: u64,
}

/// A token endpoint on a raw socket, so it can also reset connections and answer garbage.
async fn flapping_endpoint(started: Instant, counts: Arc<Mutex<Counts>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                loop {
                    // One request: headers, then a Content-Length body (the broker's form).
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body_start = loop {
                        let Ok(n) = socket.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..body_start]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buffer.len() < body_start + length {
                        let Ok(n) = socket.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let mode = mode_at(started.elapsed());
                    let n = {
                        let mut counts = counts.lock().unwrap();
                        *counts.requests.entry(mode).or_default() += 1;
                        if mode == Mode::Healthy {
                            counts.issued += 1;
                        }
                        counts.issued
                    };
                    let answer = |status: &str, extra: &str, body: &str| {
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
                            body.len()
                        )
                    };
                    let reply = match mode {
                        Mode::Healthy => answer(
                            "200 OK",
                            "",
                            &format!(
                                r#"{{"access_token":"soak-token-{n:016}","token_type":"Bearer","expires_in":{LIFETIME_SECS}}}"#
                            ),
                        ),
                        Mode::ServerError => {
                            answer("503 Service Unavailable", "", r#"{"error":"temporarily_unavailable"}"#)
                        }
                        Mode::RateLimited => answer("429 Too Many Requests", "retry-after: 1\r\n", "{}"),
                        Mode::Garbage => answer("200 OK", "", "<html>maintenance</html>"),
                        Mode::Slow => {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            answer("200 OK", "", "{}")
                        }
                        Mode::Reset => {
                            let _ = socket.set_zero_linger();
                            return;
                        }
                    };
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let counts = Arc::new(Mutex::new(Counts::default()));
    let token_url = flapping_endpoint(started, counts.clone()).await;
    let port = free_port();
    let admin = free_port();
    let scopes: Vec<String> = (1..=KEYS).map(|k| format!("s{k}")).collect();
    let config = one_upstream_config(
        (port, admin),
        "soak",
        &token_url,
        &scopes,
        API_KEY,
        ("", "timeout = \"2s\""),
    );
    let dir = tempfile::tempdir().unwrap();
    // The broker's warnings (failed refreshes, failed exchanges) go to target/soak-broker.log.
    let path = dir.path().join("soak.toml");
    std::fs::write(&path, &config).unwrap();
    let log = std::fs::File::create(concat!(env!("CARGO_MANIFEST_DIR"), "/target/soak-broker.log")).unwrap();
    let _broker = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_token-broker"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    println!(
        "(started {:.1} s after the stand-in; its phases are counted from then)",
        started.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::new();
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let until = Instant::now() + RUN;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (client, served, failed, failures) = (client.clone(), served.clone(), failed.clone(), failures.clone());
            tokio::spawn(async move {
                let mut n = i;
                while Instant::now() < until {
                    let url = format!("http://127.0.0.1:{port}/v1/token/soak?scope=s{}", n % KEYS + 1);
                    n += 1;
                    match client.get(&url).header("X-API-Key", API_KEY).send().await {
                        Ok(r) if r.status().is_success() => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *failures.lock().unwrap().entry(r.status().as_u16()).or_default() += 1;
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *failures.lock().unwrap().entry(0).or_default() += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let counts = counts.lock().unwrap();
    let upstream: u64 = counts.requests.values().sum();
    // A perfect broker fetches each key once per served life (3/4 of the lifetime).
    let served_life = LIFETIME_SECS as f64 * 0.75;
    let renewals = (RUN.as_secs_f64() / served_life).ceil() as u64 * KEYS as u64;
    println!(
        "soak: {} s of load from {CONNECTIONS} connections over {KEYS} cache keys; the token endpoint alternates {} s healthy and {} s failing (5xx, slow, reset, 429, garbage in turn); {LIFETIME_SECS} s tokens",
        RUN.as_secs(),
        PHASE.as_secs(),
        PHASE.as_secs()
    );
    println!(
        "| answers 200 | failed answers | upstream requests | tokens issued | renewals needed | upstream / renewals |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {} | {} | {upstream} | {} | {renewals} | {:.2} |",
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        counts.issued,
        upstream as f64 / renewals as f64
    );
    println!("upstream requests by the endpoint's mode: {:?}", counts.requests);
    println!(
        "failed answers by status (0: no answer): {:?}",
        failures.lock().unwrap()
    );
}
