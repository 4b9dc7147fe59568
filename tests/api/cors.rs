//! CORS: a strict allow-list, on successes, errors and preflights alike.

use crate::helpers::*;
use wiremock::MockServer;

const ALLOWED: &str = "https://app.example.com";

async fn app() -> (TestApp, MockServer) {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post").replace(
        "workers = 2",
        &format!("workers = 2\ncors_allowed_origins = [\"{ALLOWED}\", \"http://localhost:5173\"]"),
    );
    (TestApp::spawn(&toml).await, upstream)
}

fn assert_allowed(response: &reqwest::Response, origin: &str) {
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], origin);
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let vary: Vec<_> = headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(vary.iter().any(|v| v.contains("Origin")), "{vary:?}");
}

#[tokio::test]
async fn the_allowed_origin_is_echoed_on_success_and_on_errors() {
    let (app, _upstream) = app().await;
    let ok = app
        .http
        .get(app.token_url("triumph"))
        .header("origin", ALLOWED)
        .header("x-api-key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_allowed(&ok, ALLOWED);
    let exposed = ok.headers()["access-control-expose-headers"].to_str().unwrap();
    assert!(
        exposed.contains("Retry-After") && exposed.contains("X-Request-Id"),
        "{exposed}"
    );

    let refused = app
        .http
        .get(app.token_url("triumph"))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_allowed(&refused, ALLOWED);
}

#[tokio::test]
async fn a_preflight_from_the_allowed_origin_lists_methods_and_headers() {
    let (app, _upstream) = app().await;
    let response = app
        .http
        .request(reqwest::Method::OPTIONS, app.token_url("triumph"))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, x-requested-with")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_allowed(&response, "http://localhost:5173");
    let headers = response.headers();
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("GET") && methods.contains("POST"), "{methods}");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["authorization", "x-api-key", "content-type", "x-requested-with"] {
        assert!(allowed.contains(name), "{allowed}");
    }
}

#[tokio::test]
async fn look_alike_origins_get_no_allow_origin() {
    let (app, _upstream) = app().await;
    for origin in [
        "null",
        "https://app.example.com.evil.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://evil.com",
        "https://APP.example.com/",
    ] {
        let actual = app
            .http
            .get(app.token_url("triumph"))
            .header("origin", origin)
            .header("x-api-key", ALICE_KEY)
            .send()
            .await
            .unwrap();
        assert!(
            !actual.headers().contains_key("access-control-allow-origin"),
            "{origin}"
        );
        assert!(
            !actual.headers().contains_key("access-control-allow-credentials"),
            "{origin}"
        );
        let preflight = app
            .http
            .request(reqwest::Method::OPTIONS, app.token_url("triumph"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap();
        assert!(
            !preflight.headers().contains_key("access-control-allow-origin"),
            "{origin}"
        );
    }
}

#[tokio::test]
async fn the_browser_client_module_is_served_as_javascript_to_allowed_origins() {
    let (app, _upstream) = app().await;
    let response = app
        .http
        .get(format!("{}/v1/access-token-provider.js", app.base))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_allowed(&response, ALLOWED);
    assert_eq!(response.headers()["content-type"], "text/javascript; charset=utf-8");
    let body = response.text().await.unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/client/access-token-provider.js")).unwrap();
    assert_eq!(body, shipped);
    let other = app
        .http
        .get(format!("{}/v1/access-token-provider.js", app.base))
        .header("origin", "https://evil.com")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}
