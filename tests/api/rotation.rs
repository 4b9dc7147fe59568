//! Credential rotation: `client_secret` (or `private_key`) as an ordered list. On `invalid_client`
//! the next credential is tried once, the one that works is preferred afterwards, and a reload that
//! reorders or extends the list keeps the tokens fetched under credentials that stay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wiremock::{Request, Respond, ResponseTemplate};

use crate::helpers::process::{write, BrokerProcess};
use crate::helpers::{config, token_endpoint, upstream_calls, TestApp, ALICE_KEY, CLIENT_SECRET};

const OLD_SECRET: &str = "old-secret-no-longer-valid";

/// Issues `token-1`, `token-2`, … for `client_secret_post` requests with the right secret; any
/// other secret gets RFC 6749's `invalid_client`. Remembers the secrets it was shown, in order.
#[derive(Clone, Default)]
struct AcceptsOnly {
    issued: Arc<AtomicUsize>,
    shown: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Respond for AcceptsOnly {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let secret = url::form_urlencoded::parse(&request.body)
            .find(|(k, _)| k == "client_secret")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        self.shown.lock().push(secret.clone());
        if secret != CLIENT_SECRET {
            return ResponseTemplate::new(401).set_body_json(serde_json::json!({ "error": "invalid_client" }));
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": 600
        }))
    }
}

impl AcceptsOnly {
    /// Which of `[OLD_SECRET, CLIENT_SECRET]` each request showed: "old", "right" or "other".
    fn shown(&self) -> Vec<&'static str> {
        self.shown
            .lock()
            .iter()
            .map(|s| match s.as_str() {
                OLD_SECRET => "old",
                CLIENT_SECRET => "right",
                _ => "other",
            })
            .collect()
    }
}

/// `client_secret` as the list `secrets` (TOML values).
fn with_secrets(token_url: &str, secrets: &str) -> String {
    config(token_url, "client_secret_post").replacen(
        "client_secret = { env = \"TRIUMPH_SECRET\" }",
        &format!("client_secret = {secrets}"),
        1,
    )
}

async fn token(app: &TestApp) -> (u16, serde_json::Value) {
    let response = app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// A broker whose `triumph` presents `secrets` to an [`AcceptsOnly`] endpoint.
async fn broker_with_secrets(secrets: &str) -> (AcceptsOnly, wiremock::MockServer, TestApp) {
    let endpoint = AcceptsOnly::default();
    let server = token_endpoint(endpoint.clone()).await;
    let app = TestApp::spawn(&with_secrets(&format!("{}/token", server.uri()), secrets)).await;
    (endpoint, server, app)
}

#[tokio::test]
async fn a_refused_secret_is_followed_by_the_next_and_the_one_that_works_is_used_first_from_then_on() {
    let (endpoint, _server, app) =
        broker_with_secrets(&format!("[\"{OLD_SECRET}\", {{ env = \"TRIUMPH_SECRET\" }}]")).await;

    let (status, body) = token(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "token-1");
    assert_eq!(endpoint.shown(), ["old", "right"], "two requests the first time");

    // The token's served life ends: the next fetch goes straight to the secret that worked.
    app.clock.advance(Duration::from_secs(600));
    let (status, body) = token(&app).await;
    assert_eq!((status, body["access_token"].as_str()), (200, Some("token-2")));
    assert_eq!(
        endpoint.shown(),
        ["old", "right", "right"],
        "one request per fetch afterwards"
    );

    let metrics = app.metrics().await;
    let mut refusals: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("token_broker_upstream_credential_refusals_total{upstream=\"triumph\""))
        .collect();
    refusals.sort_unstable();
    assert_eq!(
        refusals,
        [
            "token_broker_upstream_credential_refusals_total{upstream=\"triumph\",credential=\"0\"} 1",
            "token_broker_upstream_credential_refusals_total{upstream=\"triumph\",credential=\"1\"} 0",
        ],
        "{metrics}"
    );
}

#[tokio::test]
async fn when_every_secret_is_refused_the_caller_gets_502_after_one_try_with_the_next() {
    let (endpoint, _server, app) = broker_with_secrets(&format!(
        "[\"{OLD_SECRET}\", \"another-wrong-one\", \"{CLIENT_SECRET}\"]"
    ))
    .await;
    let (status, body) = token(&app).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_error");
    assert_eq!(endpoint.shown(), ["old", "other"], "the first and one more, no further");
    // Once the refusal is no longer remembered, the next fetch starts after the two refused.
    app.clock.advance(Duration::from_secs(11));
    let (status, _) = token(&app).await;
    assert_eq!(status, 200);
    assert_eq!(endpoint.shown(), ["old", "other", "right"]);
}

/// SIGHUP with the list reordered (or grown) keeps serving the token fetched under a credential
/// that stays; a list without that credential drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_reorders_the_secrets_keeps_the_cached_token_and_one_that_drops_its_secret_does_not() {
    let endpoint = AcceptsOnly::default();
    let server = token_endpoint(endpoint.clone()).await;
    let token_url = format!("{}/token", server.uri());
    let dir = tempfile::tempdir().unwrap();
    let reload_with = |broker: &BrokerProcess, secrets: &str| {
        write(dir.path(), "broker.toml", &with_secrets(&token_url, secrets));
        let before = broker.logs().len();
        broker.signal("HUP");
        broker.wait_for_log_after(before, "configuration reloaded", Duration::from_secs(5));
    };
    let path = write(
        dir.path(),
        "broker.toml",
        &with_secrets(&token_url, &format!("[\"{OLD_SECRET}\", \"{CLIENT_SECRET}\"]")),
    );
    let broker = BrokerProcess::start(&path, &[("TRIUMPH_SECRET", CLIENT_SECRET)]);
    let http = reqwest::Client::new();
    let token = || async {
        let response = http
            .get(format!("{}/v1/token/triumph?scope=reports:read", broker.base))
            .header("X-API-Key", ALICE_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<serde_json::Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(token().await, "token-1");
    assert_eq!(upstream_calls(&server).await, 2);
    let refused = broker.wait_for_log("refused a credential", Duration::from_secs(2));
    assert!(refused.contains("\"credential\":0"), "{refused}");
    assert!(!refused.contains(OLD_SECRET), "{refused}");

    reload_with(&broker, &format!("[\"{CLIENT_SECRET}\", \"{OLD_SECRET}\"]"));
    assert_eq!(token().await, "token-1", "swapping the order keeps the cached token");
    reload_with(&broker, &format!("[\"{CLIENT_SECRET}\", \"brand-new-secret\"]"));
    assert_eq!(token().await, "token-1", "a list that still holds its secret keeps it");
    assert_eq!(upstream_calls(&server).await, 2);

    reload_with(&broker, &format!("[\"{OLD_SECRET}\", \"brand-new-secret\"]"));
    let response = http
        .get(format!("{}/v1/token/triumph?scope=reports:read", broker.base))
        .header("X-API-Key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        502,
        "the secret that fetched the token is gone, so is the token"
    );
    assert_eq!(endpoint.shown(), ["old", "right", "old", "other"]);
}
