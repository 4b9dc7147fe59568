//! What operators see on the admin listener and in the answers: metrics that count, readiness,
//! request ids, trusted proxies, limits.

use crate::helpers::*;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn app_with(extra_server_settings: &str) -> (TestApp, MockServer) {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post")
        .replace("workers = 2", &format!("workers = 2\n{extra_server_settings}"));
    (TestApp::spawn(&toml).await, upstream)
}

/// The series alerts read: the circuit (0 while closed, 1 once open), the hourly quota (fetches
/// counted against `max_tokens_per_hour`, and the limit), and readiness.
#[tokio::test]
async fn the_circuit_quota_and_readiness_series_follow_the_broker() {
    let failing = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(500))
        .mount(&failing)
        .await;
    let toml = config(&format!("{}/token", failing.uri()), "client_secret_post").replacen(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nmax_tokens_per_hour = 100",
        1,
    );
    let app = TestApp::spawn(&toml).await;
    let text = app.metrics().await;
    assert_eq!(
        sample(&text, r#"token_broker_upstream_circuit_open{upstream="triumph"}"#),
        0.0
    );
    assert_eq!(
        sample(&text, r#"token_broker_upstream_quota_limit{upstream="triumph"}"#),
        100.0
    );
    assert_eq!(
        sample(
            &text,
            r#"token_broker_upstream_quota_fetches_total{upstream="triumph"}"#
        ),
        0.0
    );
    assert_eq!(sample(&text, "token_broker_ready"), 1.0);
    // Five failed exchanges (each retried inside it) open the circuit.
    for _ in 0..5 {
        assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 503);
    }
    let text = app.metrics().await;
    assert_eq!(
        sample(&text, r#"token_broker_upstream_circuit_open{upstream="triumph"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"token_broker_upstream_quota_fetches_total{upstream="triumph"}"#
        ),
        5.0
    );
}

#[tokio::test]
async fn the_metrics_count_what_happened() {
    let (app, _upstream) = app_with("").await;
    for _ in 0..3 {
        assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    }
    assert_eq!(app.get_token("wrong", "triumph", None).await.status(), 401);
    let text = app.metrics().await;
    assert_eq!(
        sample(&text, r#"token_broker_cache_misses_total{upstream="triumph"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"token_broker_cache_hits_total{upstream="triumph"}"#),
        2.0
    );
    assert_eq!(
        sample(&text, r#"token_broker_tokens_served_total{upstream="triumph"}"#),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            r#"token_broker_upstream_requests_total{upstream="triumph",outcome="success"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"token_broker_upstream_request_duration_seconds_count{upstream="triumph"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"token_broker_http_requests_total{route="/v1/token/{upstream}",status="200"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            r#"token_broker_http_requests_total{route="/v1/token/{upstream}",status="401"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn failed_upstream_requests_are_counted_by_outcome() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&upstream)
        .await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 503);
    let text = app.metrics().await;
    assert_eq!(
        sample(
            &text,
            r#"token_broker_upstream_requests_total{upstream="triumph",outcome="server_error"}"#
        ),
        3.0
    );
}

#[tokio::test]
async fn readyz_is_200_while_serving_and_metrics_are_not_on_the_public_port() {
    let (app, _upstream) = app_with("").await;
    assert_eq!(
        app.http
            .get(format!("{}/readyz", app.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.http
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn each_answer_carries_a_request_id_and_an_untrusted_peer_cannot_choose_it() {
    let (app, _upstream) = app_with("").await;
    let first = app.get_token(ALICE_KEY, "triumph", None).await;
    let second = app.get_token(ALICE_KEY, "triumph", None).await;
    let (a, b) = (&first.headers()["x-request-id"], &second.headers()["x-request-id"]);
    assert_ne!(a, b);
    assert!(a.len() >= 16);
    let forged = app
        .http
        .get(app.token_url("triumph"))
        .header("x-api-key", ALICE_KEY)
        .header("x-request-id", "chosen-by-client")
        .send()
        .await
        .unwrap();
    assert_ne!(forged.headers()["x-request-id"], "chosen-by-client");
}

#[tokio::test]
async fn a_trusted_proxy_passes_its_request_id_on() {
    let (app, _upstream) = app_with("trusted_proxies = [\"127.0.0.0/8\"]").await;
    let response = app
        .http
        .get(app.token_url("triumph"))
        .header("x-api-key", ALICE_KEY)
        .header("x-request-id", "edge-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "edge-7f3a");
    // Ids that are not plain tokens are replaced, even from a trusted proxy.
    let odd = app
        .http
        .get(app.token_url("triumph"))
        .header("x-api-key", ALICE_KEY)
        .header("x-request-id", "a b\"c")
        .send()
        .await
        .unwrap();
    assert_ne!(odd.headers()["x-request-id"], "a b\"c");
}

#[tokio::test]
async fn an_identity_over_its_rate_gets_429_with_retry_after() {
    let (app, _upstream) = app_with("rate_limit_per_second = 1\nrate_limit_burst = 3").await;
    for _ in 0..3 {
        assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    }
    let limited = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(limited.headers()["cache-control"], "no-store");
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Another identity is not affected.
    assert_eq!(app.get_token(BOB_KEY, "triumph", None).await.status(), 200);
}

#[tokio::test]
async fn headers_over_the_configured_size_are_refused() {
    let (app, upstream) = app_with("max_header_bytes = 16384").await;
    let response = app
        .http
        .get(app.token_url("triumph"))
        .header("x-api-key", ALICE_KEY)
        .header("x-padding", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(upstream_calls(&upstream).await, 0);
}
