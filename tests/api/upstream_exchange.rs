//! What the broker sends to the token endpoint (RFC 6749 §4.4, §2.3.1) and how it reads the answer.

use std::time::{Duration, Instant};

use crate::helpers::*;
use base64::Engine;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn form_of(request: &wiremock::Request) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(&request.body).unwrap()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn upstream_answering(template: ResponseTemplate) -> MockServer {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(template)
        .mount(&upstream)
        .await;
    upstream
}

#[tokio::test]
async fn client_secret_basic_form_urlencodes_the_credentials_before_base64() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(IssueTokens::new(600))
        .mount(&upstream)
        .await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_basic")).await;
    assert_eq!(
        app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await.status(),
        200
    );

    let requests = upstream.received_requests().await.unwrap();
    let request = &requests[0];
    let authorization = request.headers["authorization"].to_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(authorization.strip_prefix("Basic ").unwrap())
        .unwrap();
    // The secret holds ':', '%', '+' and a non-ASCII letter: each must arrive encoded.
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "broker-client:canary-s3cret%3Awith%25odd%2Bchars-%C3%A9"
    );
    assert_eq!(request.headers["content-type"], "application/x-www-form-urlencoded");
    let form = form_of(request);
    assert_eq!(field(&form, "grant_type"), Some("client_credentials"));
    assert_eq!(field(&form, "scope"), Some("reports:read"));
    assert_eq!(field(&form, "client_secret"), None);
    assert_eq!(field(&form, "client_id"), None);
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_body() {
    let upstream = token_endpoint(IssueTokens::new(600)).await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    assert_eq!(app.get_token(BOB_KEY, "triumph", None).await.status(), 200);

    let requests = upstream.received_requests().await.unwrap();
    assert!(!requests[0].headers.contains_key("authorization"));
    let form = form_of(&requests[0]);
    assert_eq!(field(&form, "grant_type"), Some("client_credentials"));
    assert_eq!(field(&form, "client_id"), Some(CLIENT_ID));
    assert_eq!(field(&form, "client_secret"), Some(CLIENT_SECRET));
    assert_eq!(field(&form, "scope"), Some("reports:read"));
}

#[tokio::test]
async fn audience_and_extra_params_are_sent_and_an_empty_grant_sends_no_scope() {
    let upstream = token_endpoint(IssueTokens::new(600)).await;
    let token_url = format!("{}/token", upstream.uri());
    let toml = config(&token_url, "client_secret_post")
        .replace(
            "[upstreams.other]",
            "[upstreams.auth0]\n\
             token_url = \"TOKEN_URL\"\n\
             client_id = \"id\"\n\
             client_secret = \"literal-secret\"\n\
             audience = \"https://api.example.com\"\n\
             params = { resource = \"https://api.example.com/v2\", organization = \"org_1\" }\n\
             [upstreams.other]",
        )
        .replace("TOKEN_URL", &token_url)
        .replace(
            "upstreams = { triumph = [\"reports:read\"] }",
            "upstreams = { triumph = [\"reports:read\"], auth0 = [] }",
        );
    let app = TestApp::spawn(&toml).await;
    let response = app.get_token(BOB_KEY, "auth0", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["scope"], "");

    let form = form_of(&upstream.received_requests().await.unwrap()[0]);
    assert_eq!(field(&form, "audience"), Some("https://api.example.com"));
    assert_eq!(field(&form, "resource"), Some("https://api.example.com/v2"));
    assert_eq!(field(&form, "organization"), Some("org_1"));
    assert_eq!(field(&form, "scope"), None);
}

#[tokio::test]
async fn a_refusal_is_502_without_the_upstreams_own_words() {
    let upstream = upstream_answering(ResponseTemplate::new(401).set_body_json(serde_json::json!({
        "error": "invalid_client",
        "error_description": "client secret canary-description is wrong",
    })))
    .await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "upstream_error");
    assert!(
        !text.contains("canary-description") && !text.contains("invalid_client"),
        "{text}"
    );
}

#[tokio::test]
async fn unusable_answers_are_502() {
    let bodies = [
        ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"),
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"token_type": "Bearer"})),
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "t", "token_type": "mac"})),
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "t", "expires_in": 0})),
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "x".repeat(70 * 1024)})),
        ResponseTemplate::new(302).insert_header("location", "http://127.0.0.1:9/elsewhere"),
    ];
    for template in bodies {
        let upstream = upstream_answering(template).await;
        let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
        let response = app.get_token(ALICE_KEY, "triumph", None).await;
        assert_eq!(response.status(), 502);
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "upstream_error");
    }
}

#[tokio::test]
async fn expires_in_as_a_numeric_string_is_accepted() {
    let upstream = upstream_answering(
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": "t", "token_type": "bearer", "expires_in": "3600"})),
    )
    .await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    let body: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    assert!(body["expires_in"].as_u64().unwrap() > 3500);
}

#[tokio::test]
async fn rate_limiting_is_503_with_retry_after() {
    let upstream = upstream_answering(ResponseTemplate::new(429).insert_header("retry-after", "7")).await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "upstream_unavailable");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_503_with_retry_after() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let app = TestApp::spawn(&config(&url, "client_secret_post")).await;
    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "upstream_unavailable");
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_is_504_within_its_timeout() {
    let upstream = upstream_answering(ResponseTemplate::new(200).set_delay(Duration::from_secs(10))).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post")
        .replace("timeout = \"2s\"", "timeout = \"1s\"");
    let app = TestApp::spawn(&toml).await;
    let started = Instant::now();
    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn resource_indicators_are_sent_one_field_each() {
    let upstream = upstream_answering(ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "access_token": "t", "token_type": "Bearer", "expires_in": 600,
    })))
    .await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post").replacen(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nresource = [\"https://api.example.com/\", \"https://files.example.com/\"]",
        1,
    );
    let app = TestApp::spawn(&toml).await;
    assert_eq!(app.get_token(BOB_KEY, "triumph", None).await.status(), 200);
    let form = form_of(&upstream.received_requests().await.unwrap()[0]);
    let resources: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "resource")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(resources, ["https://api.example.com/", "https://files.example.com/"]);
}
