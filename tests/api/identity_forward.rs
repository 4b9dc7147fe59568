//! Forward-auth to the app's own session endpoint, and the CSRF header it requires.

use std::time::{Duration, Instant};

use crate::helpers::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const GRANTS: &str = r#"
[[grants]]
authenticators = ["forward"]
groups = ["staff"]
upstreams = { triumph = ["reports:read"] }
"#;

async fn session_endpoint() -> MockServer {
    let session = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/session"))
        .and(header("cookie", "app_session=good"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "user": {"id": "u-42"}, "email": "a@corp.com", "groups": ["staff"],
        })))
        .mount(&session)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/session"))
        .and(header("cookie", "app_session=slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
        .mount(&session)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/session"))
        .and(header("cookie", "app_session=broken"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&session)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&session)
        .await;
    session
}

async fn app_with(session: &MockServer) -> (TestApp, MockServer) {
    app_forwarding(session, r#"["app_session"]"#).await
}

/// An app whose forward authenticator forwards `cookies` (a TOML list).
async fn app_forwarding(session: &MockServer, cookies: &str) -> (TestApp, MockServer) {
    app_forwarding_for(session, cookies, "30s").await
}

/// As [`app_forwarding`], its decisions kept for `cache_ttl`.
async fn app_forwarding_for(session: &MockServer, cookies: &str, cache_ttl: &str) -> (TestApp, MockServer) {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let authenticator = format!(
        r#"
        [[authenticators]]
        type = "forward"
        url = "{}/api/session"
        forward_cookies = {cookies}
        subject_field = "user.id"
        email_field = "email"
        groups_field = "groups"
        cache_ttl = "{cache_ttl}"
        timeout = "1s"
        "#,
        session.uri(),
    );
    let toml = format!(
        "{}{authenticator}{GRANTS}",
        config(&format!("{}/token", upstream.uri()), "client_secret_post")
    );
    (TestApp::spawn(&toml).await, upstream)
}

async fn with_cookie(app: &TestApp, cookie: &str, csrf: bool) -> reqwest::Response {
    let mut request = app.http.get(app.token_url("triumph")).header("cookie", cookie);
    if csrf {
        request = request.header("X-Requested-With", "fetch");
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_session_cookie_gets_that_users_grants() {
    let session = session_endpoint().await;
    let (app, _upstream) = app_with(&session).await;
    let response = with_cookie(&app, "app_session=good", true).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["scope"], "reports:read");
}

#[tokio::test]
async fn only_the_configured_cookie_is_forwarded() {
    let session = session_endpoint().await;
    let (app, _upstream) = app_with(&session).await;
    let response = with_cookie(&app, "tracking=abc; app_session=good; other=secret", true).await;
    assert_eq!(response.status(), 200);
    let requests = session.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].headers["cookie"], "app_session=good");
    assert!(!requests[0].headers.contains_key("x-requested-with"));
}

#[tokio::test]
async fn several_configured_cookies_are_forwarded_in_the_configured_order() {
    let session = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("cookie", "app_session=good; app_tenant=t-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"user": {"id": "u-42"}, "groups": ["staff"]})))
        .mount(&session)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&session)
        .await;
    let (app, _upstream) = app_forwarding(&session, r#"["app_session", "app_tenant"]"#).await;
    let response = with_cookie(&app, "app_tenant=t-1; tracking=abc; app_session=good", true).await;
    assert_eq!(response.status(), 200);
    let requests = session.received_requests().await.unwrap();
    assert_eq!(requests[0].headers["cookie"], "app_session=good; app_tenant=t-1");
}

#[tokio::test]
async fn a_cookie_request_without_the_csrf_header_is_403() {
    let session = session_endpoint().await;
    let (app, upstream) = app_with(&session).await;
    let response = with_cookie(&app, "app_session=good", false).await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "csrf_header_missing");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn a_session_the_app_refuses_is_401() {
    let session = session_endpoint().await;
    let (app, upstream) = app_with(&session).await;
    let response = with_cookie(&app, "app_session=expired", true).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "unauthenticated");
    assert_eq!(upstream_calls(&upstream).await, 0);
}

#[tokio::test]
async fn a_hanging_or_failing_session_endpoint_is_503_within_its_timeout() {
    let session = session_endpoint().await;
    let (app, _upstream) = app_with(&session).await;
    let started = Instant::now();
    let response = with_cookie(&app, "app_session=slow", true).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "auth_unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    let response = with_cookie(&app, "app_session=broken", true).await;
    assert_eq!(response.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_requests_with_one_cookie_make_one_session_call() {
    let session = session_endpoint().await;
    let (app, _upstream) = app_with(&session).await;
    let concurrent = join_all((0..50).map(|_| with_cookie(&app, "app_session=good", true))).await;
    assert!(concurrent.iter().all(|r| r.status() == 200));
    for _ in 0..50 {
        assert_eq!(with_cookie(&app, "app_session=good", true).await.status(), 200);
    }
    assert_eq!(upstream_calls(&session).await, 1);
}

/// A decision is used for `cache_ttl`, then the session endpoint is asked again: a session the app
/// ended meanwhile is refused, however many times the worker that answers has seen the cookie.
#[tokio::test]
async fn after_cache_ttl_a_session_the_app_ended_is_refused() {
    let session = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/session"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"user": {"id": "u-42"}, "groups": ["staff"]})))
        .mount(&session)
        .await;
    let (app, _upstream) = app_forwarding_for(&session, r#"["app_session"]"#, "1s").await;
    for _ in 0..20 {
        assert_eq!(with_cookie(&app, "app_session=good", true).await.status(), 200);
    }
    assert_eq!(upstream_calls(&session).await, 1, "one decision, then it is remembered");

    // The user logs out of the app.
    session.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&session)
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for _ in 0..5 {
        assert_eq!(with_cookie(&app, "app_session=good", true).await.status(), 401);
    }
    assert_eq!(upstream_calls(&session).await, 1, "the refusal is remembered in turn");
}

#[tokio::test]
async fn without_the_session_cookie_the_request_is_unauthenticated() {
    let session = session_endpoint().await;
    let (app, _upstream) = app_with(&session).await;
    let response = with_cookie(&app, "other=good", true).await;
    assert_eq!(response.status(), 401);
    assert_eq!(upstream_calls(&session).await, 0);
}
