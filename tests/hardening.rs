//! Hostile inputs found by a security review, each reproduced against the running broker: the
//! behaviour a caller (or an attacker) gets, and what reaches the token endpoint.

mod helpers;

use std::time::Duration;

use helpers::*;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn status_and_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_string())
}

/// A `Retry-After` of 2⁶⁴−1 seconds once overflowed `Instant + Duration` while the upstream's lock
/// was held: that request panicked and every later one to the upstream panicked on the poisoned lock.
#[tokio::test]
async fn a_huge_retry_after_neither_panics_nor_poisons_the_upstream() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "18446744073709551615"))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(IssueTokens::new(600))
        .mount(&upstream)
        .await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;

    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        retry_after <= 3600,
        "the pause is clamped to an hour, not {retry_after} s"
    );
    assert_eq!(status_and_error(response).await, (503, "upstream_unavailable".into()));

    // While paused, answers come from memory, without a panic.
    let again = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(status_and_error(again).await, (503, "upstream_unavailable".into()));
    assert_eq!(upstream_calls(&upstream).await, 1);

    app.clock.advance(Duration::from_secs(retry_after + 1));
    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(
        response.status(),
        200,
        "the upstream serves again once the pause is over"
    );
    assert_eq!(upstream_calls(&upstream).await, 2);
}
