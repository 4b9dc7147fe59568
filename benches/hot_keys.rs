//! Many cache keys hot at once: the token route with one key against the same route cycling over
//! 10,000 distinct keys (one caller asking for 10,000 different scope sets, every token cached),
//! under wrk at 64 connections, interleaved; and the broker's memory with them all cached.
//! Run with `cargo bench --bench hot_keys` (needs wrk; scripts/bench installs it).
//! Prints figures; asserts nothing but that every answer is a 200 from the cache.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use support::{broker, free_port, one_upstream_config, print_table, rotated, rss_kib, stand_in, wrk_with, Figures};
use support::{CONNECTIONS, ROUND, ROUNDS};

const API_KEY: &str = "hot-key";
const KEYS: usize = 10_000;
const SCOPES: usize = 200;

/// The query of each key: two of the upstream's scopes, a pair per key.
fn key_queries() -> Vec<String> {
    let mut queries = Vec::with_capacity(KEYS);
    'pairs: for a in 0..SCOPES {
        for b in a + 1..SCOPES {
            if queries.len() == KEYS {
                break 'pairs;
            }
            queries.push(format!("scope=s{a}%20s{b}"));
        }
    }
    queries
}

/// A wrk script asking for `paths` in turn, one per request.
fn script(dir: &std::path::Path, name: &str, paths: &[String]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("  \"{p}\",")).collect();
    let text = format!(
        "local paths = {{\n{}\n}}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i])\nend\n",
        list.join("\n")
    );
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let issued = Arc::new(AtomicU64::new(0));
    let (token_url, _tokens) = stand_in(issued.clone(), 3600, Duration::ZERO);
    let (port, admin) = (free_port(), free_port());
    let scopes: Vec<String> = (0..SCOPES).map(|n| format!("s{n}")).collect();
    // The cache's default capacity is exactly 10,000 tokens: room for all of them and the rest.
    let config = one_upstream_config(
        (port, admin),
        "hot",
        &token_url,
        &scopes,
        API_KEY,
        ("[cache]\nmax_entries = 20000\n", ""),
    );
    let process = broker(dir.path(), "broker", &config, port, "info");
    let pid = process.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let paths: Vec<String> = key_queries().iter().map(|q| format!("/v1/token/hot?{q}")).collect();

    let client = reqwest::Client::new();
    let start_rss = rss_kib(pid);
    for chunk in paths.chunks(64) {
        let requests = chunk
            .iter()
            .map(|path| client.get(format!("{base}{path}")).header("X-API-Key", API_KEY).send());
        for response in join_all(requests).await {
            assert!(response.unwrap().status().is_success());
        }
    }
    let warm_rss = rss_kib(pid);
    let fetched = issued.load(Ordering::SeqCst);

    let cases = [
        ("one key", script(dir.path(), "one", &paths[..1])),
        ("10,000 keys, in turn", script(dir.path(), "all", &paths)),
    ];
    let header = vec![format!("X-API-Key: {API_KEY}")];
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
    for round in 0..ROUNDS {
        for i in rotated(cases.len(), round) {
            runs[i].push(wrk_with(&base, &header, &[pid], &["-s", &cases[i].1]));
        }
    }
    let fetched_under_load = issued.load(Ordering::SeqCst) - fetched;
    println!(
        "hot keys: wrk -t1 -c{CONNECTIONS} -d{ROUND} with a script, {ROUNDS} interleaved rounds (medians), broker with 1 worker, logging at info"
    );
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    print_table(&names, &runs, 0, "one key", "server");
    println!(
        "memory: RSS {:.1} MiB at start, {:.1} MiB with {KEYS} tokens cached, {:.1} MiB after the runs; {fetched} tokens fetched to warm, {fetched_under_load} under load",
        start_rss as f64 / 1024.0,
        warm_rss as f64 / 1024.0,
        rss_kib(pid) as f64 / 1024.0,
    );
}
