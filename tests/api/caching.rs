//! The caching rules of INTERFACE.md, counted at the mock token endpoint.

use std::time::Duration;

use crate::helpers::*;
use futures_util::future::join_all;
use serde_json::Value;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn app_with(upstream: &MockServer) -> TestApp {
    TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_requests_reach_the_token_endpoint_once() {
    let upstream = token_endpoint(IssueTokens::new(3600).with_delay(Duration::from_millis(300))).await;
    let app = app_with(&upstream).await;
    let requests = (0..500).map(|_| app.get_token(ALICE_KEY, "triumph", Some("reports:read")));
    let responses = join_all(requests).await;
    let mut tokens = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        tokens.push(response.json::<Value>().await.unwrap()["access_token"].clone());
    }
    assert!(tokens.iter().all(|t| *t == "token-1"));
    assert_eq!(upstream_calls(&upstream).await, 1);
}

#[tokio::test]
async fn scope_order_and_repetition_share_one_entry() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = app_with(&upstream).await;
    let mut tokens = Vec::new();
    for scope in [
        "reports:read reports:write",
        "reports:write reports:read",
        "reports:write  reports:read reports:write",
    ] {
        let body: Value = app
            .get_token(ALICE_KEY, "triumph", Some(scope))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["scope"], "reports:read reports:write");
        tokens.push(body["access_token"].clone());
    }
    // The whole grant, asked for without a scope, is the same set too.
    let body: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    tokens.push(body["access_token"].clone());
    assert!(tokens.iter().all(|t| *t == "token-1"), "{tokens:?}");
    assert_eq!(upstream_calls(&upstream).await, 1);
    // A different set is a different entry.
    let body: Value = app
        .get_token(ALICE_KEY, "triumph", Some("reports:read"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["access_token"], "token-2");
}

#[tokio::test]
async fn a_failed_fetch_is_not_cached_and_the_next_request_retries() {
    let upstream = MockServer::start().await;
    // Three 500s: the first request's attempt and both of its retries fail.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("<html>oops</html>"))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(IssueTokens::new(3600))
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    let failed = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(failed.status(), 503);
    assert!(failed.headers().contains_key("retry-after"));
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
    assert!(!body.to_string().contains("oops"));
    let retried = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(retried.status(), 200);
    assert_eq!(retried.json::<Value>().await.unwrap()["access_token"], "token-1");
    assert_eq!(upstream_calls(&upstream).await, 4);
}

#[tokio::test]
async fn a_short_lived_token_loses_a_quarter_of_its_life_and_is_fetched_again_after_expiry() {
    let upstream = token_endpoint(IssueTokens::new(3)).await;
    let app = app_with(&upstream).await;
    let first: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(first["access_token"], "token-1");
    // skew = min(60 s, 3 s / 4) = 0.75 s, so at most 2.25 s are left to serve.
    assert!(first["expires_in"].as_u64().unwrap() <= 2, "{first}");

    // Before refresh-ahead starts (80% ± 5% of 2.25 s).
    app.clock.advance(Duration::from_millis(1500));
    let still: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(still["access_token"], "token-1");
    assert_eq!(upstream_calls(&upstream).await, 1);

    app.clock.advance(Duration::from_millis(800));
    let renewed: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(renewed["access_token"], "token-2");
    assert_eq!(upstream_calls(&upstream).await, 2);
}

#[tokio::test]
async fn a_missing_expires_in_uses_the_default_lifetime() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "no-expiry", "token_type": "Bearer"})),
        )
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    let body: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    // default_ttl 5 min less min(60 s, 75 s).
    assert!((238..=240).contains(&body["expires_in"].as_u64().unwrap()), "{body}");
}

#[tokio::test]
async fn callers_with_different_grants_get_tokens_for_their_own_scopes() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("scope=reports%3Aread+reports%3Awrite"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "rw", "expires_in": 600})),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "r", "expires_in": 600})),
        )
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    let alice: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    let bob: Value = app.get_token(BOB_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(alice["access_token"], "rw");
    assert_eq!(bob["access_token"], "r");
}
