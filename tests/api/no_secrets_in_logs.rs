//! A canary secret, the API keys and the tokens never appear in a log line, even at trace level.
//! This binary installs its own global subscriber, so it holds this one test.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::helpers::*;
use base64::Engine;
use token_broker::settings::Settings;
use tracing_subscriber::fmt::MakeWriter;
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const ACCESS_TOKEN: &str = "canary-access-token-4f9a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_at_trace_level_holds_a_secret_key_or_token() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .init();

    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("scope=reports%3Aread+reports%3Awrite"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": "invalid_client",
            "error_description": "canary-upstream-description",
        })))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 600,
        })))
        .mount(&upstream)
        .await;

    for auth_method in ["client_secret_basic", "client_secret_post"] {
        let toml = config(&format!("{}/token", upstream.uri()), auth_method);
        let app = TestApp::spawn(&toml).await;
        assert_eq!(app.get_token(BOB_KEY, "triumph", None).await.status(), 200);
        assert_eq!(app.get_token(BOB_KEY, "triumph", None).await.status(), 200);
        assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 502);
        assert_eq!(app.get_token("wrong-canary-key", "triumph", None).await.status(), 401);
        let settings = Settings::from_toml(&toml, &env()).unwrap();
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains(CLIENT_SECRET) && !debug.contains(ALICE_KEY),
            "Debug of the settings leaks"
        );
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The capture works: the broker's own lines are there.
    assert!(logs.contains("token served"), "nothing was captured");
    assert!(logs.contains(" TRACE "), "trace-level lines were captured");
    assert!(logs.contains("the token endpoint refused the broker's request"));
    assert!(logs.contains("invalid_client"), "the RFC 6749 error code is logged");

    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", encode(CLIENT_ID), encode(CLIENT_SECRET)));
    let forbidden = [
        ("the client secret", CLIENT_SECRET.to_string()),
        ("the form-encoded client secret", encode(CLIENT_SECRET)),
        ("the Basic credentials", basic),
        ("an access token", ACCESS_TOKEN.to_string()),
        ("an API key", ALICE_KEY.to_string()),
        ("an API key", BOB_KEY.to_string()),
        ("a refused API key", "wrong-canary-key".to_string()),
        (
            "the upstream's error_description",
            "canary-upstream-description".to_string(),
        ),
    ];
    for (what, needle) in forbidden {
        for line in logs.lines() {
            assert!(!line.contains(&needle), "{what} appears in a log line: {line}");
        }
    }
}
