//! The token route as the browser sees it: body, headers, errors, and what reaches the upstream.

use std::time::Duration;

use crate::helpers::*;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

async fn setup() -> (TestApp, MockServer) {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(IssueTokens::new(3600))
        .mount(&upstream)
        .await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    (app, upstream)
}

fn assert_token_headers(response: &reqwest::Response) {
    let headers = response.headers();
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
}

async fn error_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_token_headers(&response);
    let body: Value = response.json().await.unwrap();
    assert!(body["error_description"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn a_granted_caller_gets_the_token_with_no_store_headers() {
    let (app, upstream) = setup().await;
    let response = app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await;
    assert_eq!(response.status(), 200);
    assert_token_headers(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["access_token"], "token-1");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "reports:read");
    // 3600 s less the 60 s skew.
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((3538..=3540).contains(&expires_in), "{expires_in}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires_at = body["expires_at"].as_u64().unwrap();
    assert!(
        expires_at.abs_diff(now + expires_in) <= 2,
        "{expires_at} vs {now} + {expires_in}"
    );
    assert_eq!(upstream_calls(&upstream).await, 1);
}

#[tokio::test]
async fn the_second_call_returns_the_same_token_with_a_smaller_expires_in() {
    let (app, upstream) = setup().await;
    let first: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    app.clock.advance(Duration::from_secs(100));
    let second: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(first["access_token"], second["access_token"]);
    assert_eq!(first["scope"], "reports:read reports:write");
    let (a, b) = (
        first["expires_in"].as_u64().unwrap(),
        second["expires_in"].as_u64().unwrap(),
    );
    assert!(b <= a - 100, "expires_in went from {a} to {b}");
    assert_eq!(upstream_calls(&upstream).await, 1);
}

#[tokio::test]
async fn post_takes_the_scope_from_a_form_or_json_body() {
    let (app, upstream) = setup().await;
    let form = app
        .http
        .post(app.token_url("triumph"))
        .header("X-API-Key", ALICE_KEY)
        .form(&[("scope", "reports:write")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    assert_token_headers(&form);
    let form: Value = form.json().await.unwrap();
    assert_eq!(form["scope"], "reports:write");
    let json: Value = app
        .http
        .post(app.token_url("triumph"))
        .header("X-API-Key", ALICE_KEY)
        .json(&serde_json::json!({"scope": "reports:write"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["access_token"], form["access_token"]);
    let empty = app
        .http
        .post(app.token_url("triumph"))
        .header("X-API-Key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 200);
    assert_eq!(empty.json::<Value>().await.unwrap()["scope"], "reports:read");
    assert_eq!(upstream_calls(&upstream).await, 2);
}

#[tokio::test]
async fn no_credential_is_401_with_a_challenge_and_reaches_nothing() {
    let (app, upstream) = setup().await;
    let response = app.http.get(app.token_url("triumph")).send().await.unwrap();
    let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(error_of(response, 401).await["error"], "unauthenticated");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn a_wrong_key_is_401() {
    let (app, upstream) = setup().await;
    let response = app.get_token("not-a-key", "triumph", None).await;
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(error_of(response, 401).await["error"], "unauthenticated");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn identity_headers_sent_by_the_client_are_never_believed() {
    let (app, upstream) = setup().await;
    for header in [
        "X-Forwarded-User",
        "X-Auth-Request-User",
        "X-Remote-User",
        "Remote-User",
    ] {
        let response = app
            .http
            .get(app.token_url("triumph"))
            .header(header, "alice")
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response, 401).await["error"], "unauthenticated", "{header}");
    }
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn a_caller_without_a_grant_is_403() {
    let (app, upstream) = setup().await;
    let response = app.get_token(CAROL_KEY, "triumph", None).await;
    assert_eq!(error_of(response, 403).await["error"], "access_denied");
    let response = app.get_token(ALICE_KEY, "other", None).await;
    assert_eq!(error_of(response, 403).await["error"], "access_denied");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn a_scope_beyond_the_grant_is_403() {
    let (app, upstream) = setup().await;
    let response = app
        .get_token(BOB_KEY, "triumph", Some("reports:read reports:write"))
        .await;
    assert_eq!(error_of(response, 403).await["error"], "access_denied");
    let response = app.get_token(ALICE_KEY, "triumph", Some("admin")).await;
    assert_eq!(error_of(response, 403).await["error"], "access_denied");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn an_unknown_upstream_is_404_but_only_for_authenticated_callers() {
    let (app, upstream) = setup().await;
    let response = app.get_token(ALICE_KEY, "nope", None).await;
    assert_eq!(error_of(response, 404).await["error"], "unknown_upstream");
    let response = app.http.get(app.token_url("nope")).send().await.unwrap();
    assert_eq!(error_of(response, 401).await["error"], "unauthenticated");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn malformed_scopes_and_bodies_are_400() {
    let (app, upstream) = setup().await;
    let response = app
        .get_token(ALICE_KEY, "triumph", Some("reports:read \"quoted\""))
        .await;
    assert_eq!(error_of(response, 400).await["error"], "invalid_request");
    let response = app
        .http
        .post(app.token_url("triumph"))
        .header("X-API-Key", ALICE_KEY)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response, 400).await["error"], "invalid_request");
    let response = app
        .http
        .post(app.token_url("triumph"))
        .header("X-API-Key", ALICE_KEY)
        .header("Content-Type", "text/plain")
        .body("scope=reports:read")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response, 400).await["error"], "invalid_request");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let (app, upstream) = setup().await;
    let response = app
        .http
        .post(app.token_url("triumph"))
        .header("X-API-Key", ALICE_KEY)
        .form(&[("scope", "a".repeat(20 * 1024))])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response, 413).await["error"], "invalid_request");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn other_methods_are_405_with_the_same_headers() {
    let (app, _upstream) = setup().await;
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let response = app.http.request(method, app.token_url("triumph")).send().await.unwrap();
        assert_eq!(response.headers()["allow"], "GET, POST");
        error_of(response, 405).await;
    }
}

#[tokio::test]
async fn paths_next_to_the_token_routes_are_404_with_the_same_headers() {
    let (app, upstream) = setup().await;
    for tail in [
        "",
        "triumph/",
        "triumph/extra",
        "triumph/refresh/",
        "triumph/refresh/extra",
    ] {
        let response = app
            .http
            .get(app.token_url(tail))
            .header("X-API-Key", ALICE_KEY)
            .send()
            .await
            .unwrap();
        let body = error_of(response, 404).await;
        assert_eq!(body["error"], "not_found", "{tail}: {body}");
    }
    assert_eq!(upstream_calls(&upstream).await, 0);
}

/// The header limit answers before any route; under the token routes its 431 still carries the
/// headers every answer there has.
#[tokio::test]
async fn a_431_under_the_token_routes_carries_the_same_headers() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post")
        .replace("workers = 2", "workers = 2\nmax_header_bytes = 2048");
    let app = TestApp::spawn(&toml).await;
    for tail in ["triumph", "triumph/refresh"] {
        let response = app
            .http
            .get(app.token_url(tail))
            .header("X-API-Key", ALICE_KEY)
            .header("X-Padding", "p".repeat(4096))
            .send()
            .await
            .unwrap();
        let body = error_of(response, 431).await;
        assert_eq!(body["error"], "invalid_request", "{tail}: {body}");
    }
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn healthz_answers_on_the_admin_listener_only() {
    let (app, _upstream) = setup().await;
    let response = app.http.get(format!("{}/healthz", app.admin)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let public = app.http.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(public.status(), 404);
}
