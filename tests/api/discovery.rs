//! `issuer` instead of `token_url`: the token endpoint comes from the issuer's metadata (RFC 8414
//! first, then OpenID Connect discovery), whose `issuer` must match exactly; fetched before the
//! broker starts and refreshed daily, the last good document kept when the issuer is down.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::client_assertions::VerifyAssertion;
use crate::helpers::process::write;
use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_token-broker");

/// The usual configuration with `triumph` found by `issuer`.
fn issuer_config(issuer: &str) -> String {
    config("https://unused.example/token", "client_secret_post").replacen(
        "token_url = \"https://unused.example/token\"",
        &format!("issuer = \"{issuer}\""),
        1,
    )
}

/// Serves `document` (JSON) as the metadata at `at`.
async fn serve_metadata(server: &MockServer, at: &str, document: serde_json::Value) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(ResponseTemplate::new(200).set_body_json(document))
        .mount(server)
        .await;
}

/// Serves, once, RFC 8414 metadata at `at` naming `{issuer}/token`.
async fn serve_metadata_once(server: &MockServer, at: &str, issuer: &str) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "issuer": issuer, "token_endpoint": format!("{issuer}/token") })),
        )
        .up_to_n_times(1)
        .mount(server)
        .await;
}

/// Issues 600 s tokens (`token-1`, …) at `at`.
async fn issue_tokens_at(server: &MockServer, at: &str) {
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(IssueTokens::new(600))
        .mount(server)
        .await;
}

async fn requests_to(server: &MockServer, at: &str) -> usize {
    let requests = server.received_requests().await.unwrap_or_default();
    requests.iter().filter(|r| r.url.path() == at).count()
}

/// The issuer has a path, so RFC 8414's document is at `/.well-known/oauth-authorization-server/tenant`
/// and OpenID's at `/tenant/.well-known/openid-configuration`; both are served, naming different
/// token endpoints: the RFC 8414 one wins. The assertion's audience can be the issuer.
#[tokio::test]
async fn rfc_8414_metadata_is_preferred_and_an_assertion_may_name_the_issuer() {
    let server = MockServer::start().await;
    let issuer = format!("{}/tenant", server.uri());
    serve_metadata(
        &server,
        "/.well-known/oauth-authorization-server/tenant",
        serde_json::json!({ "issuer": issuer, "token_endpoint": format!("{}/rfc8414-token", server.uri()) }),
    )
    .await;
    serve_metadata(
        &server,
        "/tenant/.well-known/openid-configuration",
        serde_json::json!({ "issuer": issuer, "token_endpoint": format!("{}/oidc-token", server.uri()) }),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/rfc8414-token"))
        .respond_with(VerifyAssertion {
            key: DecodingKey::from_secret(CLIENT_SECRET.as_bytes()),
            alg: Algorithm::HS256,
            audience: issuer.clone(),
            jtis: Arc::new(Mutex::new(Vec::new())),
        })
        .mount(&server)
        .await;
    let toml = issuer_config(&issuer).replacen(
        "auth_method = \"client_secret_post\"",
        "auth_method = \"client_secret_jwt\"\nassertion_audience = \"issuer\"",
        1,
    );
    let app = TestApp::spawn(&toml).await;
    let response = app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(requests_to(&server, "/oidc-token").await, 0);
    assert_eq!(
        requests_to(&server, "/tenant/.well-known/openid-configuration").await,
        0
    );
}

/// After start-up the issuer stops answering: a day later the refresh fails, the last good
/// document stays in use and tokens keep coming.
#[tokio::test]
async fn the_issuer_going_down_after_start_up_changes_nothing() {
    let server = MockServer::start().await;
    let issuer = server.uri();
    let metadata_path = "/.well-known/oauth-authorization-server";
    serve_metadata_once(&server, metadata_path, &issuer).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    issue_tokens_at(&server, "/token").await;
    let app = TestApp::spawn(&issuer_config(&issuer)).await;
    let token = |expected: &'static str| {
        let app = &app;
        async move {
            let response = app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await;
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["access_token"], expected);
        }
    };
    token("token-1").await;
    assert_eq!(requests_to(&server, metadata_path).await, 1);

    app.clock.advance(Duration::from_secs(25 * 3600));
    token("token-2").await;
    // The refresh runs in the background; it fails (503, then 503 at OpenID's place too).
    for _ in 0..100 {
        if requests_to(&server, "/.well-known/openid-configuration").await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        requests_to(&server, metadata_path).await,
        2,
        "a day later it is asked again"
    );
    app.clock.advance(Duration::from_secs(600));
    token("token-3").await;
}

