//! What the benchmarks share: free ports, child processes that die with the benchmark, and a
//! stand-in token endpoint that counts what it issues.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
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
