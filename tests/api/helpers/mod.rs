//! Spawns the real broker on port 0 against a mock token endpoint, with a clock tests can advance.

pub mod idp;
pub mod pki;
pub mod process;
pub mod redis_server;
pub mod rogue;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use token_broker::clock::ManualClock;
use token_broker::identity::hash_key;
use token_broker::settings::{Env, Settings};
use token_broker::startup::Application;
use wiremock::{Request, Respond, ResponseTemplate};

pub const ALICE_KEY: &str = "alice-key-0123456789";
pub const BOB_KEY: &str = "bob-key-0123456789";
pub const CAROL_KEY: &str = "carol-key-0123456789";
pub const CLIENT_ID: &str = "broker-client";
pub const CLIENT_SECRET: &str = "canary-s3cret:with%odd+chars-é";

/// The usual configuration: upstream `triumph` at `token_url`; alice may read and write,
/// bob may only read, carol has no grant; upstream `other` is granted to nobody.
pub fn config(token_url: &str, auth_method: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        workers = 2

        [cache]
        refresh_skew = "60s"
        default_ttl = "5m"

        [upstreams.triumph]
        token_url = "{token_url}"
        client_id = "{CLIENT_ID}"
        client_secret = {{ env = "TRIUMPH_SECRET" }}
        auth_method = "{auth_method}"
        scopes = ["reports:read", "reports:write", "admin"]
        timeout = "2s"

        [upstreams.other]
        token_url = "{token_url}"
        client_id = "{CLIENT_ID}"
        client_secret = {{ env = "TRIUMPH_SECRET" }}

        [[authenticators]]
        type = "api_key"
        keys = [
          {{ id = "alice", hash = "{alice}", subject = "alice" }},
          {{ id = "bob", hash = "{bob}", subject = "bob" }},
          {{ id = "carol", hash = "{carol}", subject = "carol" }},
        ]

        [[grants]]
        authenticators = ["api_key"]
        subjects = ["alice"]
        upstreams = {{ triumph = ["reports:read", "reports:write"] }}

        [[grants]]
        authenticators = ["api_key"]
        subjects = ["bob"]
        upstreams = {{ triumph = ["reports:read"] }}
        "#,
        alice = hash_key(ALICE_KEY),
        bob = hash_key(BOB_KEY),
        carol = hash_key(CAROL_KEY),
    )
}

pub fn env() -> Env {
    [("TRIUMPH_SECRET".to_string(), CLIENT_SECRET.to_string())].into()
}

pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(toml: &str) -> Self {
        let mut settings = Settings::from_toml(toml, &env()).expect("test settings are valid");
        token_broker::startup::discover(&mut settings, None)
            .await
            .expect("the issuers' metadata is usable");
        let clock = ManualClock::new();
        let app = Application::build_with_clock(settings, clock.clone()).expect("the broker binds");
        let base = format!("http://{}", app.address());
        let admin = format!("http://{}", app.admin_address());
        tokio::spawn(app.run_until_stopped());
        Self {
            base,
            admin,
            clock,
            http: reqwest::Client::new(),
        }
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.admin)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// `upstream`'s entry in `/admin/upstreams` (with the admin token, when `admin_token` is set).
    pub async fn upstream_status(&self, upstream: &str, admin_token: Option<&str>) -> serde_json::Value {
        let mut request = self.http.get(format!("{}/admin/upstreams", self.admin));
        if let Some(token) = admin_token {
            request = request.bearer_auth(token);
        }
        let all: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        all.as_array()
            .and_then(|list| list.iter().find(|u| u["upstream"] == upstream))
            .cloned()
            .unwrap_or_else(|| panic!("no upstream {upstream} in {all}"))
    }

    pub fn token_url(&self, upstream: &str) -> String {
        format!("{}/v1/token/{upstream}", self.base)
    }

    /// GET the token route with an API key and an optional `scope`.
    pub async fn get_token(&self, key: &str, upstream: &str, scope: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.token_url(upstream)).header("X-API-Key", key);
        if let Some(scope) = scope {
            request = request.query(&[("scope", scope)]);
        }
        request.send().await.expect("the broker answers")
    }
}

/// A token endpoint that issues `token-1`, `token-2`, … with the given lifetime.
pub struct IssueTokens {
    pub issued: Arc<AtomicUsize>,
    pub expires_in: u64,
    pub delay: Duration,
}

impl IssueTokens {
    pub fn new(expires_in: u64) -> Self {
        Self {
            issued: Arc::new(AtomicUsize::new(0)),
            expires_in,
            delay: Duration::ZERO,
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

impl Respond for IssueTokens {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&request.body).unwrap_or_default();
        let scope = form.iter().find(|(k, _)| k == "scope").map(|(_, v)| v.clone());
        let mut body = serde_json::json!({
            "access_token": format!("token-{n}"),
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        });
        if let Some(scope) = scope {
            body["scope"] = scope.into();
        }
        ResponseTemplate::new(200).set_body_json(body).set_delay(self.delay)
    }
}

/// A mock token endpoint answering every POST with `responder` (usually [`IssueTokens`]).
/// The value of the sample whose line starts with `series` (name and labels).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

pub async fn token_endpoint(responder: impl Respond + 'static) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(responder)
        .mount(&server)
        .await;
    server
}

/// How many requests the mock token endpoint received.
pub async fn upstream_calls(server: &wiremock::MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

/// A PKCS#8 private key and its public key, both PEM, from `openssl genpkey <args>`.
pub fn openssl_key(dir: &std::path::Path, name: &str, args: &[&str]) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-out"])
        .arg(&private)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(made.success());
    let exported = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl runs");
    assert!(exported.success());
    (
        private.to_str().unwrap().to_string(),
        std::fs::read_to_string(public).unwrap(),
    )
}