/// A document served for the issuer but naming another one (a mix-up, or a server impersonating
/// the issuer) stops `check` and `serve`; both name the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_naming_another_issuer_fails_check_and_serve_refuses_to_start() {
    let server = MockServer::start().await;
    serve_metadata(
        &server,
        "/.well-known/oauth-authorization-server",
        serde_json::json!({ "issuer": "https://login.attacker.example", "token_endpoint": "https://login.attacker.example/token" }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broker.toml", &issuer_config(&server.uri()));
    let run = |command: &str| {
        let mut child = Command::new(BIN)
            .args([command, "--config"])
            .arg(&file)
            .env("TRIUMPH_SECRET", CLIENT_SECRET)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // `serve` would keep running if it started: give it a bounded time to refuse.
        for _ in 0..200 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            panic!("`{command}` did not stop");
        }
        child.wait_with_output().unwrap()
    };
    for command in ["check", "serve"] {
        let output = run(command);
        assert!(!output.status.success(), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("upstreams.triumph.issuer: ")
                && stderr.contains("names the issuer `https://login.attacker.example`"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains(CLIENT_SECRET));
    }
}

/// `check` names the endpoint it found and where, and says when the server does not list the
/// configured `auth_method` (without failing: servers under-advertise).
#[test]
fn check_shows_the_discovered_endpoint_and_remarks_on_an_unlisted_auth_method() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(async {
        let server = MockServer::start().await;
        serve_metadata(
            &server,
            "/.well-known/openid-configuration",
            serde_json::json!({
                "issuer": server.uri(),
                "token_endpoint": format!("{}/oauth/token", server.uri()),
                "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            }),
        )
        .await;
        server
    });
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broker.toml", &issuer_config(&server.uri()));
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .env("TRIUMPH_SECRET", CLIENT_SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(
            "warning: upstreams.triumph.auth_method: `client_secret_post` is not among the issuer's \
             token_endpoint_auth_methods_supported (private_key_jwt, client_secret_basic)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "upstream triumph: token endpoint {0}/oauth/token (issuer {0}, metadata {0}/.well-known/openid-configuration)",
            server.uri()
        )),
        "{stdout}"
    );
}

/// A day later the issuer's document names a token endpoint on another host: the refresh is not
/// followed (where the credentials go changes only by an operator's reload), the admin API says
/// why, and tokens keep coming from the endpoint in use.
#[tokio::test]
async fn a_refresh_that_moves_the_token_endpoint_to_another_host_is_not_followed() {
    let server = MockServer::start().await;
    let issuer = server.uri();
    let metadata_path = "/.well-known/oauth-authorization-server";
    serve_metadata_once(&server, metadata_path, &issuer).await;
    let moved = issuer.replace("127.0.0.1", "localhost");
    Mock::given(method("GET"))
        .and(path(metadata_path))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "issuer": issuer, "token_endpoint": format!("{moved}/elsewhere") })),
        )
        .mount(&server)
        .await;
    issue_tokens_at(&server, "/token").await;
    let app = TestApp::spawn(&issuer_config(&issuer)).await;
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    app.clock.advance(Duration::from_secs(25 * 3600));
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        let triumph = app.upstream_status("triumph", None).await;
        if !triumph["discovery"]["last_error"].is_null() || std::time::Instant::now() > deadline {
            break triumph;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = status["discovery"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("another host"), "{status}");
    assert_eq!(status["token_endpoint"], format!("{issuer}/token"));
    app.clock.advance(Duration::from_secs(600));
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    assert_eq!(requests_to(&server, "/elsewhere").await, 0);
}

/// A SIGHUP whose new configuration names an issuer that never answers does not hold up SIGTERM:
/// the reload runs beside the signal loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waiting_on_an_issuer_does_not_delay_shutdown() {
    use crate::helpers::process::BrokerProcess;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = token_endpoint(IssueTokens::new(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&format!("{}/token", endpoint.uri()), "client_secret_post");
    let file = write(dir.path(), "broker.toml", &toml);
    let mut broker = BrokerProcess::start(&file, &[("TRIUMPH_SECRET", CLIENT_SECRET)]);
    let hanging = issuer_config(&format!("http://{}", silent.local_addr().unwrap())).replacen(
        "timeout = \"2s\"",
        "timeout = \"25s\"",
        1,
    );
    write(dir.path(), "broker.toml", &hanging);
    broker.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let asked = std::time::Instant::now();
    broker.signal("TERM");
    let status = broker.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(asked.elapsed() < Duration::from_secs(5), "{:?}", asked.elapsed());
    drop(silent);
}
