//! What the benchmarks share: free ports, child processes that die with the benchmark, and a
//! stand-in token endpoint that counts what it issues.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};

/// Workers of the broker and of each nginx: `BENCH_WORKERS` (default 1; `scripts/bench load2`
/// and `proxy2` run with 2).
pub fn workers() -> usize {
    std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// wrk's load: connections, the length of one round, and how many interleaved rounds.
pub const CONNECTIONS: u32 = 64;
pub const ROUND: &str = "5s";
pub const ROUNDS: usize = 5;

/// The order of `cases` cases in round `round` of interleaved rounds: each round starts one case
/// later, so that no case always runs right after the same other one (a server woken from idle,
/// wrk's new connections, the previous run's sockets closing).
pub fn rotated(cases: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..cases).map(move |i| (i + round) % cases)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process stopped when dropped: asked to stop (SIGTERM), killed if it has not within
/// 2 s. SIGKILL alone left nginx's workers running after their master, serving old ports and
/// taking CPU time from every later run.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stand-in token endpoint issuing `lifetime_secs` tokens after `delay`, counting requests.
pub fn stand_in(
    counter: Arc<AtomicU64>,
    lifetime_secs: u64,
    delay: Duration,
) -> (String, actix_web::dev::ServerHandle) {
    let port = free_port();
    let server = HttpServer::new(move || {
        let counter = counter.clone();
        App::new().route(
            "/token",
            web::post().to(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(delay).await;
                    HttpResponse::Ok().json(serde_json::json!({
                        "access_token": format!("bench-token-{n:032}"), "token_type": "Bearer", "expires_in": lifetime_secs,
                    }))
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", port))
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}/token"), handle)
}

/// A one-worker broker on `port`/`admin` with rate limits off: upstream `name` at `token_url`
/// (client id `name`, secret `<name>-secret`) offering `scopes`, all granted to the subject of
/// `api_key`. `sections` go before the upstream (such as `[cache.redis]`); `upstream_lines` into
/// its table (such as `timeout`).
pub fn one_upstream_config(
    (port, admin): (u16, u16),
    name: &str,
    token_url: &str,
    scopes: &[String],
    api_key: &str,
    (sections, upstream_lines): (&str, &str),
) -> String {
    let scopes = scopes
        .iter()
        .map(|scope| format!("\"{scope}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = 1
rate_limit_per_second = 0

{sections}
[upstreams.{name}]
token_url = "{token_url}"
client_id = "{name}"
client_secret = "{name}-secret"
scopes = [{scopes}]
{upstream_lines}

[[authenticators]]
type = "api_key"
keys = [{{ id = "{name}", hash = "{hash}", subject = "{name}" }}]

[[grants]]
subjects = ["{name}"]
upstreams = {{ {name} = [{scopes}] }}
"#,
        hash = token_broker::identity::hash_key(api_key),
    )
}

/// Starts the broker binary on `config` (written to `dir`), quietly, and waits for its port.
pub fn broker(dir: &std::path::Path, name: &str, config: &str, port: u16, log: &str) -> Killed {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_token-broker"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    Killed(child)
}

#[derive(Clone, Copy, Default)]
pub struct Figures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time (user + system) the server spent per request, in microseconds.
    pub cpu_us: f64,
}

impl Figures {
    /// Each figure's median over `rounds`.
    pub fn median_of(rounds: &[Figures]) -> Figures {
        let of = |figure: fn(&Figures) -> f64| median(rounds.iter().map(figure).collect());
        Figures {
            rps: of(|f| f.rps),
            p50_ms: of(|f| f.p50_ms),
            p99_ms: of(|f| f.p99_ms),
            cpu_us: of(|f| f.cpu_us),
        }
    }
}

/// Prints a markdown table of `runs` (one list of rounds per case, named by `names`): the medians,
/// and each case's requests/s relative to case `reference` (a dash for the cases before it).
///
/// The last column compares CPU time per request the same way (the reference's over the case's):
/// it moves less with the machine's moment than requests/s do, and shows how much of a ratio is
/// the code and how much the moment.
pub fn print_table(names: &[&str], runs: &[Vec<Figures>], reference: usize, against: &str, cpu_of: &str) {
    println!("| case | requests/s | p50 | p99 | vs {against} | {cpu_of} CPU per request | CPU vs {against} |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let base = Figures::median_of(&runs[reference]);
    for (i, (name, rounds)) in names.iter().zip(runs).enumerate() {
        let f = Figures::median_of(rounds);
        let (ratio, cpu_ratio) = if i < reference {
            ("—".to_string(), "—".to_string())
        } else {
            (
                format!("{:.2}×", f.rps / base.rps),
                format!("{:.2}×", base.cpu_us / f.cpu_us),
            )
        };
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {ratio} | {:.1} µs | {cpu_ratio} |",
            f.rps, f.p50_ms, f.p99_ms, f.cpu_us
        );
    }
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
pub fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).get(1) == Some(&u64::from(parent)))
        .collect()
}

/// Clock ticks per second, as `/proc/<pid>/stat` counts them (USER_HZ: 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// wrk against `url`, with the CPU time the `servers` processes spent over the run divided by the
/// requests made.
pub fn wrk(url: &str, headers: &[String], servers: &[u32]) -> Figures {
    wrk_with(url, headers, servers, &[])
}

/// [`wrk`] with more arguments (such as `-s script.lua`).
pub fn wrk_with(url: &str, headers: &[String], servers: &[u32], more: &[&str]) -> Figures {
    let ticks = || servers.iter().map(|&pid| cpu_ticks(pid)).sum::<u64>();
    let ticks_before = ticks();
    let mut command = Command::new("wrk");
    command.args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{ROUND}"), "--latency"]);
    command.args(more);
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
    let ticks = ticks() - ticks_before;
    figures.cpu_us = ticks as f64 / TICKS_PER_SECOND * 1e6 / requests.max(1) as f64;
    assert_eq!(non_2xx, 0, "{url} answered errors under load:\n{text}");
    figures
}

/// The 50th and 99th percentiles (nearest rank) of `values`.
pub fn p50_p99(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1];
    (at(0.50), at(0.99))
}

/// The resident memory of `pid` (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().unwrap().stdout.starts_with(b"0")
}

/// An nginx with one worker, its files under `dir/name`: `server` is what goes in its `http` block.
pub fn nginx(dir: &std::path::Path, name: &str, port: u16, server: &str) -> Killed {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let d = d.display();
    let conf = format!(
        r#"{user}
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    {server}
}}
"#,
        user = if is_root() { "user root;" } else { "" },
        workers = workers(),
    );
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .args(["-p"])
        .arg(dir)
        .arg("-e")
        .arg(dir.join(name).join("error.log"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/bench installs it)");
    wait_for_port(port);
    Killed(child)
}

/// nginx's one worker process, under its master.
pub fn workers_of(master: &Killed) -> Vec<u32> {
    loop {
        let found = children(master.0.id());
        if found.len() == workers() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
