//! The shipped deploy/ files, exercised for real: Debian's nginx runs deploy/nginx's proxy settings
//! in front of the broker, and systemd-analyze checks the unit. scripts/test installs both tools;
//! these tests fail, rather than skip, without them.

use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::process::{write, BrokerProcess};
use crate::helpers::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tool(name: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .unwrap_or_else(|| panic!("{name} is not installed: run scripts/test, which installs it"))
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let analyze = tool("systemd-analyze", &["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]);
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/systemd/token-broker.service")).unwrap();
    // The unit names the installed path; point it at the binary under test.
    let unit = unit.replace("/usr/local/bin/token-broker", env!("CARGO_BIN_EXE_token-broker"));
    let path = write(dir.path(), "token-broker.service", &unit);
    let output = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze warns: {stderr}");
}

/// The Dockerfile's build stage sees only what it COPYs: that must be enough to compile the
/// binary. (There is no Docker engine here; this reproduces the build context and checks it.)
#[test]
fn the_dockerfile_build_stage_copies_everything_the_build_needs() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/deploy/Dockerfile")).unwrap();
    let build_stage = dockerfile.split("\nFROM ").nth(1).unwrap();
    let context = tempfile::tempdir().unwrap();
    for line in build_stage.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (destination, sources) = words.split_last().unwrap();
        assert!(destination.starts_with("./"), "{line}");
        for source in sources {
            copy_tree(&Path::new(ROOT).join(source), &context.path().join(source));
        }
    }
    // `cargo check` compiles what `cargo build` would (include_str! files, declared targets)
    // without code generation; its own target directory, as the running tests hold the usual one.
    let output = Command::new(env!("CARGO"))
        .args(["check", "--locked", "--offline", "--release", "--bins"])
        .current_dir(context.path())
        .env("CARGO_TARGET_DIR", format!("{ROOT}/target/dockerfile-context"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the Dockerfile's build stage would fail:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers (SIGKILL would leave them running, orphaned).
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

/// nginx on 127.0.0.2:`port` with the shipped proxy settings in front of `broker`.
fn start_nginx(dir: &Path, broker: &str, port: u16) -> Nginx {
    let nginx = tool("nginx", &["/usr/sbin/nginx", "/usr/bin/nginx"]);
    let as_root = Command::new("id").arg("-u").output().unwrap().stdout.starts_with(b"0");
    let d = dir.display();
    let conf = format!(
        r#"
        {user}
        worker_processes 1;
        daemon off;
        pid {d}/nginx.pid;
        error_log {d}/error.log info;
        events {{ worker_connections 64; }}
        http {{
            access_log off;
            client_body_temp_path {d}/body;
            proxy_temp_path {d}/proxy;
            fastcgi_temp_path {d}/fastcgi;
            uwsgi_temp_path {d}/uwsgi;
            scgi_temp_path {d}/scgi;
            upstream token_broker {{ server {broker}; keepalive 8; }}
            server {{
                listen 127.0.0.2:{port};
                location /v1/ {{ include {ROOT}/deploy/nginx/token-broker-proxy.conf; }}
                location / {{ return 404; }}
            }}
        }}
        "#,
        user = if as_root { "user root;" } else { "" },
    );
    let path = write(dir, "nginx.conf", &conf);
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let nginx = Nginx(child);
    wait_for_port(port, || {
        format!(
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        )
    });
    nginx
}

/// Waits up to 10 s for something to listen on 127.0.0.2:`port`; `failure` says why not.
fn wait_for_port(port: u16, failure: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", failure());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `client_ip` the broker logged for the request whose answer carried `request_id`.
fn logged_client(broker: &BrokerProcess, request_id: &str) -> String {
    let needle = format!("\"request_id\":\"{request_id}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // The access line (debug level; the tests run the broker at trace) names the client.
        let access = broker
            .logs()
            .into_iter()
            .find(|l| l.contains(&needle) && l.contains("token_broker::access"));
        if let Some(line) = access {
            let json: Value = serde_json::from_str(&line).unwrap();
            return json["client_ip"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no access line for {request_id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The binary, trusting a proxy on 127.0.0.1 (where the shipped nginx and Caddy configs run in
/// these tests), with its token endpoint and the directory of its configuration.
async fn broker_trusting_loopback() -> (wiremock::MockServer, tempfile::TempDir, BrokerProcess) {
    let upstream = token_endpoint(IssueTokens::new(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post")
        .replace("workers = 2", "workers = 2\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let broker = BrokerProcess::start(
        &write(dir.path(), "broker.toml", &toml),
        &[("TRIUMPH_SECRET", CLIENT_SECRET)],
    );
    (upstream, dir, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_shipped_nginx_config_the_client_address_is_honoured_and_no_store_survives() {
    let (_upstream, dir, broker) = broker_trusting_loopback().await;
    let nginx_port = free_port("127.0.0.2");
    let _nginx = start_nginx(dir.path(), broker.base.trim_start_matches("http://"), nginx_port);

    // The client talks from 127.0.0.3 and claims another address; nginx overwrites the claim.
    let client_ip: IpAddr = "127.0.0.3".parse().unwrap();
    let http = reqwest::Client::builder().local_address(client_ip).build().unwrap();
    let via_nginx = http
        .get(format!("http://127.0.0.2:{nginx_port}/v1/token/triumph"))
        .header("X-API-Key", ALICE_KEY)
        .header("X-Forwarded-For", "198.51.100.9")
        .send()
        .await
        .unwrap();
    assert_eq!(via_nginx.status(), 200);
    assert_eq!(via_nginx.headers()["cache-control"], "no-store");
    assert_eq!(via_nginx.headers()["pragma"], "no-cache");
    let request_id = via_nginx.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(request_id.len(), 32, "nginx's $request_id was passed on: {request_id}");
    assert_eq!(logged_client(&broker, &request_id), "127.0.0.3");

    // The same header sent straight to the broker by an untrusted peer is ignored.
    let direct = http
        .get(format!("{}/v1/token/triumph", broker.base))
        .header("X-API-Key", ALICE_KEY)
        .header("X-Forwarded-For", "198.51.100.9")
        .header("X-Request-Id", "chosen-by-client")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    let request_id = direct.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(request_id, "chosen-by-client");
    assert_eq!(logged_client(&broker, &request_id), "127.0.0.3");

    // The admin routes are not reachable through the proxy.
    let admin = http
        .get(format!("http://127.0.0.2:{nginx_port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 404);
}

/// Caddy on 127.0.0.2:`port` with the shipped Caddyfile, its site address and upstream replaced
/// for the test (plain HTTP, no admin endpoint).
fn start_caddy(dir: &Path, broker: &str, port: u16) -> Nginx {
    let caddy = tool("caddy", &["/usr/bin/caddy"]);
    let shipped = std::fs::read_to_string(format!("{ROOT}/deploy/caddy/Caddyfile")).unwrap();
    let site = shipped
        .replace("broker.example.com {", &format!("http://127.0.0.2:{port} {{"))
        .replace("127.0.0.1:8080", broker);
    let path = write(
        dir,
        "Caddyfile",
        &format!("{{\n\tadmin off\n\tauto_https off\n}}\n{site}"),
    );
    let child = Command::new(caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .env("HOME", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let caddy = Nginx(child);
    wait_for_port(port, || "caddy did not start".to_string());
    caddy
}

/// The broker believes `X-Request-Id` from a trusted proxy, so the proxy must set its own: a
/// client that chose the id could forge or collide log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_shipped_caddyfile_the_client_chooses_neither_its_address_nor_the_request_id() {
    let (_upstream, dir, broker) = broker_trusting_loopback().await;
    let port = free_port("127.0.0.2");
    let _caddy = start_caddy(dir.path(), broker.base.trim_start_matches("http://"), port);
    let http = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let response = http
        .get(format!("http://127.0.0.2:{port}/v1/token/triumph"))
        .header("X-API-Key", ALICE_KEY)
        .header("X-Forwarded-For", "198.51.100.9")
        .header("X-Request-Id", "chosen-by-client")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(request_id, "chosen-by-client");
    assert_eq!(logged_client(&broker, &request_id), "127.0.0.3");
}

/// The Kubernetes example's configuration passes `check` with its secrets in place, keeps the admin
/// listener behind a token and a NetworkPolicy, and gives Redis a password.
#[test]
fn the_kubernetes_example_is_valid_and_guards_the_admin_port_and_redis() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = |file: &str| std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/{file}")).unwrap();
    let configmap = k8s("configmap.yaml");
    let toml: String = configmap
        .split_once("config.toml: |\n")
        .unwrap()
        .1
        .lines()
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for (name, value) in [
        ("triumph", "client-secret"),
        ("cache-key", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        ("admin-token", "admin-token-0123456789abcdef"),
        ("redis-url", "redis://:pw@token-broker-redis:6379/0"),
    ] {
        std::fs::write(secrets.join(name), value).unwrap();
    }
    let path = write(
        dir.path(),
        "config.toml",
        &toml.replace("/run/secrets/token-broker", secrets.to_str().unwrap()),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_token-broker"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        toml.contains("admin_token = { file ="),
        "the admin listener is on the pod network: it needs a token"
    );
    assert!(
        toml.contains("hosted_domain ="),
        "Google sign-in limited to the Workspace domain"
    );

    let policies = k8s("networkpolicy.yaml");
    assert!(policies.contains("ports: [{ port: admin }]") && policies.contains("namespaceSelector"));
    assert!(policies.contains("name: token-broker-redis") && policies.contains("port: redis"));
    assert!(k8s("kustomization.yaml").contains("networkpolicy.yaml"));
    assert!(k8s("redis.yaml").contains("\"--requirepass\", \"$(REDIS_PASSWORD)\""));
}
