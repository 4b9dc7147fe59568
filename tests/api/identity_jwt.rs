//! The `jwt` authenticator against a stand-in issuer: every forgery refused, keys rotated and
//! re-fetched sparingly, Google's preset, and grants by verified email.

use std::time::Duration;

use crate::helpers::idp::*;
use crate::helpers::*;
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

const USER_GRANT: &str = r#"
[[grants]]
authenticators = ["jwt"]
subjects = ["user-1"]
upstreams = { triumph = ["reports:read"] }

[[grants]]
email_domains = ["corp.com"]
upstreams = { triumph = ["reports:write"] }
"#;

async fn upstream() -> MockServer {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    upstream
}

async fn app_for(upstream: &MockServer, authenticators: &str) -> TestApp {
    let toml = format!(
        "{}{authenticators}{USER_GRANT}",
        config(&format!("{}/token", upstream.uri()), "client_secret_post")
    );
    TestApp::spawn(&toml).await
}

async fn with_bearer(app: &TestApp, token: &str) -> reqwest::Response {
    app.http
        .get(app.token_url("triumph"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_valid_id_token_of_each_default_algorithm_is_accepted() {
    let idp = Idp::start(&["rsa-a", "ec-p256", "ed25519"], None).await;
    let upstream = upstream().await;
    let app = app_for(&upstream, &jwt_authenticator(&idp.issuer)).await;
    for key in ["rsa-a", "ec-p256", "ed25519"] {
        let response = with_bearer(&app, &idp.token(key, "user-1")).await;
        assert_eq!(response.status(), 200, "{key}");
        assert_eq!(response.json::<Value>().await.unwrap()["scope"], "reports:read");
    }
    assert_eq!(idp.jwks_fetches(), 1);
}

#[tokio::test]
async fn every_forgery_is_401_and_reaches_no_upstream() {
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = upstream().await;
    let app = app_for(&upstream, &jwt_authenticator(&idp.issuer)).await;
    let valid = idp.claims("user-1");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = valid.clone();
        change(&mut claims);
        claims
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned_header = b64(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-a"}));
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-a".into());
        jsonwebtoken::encode(
            &header,
            &valid,
            &EncodingKey::from_secret(fixture("rsa-a.jwk.json").as_bytes()),
        )
        .unwrap()
    };
    let forgeries: Vec<(&str, String)> = vec![
        ("alg none", format!("{unsigned_header}.{}.", b64(&valid))),
        (
            "alg none with a signature",
            format!("{unsigned_header}.{}.c2ln", b64(&valid)),
        ),
        ("HS256 keyed with the public JWK", hs256_with_public_key),
        (
            "the right kid, another key",
            sign_as("rsa-b", Algorithm::RS256, Some("rsa-a"), &valid),
        ),
        (
            "expired",
            sign_as(
                "rsa-a",
                Algorithm::RS256,
                Some("rsa-a"),
                &with(&|c| c["exp"] = json!(now() - 3600)),
            ),
        ),
        (
            "nbf in the future",
            sign_as(
                "rsa-a",
                Algorithm::RS256,
                Some("rsa-a"),
                &with(&|c| c["nbf"] = json!(now() + 3600)),
            ),
        ),
        (
            "wrong aud",
            sign_as(
                "rsa-a",
                Algorithm::RS256,
                Some("rsa-a"),
                &with(&|c| c["aud"] = json!("someone-else")),
            ),
        ),
        (
            "wrong iss",
            sign_as(
                "rsa-a",
                Algorithm::RS256,
                Some("rsa-a"),
                &with(&|c| c["iss"] = json!("https://evil.example.com")),
            ),
        ),
        (
            "look-alike iss",
            sign_as(
                "rsa-a",
                Algorithm::RS256,
                Some("rsa-a"),
                &with(&|c| c["iss"] = json!(format!("{}.evil.com", idp.issuer))),
            ),
        ),
        (
            "iss with a trailing slash",
            sign_as(
                "rsa-a",
                Algorithm::RS256,
                Some("rsa-a"),
                &with(&|c| c["iss"] = json!(format!("{}/", idp.issuer))),
            ),
        ),
        (
            "missing exp",
            sign_as(
                "rsa-a",
                Algorithm::RS256,
                Some("rsa-a"),
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
        ),
        (
            "a 100 KB token",
            sign_as(
                "rsa-a",
                Algorithm::RS256,
                Some("rsa-a"),
                &with(&|c| c["pad"] = json!("x".repeat(100_000))),
            ),
        ),
        ("malformed segments", "abc.def".to_string()),
        ("not base64", "a$b.c$d.e$f".to_string()),
        ("not JSON", "YWJj.ZGVm.Z2hp".to_string()),
        ("tampered payload", {
            let token = idp.token("rsa-a", "user-1");
            let parts: Vec<&str> = token.split('.').collect();
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&with(&|c| c["sub"] = json!("admin"))),
                parts[2]
            )
        }),
    ];
    for (what, token) in forgeries {
        let response = with_bearer(&app, &token).await;
        assert_eq!(response.status(), 401, "{what}");
        assert!(response.headers().contains_key("www-authenticate"), "{what}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"],
            "unauthenticated",
            "{what}"
        );
    }
    // The real thing still works, and nothing above reached the token endpoint.
    assert_eq!(with_bearer(&app, &idp.token("rsa-a", "user-1")).await.status(), 200);
    assert_eq!(upstream_calls(&upstream).await, 1);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_one_refetch() {
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = upstream().await;
    let app = app_for(&upstream, &jwt_authenticator(&idp.issuer)).await;
    assert_eq!(with_bearer(&app, &idp.token("rsa-a", "user-1")).await.status(), 200);
    assert_eq!(idp.jwks_fetches(), 1);

    idp.publish(&["rsa-a", "rsa-b"]);
    assert_eq!(with_bearer(&app, &idp.token("rsa-b", "user-1")).await.status(), 200);
    assert_eq!(idp.jwks_fetches(), 2);
    assert_eq!(with_bearer(&app, &idp.token("rsa-b", "user-1")).await.status(), 200);
    assert_eq!(idp.jwks_fetches(), 2);
}

/// However often a worker has answered for a token, it is verified again once its `exp` has passed
/// (a leeway lets it through the claim check, not past the re-verification): a key the issuer
/// withdrew meanwhile is not trusted any more.
#[tokio::test]
async fn a_token_verified_before_its_key_was_withdrawn_is_refused_once_it_must_be_verified_again() {
    let idp = Idp::start(&["rsa-a"], Some("public, max-age=60")).await;
    let upstream = upstream().await;
    let authenticator = format!("{}leeway = \"10m\"\n", jwt_authenticator(&idp.issuer));
    let app = app_for(&upstream, &authenticator).await;
    let mut claims = idp.claims("user-1");
    claims["exp"] = json!(now() + 5);
    let token = sign_as("rsa-a", Algorithm::RS256, Some("rsa-a"), &claims);
    // A connection of its own for each request: every worker answers for the token many times.
    let status = || async {
        let http = reqwest::Client::new();
        let response = http.get(app.token_url("triumph")).bearer_auth(&token).send().await;
        response.unwrap().status().as_u16()
    };
    for _ in 0..20 {
        assert_eq!(status().await, 200);
    }

    // The issuer withdraws the key; the token's exp passes, and the broker's copy of the keys
    // grows stale.
    idp.publish(&["rsa-b"]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    app.clock.advance(Duration::from_secs(61));
    for _ in 0..6 {
        assert_eq!(status().await, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kids_refetch_the_keys_at_most_once_per_30_seconds() {
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = upstream().await;
    // 200 forgeries from one address: the per-address failure limit is off to see the key source's own.
    let toml = format!(
        "{}{}{USER_GRANT}",
        config(&format!("{}/token", upstream.uri()), "client_secret_post")
            .replace("workers = 2", "workers = 2\nauth_failures_per_minute = 0"),
        jwt_authenticator(&idp.issuer)
    );
    let app = TestApp::spawn(&toml).await;
    let claims = idp.claims("user-1");
    let tokens: Vec<String> = (0..200)
        .map(|i| sign_as("rsa-a", Algorithm::RS256, Some(&format!("random-kid-{i}")), &claims))
        .collect();
    let responses = join_all(tokens.iter().map(|t| with_bearer(&app, t))).await;
    assert!(responses.iter().all(|r| r.status() == 401));
    assert!(idp.jwks_fetches() <= 2, "{} fetches", idp.jwks_fetches());

    app.clock.advance(Duration::from_secs(20));
    assert_eq!(with_bearer(&app, &tokens[0]).await.status(), 401);
    assert!(idp.jwks_fetches() <= 2, "{} fetches", idp.jwks_fetches());

    // Once the 30 s have passed a new key can be picked up again.
    app.clock.advance(Duration::from_secs(11));
    idp.publish(&["rsa-a", "rsa-b"]);
    assert_eq!(with_bearer(&app, &idp.token("rsa-b", "user-1")).await.status(), 200);
}

#[tokio::test]
async fn keys_are_cached_as_long_as_cache_control_says() {
    let idp = Idp::start(&["rsa-a"], Some("public, max-age=120")).await;
    let upstream = upstream().await;
    let app = app_for(&upstream, &jwt_authenticator(&idp.issuer)).await;
    // Distinct tokens, so the verified-token cache does not answer for the key set.
    let token = |n: u64| {
        let mut claims = idp.claims("user-1");
        claims["n"] = json!(n);
        sign_as("rsa-a", Algorithm::RS256, Some("rsa-a"), &claims)
    };
    assert_eq!(with_bearer(&app, &token(1)).await.status(), 200);
    app.clock.advance(Duration::from_secs(100));
    assert_eq!(with_bearer(&app, &token(2)).await.status(), 200);
    assert_eq!(idp.jwks_fetches(), 1);
    app.clock.advance(Duration::from_secs(30));
    assert_eq!(with_bearer(&app, &token(3)).await.status(), 200);
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn the_last_good_keys_stay_when_a_refetch_fails() {
    let idp = Idp::start(&["rsa-a"], Some("max-age=60")).await;
    let upstream = upstream().await;
    let app = app_for(&upstream, &jwt_authenticator(&idp.issuer)).await;
    assert_eq!(with_bearer(&app, &idp.token("rsa-a", "user-1")).await.status(), 200);
    idp.server.reset().await;
    app.clock.advance(Duration::from_secs(61));
    let mut claims = idp.claims("user-1");
    claims["n"] = json!(2);
    let fresh = sign_as("rsa-a", Algorithm::RS256, Some("rsa-a"), &claims);
    assert_eq!(with_bearer(&app, &fresh).await.status(), 200);
}

#[tokio::test]
async fn an_issuer_that_cannot_be_reached_is_503_auth_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let upstream = upstream().await;
    let app = app_for(&upstream, &jwt_authenticator(&issuer)).await;
    let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "user-1", "exp": now() + 600});
    let response = with_bearer(&app, &sign_as("rsa-a", Algorithm::RS256, Some("rsa-a"), &claims)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "auth_unavailable");
}

fn google_authenticator(idp: &Idp, hosted_domain: &str) -> String {
    format!(
        r#"
        [[authenticators]]
        type = "jwt"
        name = "jwt"
        preset = "google"
        jwks_url = "{}/jwks"
        audiences = ["{AUDIENCE}"]
        hosted_domain = "{hosted_domain}"
        "#,
        idp.issuer
    )
}

#[tokio::test]
async fn google_tokens_with_either_issuer_spelling_and_the_right_hd_are_accepted() {
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = upstream().await;
    let app = app_for(&upstream, &google_authenticator(&idp, "example.com")).await;
    let google = |iss: &str, hd: Option<&str>| {
        let mut claims = json!({"iss": iss, "aud": AUDIENCE, "sub": "user-1", "exp": now() + 600, "email": "u@example.com", "email_verified": true});
        if let Some(hd) = hd {
            claims["hd"] = json!(hd);
        }
        sign_as("rsa-a", Algorithm::RS256, Some("rsa-a"), &claims)
    };
    assert_eq!(
        with_bearer(&app, &google("https://accounts.google.com", Some("example.com")))
            .await
            .status(),
        200
    );
    assert_eq!(
        with_bearer(&app, &google("accounts.google.com", Some("example.com")))
            .await
            .status(),
        200
    );
    assert_eq!(
        with_bearer(&app, &google("https://accounts.google.com", Some("evil.com")))
            .await
            .status(),
        401
    );
    assert_eq!(
        with_bearer(&app, &google("https://accounts.google.com", None))
            .await
            .status(),
        401
    );
    assert_eq!(
        with_bearer(
            &app,
            &google("https://accounts.google.com.evil.com", Some("example.com"))
        )
        .await
        .status(),
        401
    );
}

#[tokio::test]
async fn grants_by_email_domain_need_a_verified_address() {
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = upstream().await;
    let app = app_for(&upstream, &jwt_authenticator(&idp.issuer)).await;
    let token = |email: &str, verified: bool| {
        let mut claims = idp.claims("someone");
        claims["email"] = json!(email);
        claims["email_verified"] = json!(verified);
        sign_as("rsa-a", Algorithm::RS256, Some("rsa-a"), &claims)
    };
    let ok = with_bearer(&app, &token("a@corp.com", true)).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["scope"], "reports:write");
    assert_eq!(with_bearer(&app, &token("a@corp.com", false)).await.status(), 403);
    assert_eq!(
        with_bearer(&app, &token("a@evil.com@corp.com", true)).await.status(),
        403
    );
    assert_eq!(
        with_bearer(&app, &token("a@corp.com.evil.com", true)).await.status(),
        403
    );
}

#[tokio::test]
async fn a_forged_jwt_is_not_handed_to_the_next_authenticator() {
    // A forward authenticator that accepts any Authorization header comes second: it must never see
    // a bearer JWT of the first authenticator's issuer.
    let idp = Idp::start(&["rsa-a"], None).await;
    let session = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({"sub": "user-1"})))
        .mount(&session)
        .await;
    let upstream = upstream().await;
    let authenticators = format!(
        "{}\n[[authenticators]]\ntype = \"forward\"\nurl = \"{}/session\"\nforward_authorization = true\n",
        jwt_authenticator(&idp.issuer),
        session.uri()
    );
    let app = app_for(&upstream, &authenticators).await;
    let forged = sign_as("rsa-b", Algorithm::RS256, Some("rsa-a"), &idp.claims("user-1"));
    assert_eq!(with_bearer(&app, &forged).await.status(), 401);
    assert_eq!(upstream_calls(&session).await, 0);
}
