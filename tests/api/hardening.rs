//! Hostile inputs found by a security review, each reproduced against the running broker: the
//! behaviour a caller (or an attacker) gets, and what reaches the token endpoint.

use std::time::Duration;

use crate::helpers::*;
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

/// The usual configuration with public tokens, alice (granted reports:read and reports:write) minting.
fn config_with_public_tokens(token_url: &str, key: &std::path::Path) -> String {
    format!(
        "{}\n[[authenticators]]\ntype = \"public_token\"\n\n[public_tokens]\nsigning_key = {{ file = {:?} }}\nmint_subjects = [\"alice\"]\n",
        config(token_url, "client_secret_post"),
        key.display().to_string(),
    )
}

/// An empty scope list once meant "no `scope` at the token endpoint", which most servers read as
/// "every scope this client has": wider than the caller's grant.
#[tokio::test]
async fn an_empty_scope_list_is_refused_and_never_widens() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, token_broker::public_tokens::SigningKey::generate_pem()).unwrap();
    let app = TestApp::spawn(&config_with_public_tokens(&format!("{}/token", upstream.uri()), &key)).await;

    let mint = app
        .http
        .post(format!("{}/v1/public-tokens", app.base))
        .header("X-API-Key", ALICE_KEY)
        .json(&serde_json::json!({ "subject": "user-1", "scopes": { "upstreams": { "triumph": [] } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_error(mint).await, (400, "invalid_request".into()));

    let query = app.get_token(BOB_KEY, "triumph", Some("")).await;
    assert_eq!(status_and_error(query).await, (400, "invalid_request".into()));
    let blank = app.get_token(BOB_KEY, "triumph", Some("   ")).await;
    assert_eq!(status_and_error(blank).await, (400, "invalid_request".into()));
    for (content_type, body) in [
        ("application/x-www-form-urlencoded", "scope="),
        ("application/json", r#"{"scope":""}"#),
    ] {
        let post = app
            .http
            .post(app.token_url("triumph"))
            .header("X-API-Key", BOB_KEY)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(status_and_error(post).await, (400, "invalid_request".into()), "{body}");
    }
    assert_eq!(upstream_calls(&upstream).await, 0, "nothing reached the token endpoint");

    // Without `scope`, bob gets his whole grant, asked for by name.
    let response = app.get_token(BOB_KEY, "triumph", None).await;
    assert_eq!(response.status(), 200);
    let requests = upstream.received_requests().await.unwrap();
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&requests[0].body).unwrap();
    assert!(form.contains(&("scope".into(), "reports:read".into())), "{form:?}");
}

/// A token endpoint that grants more than was asked (RFC 6749 §3.3 lets it say so in `scope`):
/// such a token would let the browser do more than the caller's grant allows.
#[tokio::test]
async fn a_token_wider_than_requested_is_refused_and_never_cached() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "too-wide-token",
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "reports:read admin",
        })))
        .mount(&upstream)
        .await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    for _ in 0..2 {
        let response = app.get_token(BOB_KEY, "triumph", None).await;
        let body = response.text().await.unwrap();
        assert!(!body.contains("too-wide-token"), "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "upstream_error");
    }
    // The answer that was asked for narrows nothing: a token for exactly the requested scope serves.
    upstream.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "narrow-token", "token_type": "Bearer", "expires_in": 3600, "scope": "reports:read",
        })))
        .mount(&upstream)
        .await;
    app.clock.advance(Duration::from_secs(11));
    let response = app.get_token(BOB_KEY, "triumph", None).await;
    assert_eq!(response.status(), 200);
}

const CACHE_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes, base64

/// The usual configuration with `audience` on `triumph` and a Redis tier.
fn redis_config(token_url: &str, redis: &crate::helpers::redis_server::RedisServer, audience: &str) -> String {
    format!(
        "{}\n[cache.redis]\nurl = \"{}\"\nencryption_key = \"{CACHE_KEY}\"\n",
        config(token_url, "client_secret_post").replacen(
            "timeout = \"2s\"",
            &format!("timeout = \"2s\"\naudience = \"{audience}\""),
            1
        ),
        redis.url(),
    )
}

async fn access_token(http: &reqwest::Client, base: &str) -> String {
    let response = http
        .get(format!("{base}/v1/token/triumph"))
        .header("X-API-Key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Changing the audience (or the secret, client id, URL, params) and reloading once brought the old
/// token back from Redis; two deployments sharing a Redis and key prefix saw each other's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_bound_to_the_credentials_and_settings_they_were_fetched_with() {
    use crate::helpers::process::{write, BrokerProcess};
    let redis = crate::helpers::redis_server::RedisServer::start();
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let token_url = format!("{}/token", upstream.uri());
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    let path = write(
        dir.path(),
        "a.toml",
        &redis_config(&token_url, &redis, "https://api-a.example"),
    );
    let mut broker = BrokerProcess::start(&path, &[("TRIUMPH_SECRET", CLIENT_SECRET)]);
    assert_eq!(access_token(&http, &broker.base).await, "token-1");

    write(
        dir.path(),
        "a.toml",
        &redis_config(&token_url, &redis, "https://api-b.example"),
    );
    broker.signal("HUP");
    broker.wait_for_log("configuration reloaded", Duration::from_secs(5));
    assert_eq!(
        access_token(&http, &broker.base).await,
        "token-2",
        "a token for the old audience is never served for the new one"
    );

    // Another deployment: same Redis, prefix and encryption key, another client secret.
    let other_path = write(
        dir.path(),
        "b.toml",
        &redis_config(&token_url, &redis, "https://api-b.example"),
    );
    let mut other = BrokerProcess::start(&other_path, &[("TRIUMPH_SECRET", "another-secret")]);
    assert_eq!(access_token(&http, &other.base).await, "token-3");
    // The same settings and secret share as before: a third replica adopts token-2.
    let mut twin = BrokerProcess::start(&path, &[("TRIUMPH_SECRET", CLIENT_SECRET)]);
    assert_eq!(access_token(&http, &twin.base).await, "token-2");
    assert_eq!(upstream_calls(&upstream).await, 3);
    for process in [&mut broker, &mut other, &mut twin] {
        process.stop();
    }
}

/// A session endpoint that says every cookie holder is `subject`.
async fn session_saying(subject: &str) -> MockServer {
    let session = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "sub": subject })))
        .mount(&session)
        .await;
    session
}

/// A forward-auth user whose session endpoint answered `sub: "alice"` once got the API key
/// alice's grants, and could mint public tokens for anyone as she can.
#[tokio::test]
async fn the_same_subject_from_another_authenticator_is_another_caller() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let session = session_saying("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, token_broker::public_tokens::SigningKey::generate_pem()).unwrap();
    let toml = format!(
        "{}\n[[authenticators]]\ntype = \"forward\"\nurl = \"{}/session\"\nforward_cookies = [\"sid\"]\n",
        config_with_public_tokens(&format!("{}/token", upstream.uri()), &key),
        session.uri(),
    );
    let app = TestApp::spawn(&toml).await;
    let as_session = |request: reqwest::RequestBuilder| {
        request
            .header("Cookie", "sid=whoever")
            .header("X-Requested-With", "test")
    };

    let token = as_session(app.http.get(app.token_url("triumph"))).send().await.unwrap();
    assert_eq!(status_and_error(token).await, (403, "access_denied".into()));
    let mint = as_session(app.http.post(format!("{}/v1/public-tokens", app.base)))
        .json(&serde_json::json!({ "subject": "anyone", "scopes": { "upstreams": { "triumph": true } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_error(mint).await, (403, "access_denied".into()));
    assert_eq!(upstream_calls(&upstream).await, 0);

    // The API key alice keeps her grant and her right to mint.
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    let mint = app
        .http
        .post(format!("{}/v1/public-tokens", app.base))
        .header("X-API-Key", ALICE_KEY)
        .json(&serde_json::json!({ "subject": "anyone", "scopes": { "upstreams": { "triumph": ["reports:read"] } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(mint.status(), 200);
}

/// `check` names every grant whose subjects or groups could now come from two authenticators,
/// and says what to write.
#[test]
fn check_names_every_grant_that_must_say_whose_subjects_it_means() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n[[authenticators]]\ntype = \"forward\"\nurl = \"https://app.example.com/session\"\nforward_cookies = [\"sid\"]\n\n[[grants]]\nsubjects = [\"svc-backend\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n\n[[grants]]\ngroups = [\"staff\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n\n[[grants]]\nemail_domains = [\"corp.com\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n",
        config("https://auth.example.com/token", "client_secret_post"),
    );
    let path = crate::helpers::process::write(dir.path(), "broker.toml", &toml);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_token-broker"))
        .args(["check", "--config"])
        .arg(&path)
        .env("TRIUMPH_SECRET", "s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(".authenticators")).collect();
    assert_eq!(
        lines.len(),
        2,
        "the subjects grant and the groups grant, not the email one:\n{stderr}"
    );
    assert!(lines[0].starts_with("grants[2].authenticators: "), "{stderr}");
    assert!(lines[1].starts_with("grants[3].authenticators: "), "{stderr}");
    assert!(
        lines[0].contains("api_key, forward") && lines[0].contains("authenticators = [\""),
        "{stderr}"
    );
}

/// `email_verified` alone is true for a consumer Google account anyone can create for an address
/// they once received mail at; Google vouches for the address only within the `hd` domain.
#[tokio::test]
async fn a_google_address_counts_only_with_its_workspace_domain_or_at_gmail() {
    use crate::helpers::idp::{now, sign_as, Idp, AUDIENCE};
    use jsonwebtoken::Algorithm;
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = format!(
        "{}\n[[authenticators]]\ntype = \"jwt\"\npreset = \"google\"\njwks_url = \"{}/jwks\"\naudiences = [\"{AUDIENCE}\"]\n\n[[grants]]\nemail_domains = [\"corp.com\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n\n[[grants]]\nemails = [\"someone@gmail.com\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n",
        config(&format!("{}/token", upstream.uri()), "client_secret_post"),
        idp.issuer,
    );
    let app = TestApp::spawn(&toml).await;
    let status = |email: &'static str, hd: Option<&'static str>| {
        let mut claims = serde_json::json!({
            "iss": "https://accounts.google.com", "aud": AUDIENCE, "sub": format!("{email}-{hd:?}"),
            "exp": now() + 600, "email": email, "email_verified": true,
        });
        if let Some(hd) = hd {
            claims["hd"] = hd.into();
        }
        let token = sign_as("rsa-a", Algorithm::RS256, Some("rsa-a"), &claims);
        let request = app.http.get(app.token_url("triumph")).bearer_auth(token).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status("leaver@corp.com", None).await,
        403,
        "a consumer account for a corp.com address"
    );
    assert_eq!(status("leaver@corp.com", Some("other.com")).await, 403);
    assert_eq!(status("staff@corp.com", Some("corp.com")).await, 200);
    assert_eq!(status("someone@gmail.com", None).await, 200);
}

async fn report_rejected(app: &TestApp, key: &str, token: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/refresh", app.token_url("triumph")))
        .header("X-API-Key", key)
        .json(&serde_json::json!({ "access_token": token }))
        .send()
        .await
        .unwrap()
}

async fn served_token(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Any entitled caller could force an upstream fetch every 5 s per key by reporting the current
/// token as rejected.
#[tokio::test]
async fn reports_of_rejected_tokens_are_paced_by_the_tokens_life_and_per_caller() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    let mut current = served_token(app.get_token(BOB_KEY, "triumph", None).await).await;

    // A tenth of an hour's token must pass first: at 10 s the same token comes back.
    app.clock.advance(Duration::from_secs(10));
    assert_eq!(
        served_token(report_rejected(&app, BOB_KEY, &current).await).await,
        current
    );
    assert_eq!(upstream_calls(&upstream).await, 1);

    // Then each report replaces it, up to the caller's burst of three.
    for _ in 0..3 {
        app.clock.advance(Duration::from_secs(361));
        let replaced = served_token(report_rejected(&app, BOB_KEY, &current).await).await;
        assert_ne!(replaced, current);
        current = replaced;
    }
    assert_eq!(upstream_calls(&upstream).await, 4);
    app.clock.advance(Duration::from_secs(361));
    let limited = report_rejected(&app, BOB_KEY, &current).await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(status_and_error(limited).await, (429, "rate_limited".into()));
    assert_eq!(upstream_calls(&upstream).await, 4, "the refused report fetched nothing");
    // The token stays in service for everyone, and another caller may still report.
    assert_eq!(
        served_token(app.get_token(BOB_KEY, "triumph", None).await).await,
        current
    );
    let replaced = served_token(report_rejected(&app, ALICE_KEY, &current).await).await;
    assert_ne!(replaced, current);
}

/// With `max_tokens_per_hour`, one low-privilege caller reporting tokens as rejected once spent
/// the whole quota: nobody else could get a token for the rest of the hour.
#[tokio::test]
async fn replacements_can_never_take_the_whole_hourly_quota() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post").replacen(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nmax_tokens_per_hour = 4",
        1,
    );
    let app = TestApp::spawn(&toml).await;
    let mut current = served_token(app.get_token(BOB_KEY, "triumph", None).await).await;
    app.clock.advance(Duration::from_secs(361));
    current = served_token(report_rejected(&app, BOB_KEY, &current).await).await;
    app.clock.advance(Duration::from_secs(361));
    let refused = report_rejected(&app, BOB_KEY, &current).await;
    assert_eq!(status_and_error(refused).await, (503, "upstream_unavailable".into()));
    assert_eq!(
        upstream_calls(&upstream).await,
        2,
        "replacements use at most half the quota"
    );

    // The rest of the quota still serves callers, and bob keeps the current token.
    assert_eq!(
        served_token(app.get_token(BOB_KEY, "triumph", None).await).await,
        current
    );
    let write = app.get_token(ALICE_KEY, "triumph", Some("reports:write")).await;
    assert_eq!(write.status(), 200);
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    assert_eq!(upstream_calls(&upstream).await, 4);
}

/// A fetch lock in Redis held by someone else (a crashed replica, a stranger sharing the prefix)
/// once kept a cold request waiting about 12 s; now the wait is bounded by the upstream's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_someone_else_delays_a_cold_request_by_at_most_the_timeout() {
    use crate::helpers::process::{write, BrokerProcess};
    let redis = crate::helpers::redis_server::RedisServer::start();
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "broker.toml",
        &redis_config(&format!("{}/token", upstream.uri()), &redis, "https://api.example"),
    );
    let http = reqwest::Client::new();
    let mut first = BrokerProcess::start(&path, &[("TRIUMPH_SECRET", CLIENT_SECRET)]);
    assert_eq!(access_token(&http, &first.base).await, "token-1");
    first.stop();

    // Someone else now holds this key's fetch lock for a minute, and the stored token is gone.
    let entry = redis
        .dump()
        .await
        .into_iter()
        .map(|(key, _)| key)
        .find(|key| key.contains(":token:"))
        .expect("the token is stored");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let lock = entry.replace(":token:", ":lock:");
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&entry)
        .query_async(&mut connection)
        .await
        .unwrap();

    let mut second = BrokerProcess::start(&path, &[("TRIUMPH_SECRET", CLIENT_SECRET)]);
    let started = std::time::Instant::now();
    assert_eq!(access_token(&http, &second.base).await, "token-2");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(2_900),
        "waited {waited:?}: at most the upstream's 2 s timeout, then the replica fetches itself"
    );
    second.stop();
}

fn problems_of(toml: &str) -> Vec<String> {
    match token_broker::settings::Settings::from_toml(toml, &env()) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.0.iter().map(|p| p.to_string()).collect(),
    }
}

/// The CSRF header works only because a page needs a CORS preflight to send it cross-site: a
/// header browsers send without one, or one pages cannot set, protects nothing.
#[test]
fn a_csrf_header_that_proves_nothing_is_refused() {
    let base = config("https://auth.example.com/token", "client_secret_post");
    for header in [
        "content-type",
        "Accept",
        "accept-language",
        "content-language",
        "range",
        "cookie",
        "origin",
        "sec-fetch-site",
        "user-agent",
        "upgrade-insecure-requests",
        "cache-control",
        "pragma",
        "priority",
        "purpose",
    ] {
        let problems = problems_of(&base.replace("workers = 2", &format!("workers = 2\ncsrf_header = \"{header}\"")));
        assert!(
            problems.len() == 1 && problems[0].starts_with("server.csrf_header: "),
            "{header}: {problems:?}"
        );
    }
    for header in ["x-requested-with", "x-csrf-token"] {
        assert!(
            problems_of(&base.replace("workers = 2", &format!("workers = 2\ncsrf_header = \"{header}\""))).is_empty()
        );
    }
}

/// The session endpoint receives the caller's session cookie: never over plain HTTP off this host.
#[test]
fn a_session_endpoint_must_be_https_unless_on_loopback() {
    let base = config("https://auth.example.com/token", "client_secret_post");
    let with = |url: &str| {
        problems_of(&format!(
            "{base}\n[[authenticators]]\ntype = \"forward\"\nurl = \"{url}\"\nforward_cookies = [\"sid\"]\n"
        ))
    };
    let problems = with("http://app.internal/session");
    assert!(
        problems.len() == 1 && problems[0].starts_with("authenticators[1].url: must be an https:// URL"),
        "{problems:?}"
    );
    assert!(with("https://app.internal/session").is_empty());
    assert!(with("http://127.0.0.1:3000/session").is_empty());
}

/// A discovery document may not send the broker for keys over plain HTTP (off loopback): whoever
/// sits on that path could hand it keys that make any forged id_token verify.
#[tokio::test]
async fn keys_named_by_discovery_over_plain_http_are_not_fetched() {
    use crate::helpers::idp::{jwt_authenticator, Idp};
    let idp = Idp::start(&["rsa-a"], None).await;
    // An IPv4-mapped IPv6 address reaches the same server, but is not a loopback address by name.
    let port = idp.server.address().port();
    idp.server.reset().await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "issuer": idp.issuer,
            "jwks_uri": format!("http://[::ffff:127.0.0.1]:{port}/jwks"),
        })))
        .mount(&idp.server)
        .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path("/jwks"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "keys": [crate::helpers::idp::jwk("rsa-a")] })),
        )
        .expect(0)
        .mount(&idp.server)
        .await;
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = format!(
        "{}{}\n[[grants]]\nauthenticators = [\"jwt\"]\nsubjects = [\"user-1\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n",
        config(&format!("{}/token", upstream.uri()), "client_secret_post"),
        jwt_authenticator(&idp.issuer),
    );
    let app = TestApp::spawn(&toml).await;
    let response = app
        .http
        .get(app.token_url("triumph"))
        .bearer_auth(idp.token("rsa-a", "user-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_error(response).await, (503, "auth_unavailable".into()));
    idp.server.verify().await;
}

/// A 431 from the header limit once left out the CORS headers, so a page could not read why.
#[tokio::test]
async fn a_431_carries_the_cors_headers_like_every_other_error() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post").replace(
        "workers = 2",
        "workers = 2\nmax_header_bytes = 2048\ncors_allowed_origins = [\"https://app.example.com\"]",
    );
    let app = TestApp::spawn(&toml).await;
    let response = app
        .http
        .get(app.token_url("triumph"))
        .header("Origin", "https://app.example.com")
        .header("X-API-Key", ALICE_KEY)
        .header("X-Padding", "p".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(response.headers()["access-control-allow-credentials"], "true");
    assert_eq!(status_and_error(response).await, (431, "invalid_request".into()));
}

/// With `server.admin_token`, metrics (and every admin route to come) want it; probes do not.
#[tokio::test]
async fn the_admin_token_guards_metrics_but_not_the_probes() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post")
        .replace("workers = 2", "workers = 2\nadmin_token = \"admin-token-0123456789\"");
    let app = TestApp::spawn(&toml).await;
    let metrics = format!("{}/metrics", app.admin);
    let without = app.http.get(&metrics).send().await.unwrap();
    assert!(without.headers().contains_key("www-authenticate"));
    assert_eq!(status_and_error(without).await, (401, "unauthenticated".into()));
    let wrong = app
        .http
        .get(&metrics)
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .http
        .get(&metrics)
        .bearer_auth("admin-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().await.unwrap().contains("token_broker_"));
    for probe in ["healthz", "readyz"] {
        let response = app.http.get(format!("{}/{probe}", app.admin)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{probe}");
    }
}

/// The usual configuration plus a forward authenticator asking `session`, with a budget of
/// `failures_per_minute` failed authentications per address.
fn with_session_endpoint(upstream: &MockServer, session: &MockServer, failures_per_minute: u32) -> String {
    format!(
        "{}\n[[authenticators]]\ntype = \"forward\"\nurl = \"{}/session\"\nforward_cookies = [\"sid\"]\n",
        config(&format!("{}/token", upstream.uri()), "client_secret_post").replace(
            "workers = 2",
            &format!("workers = 2\nauth_failures_per_minute = {failures_per_minute}")
        ),
        session.uri(),
    )
}

/// A guessed session cookie, number `n`, from `client`.
async fn guess(client: &reqwest::Client, app: &TestApp, n: usize) -> reqwest::Response {
    client
        .get(app.token_url("triumph"))
        .header("Cookie", format!("sid=guess-{n}"))
        .header("X-Requested-With", "x")
        .send()
        .await
        .unwrap()
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Guessing keys, forging tokens or trying cookies cost the broker (and the session endpoint) work
/// per attempt, without limit. Failures now spend a per-address budget; past it, nothing is tried.
#[tokio::test]
async fn failed_authentications_are_limited_per_address_before_any_work() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let session = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&session)
        .await;
    let toml = with_session_endpoint(&upstream, &session, 5);
    let app = TestApp::spawn(&toml).await;
    let attacker = client_from("127.0.0.3");
    for n in 0..5 {
        assert_eq!(
            status_and_error(guess(&attacker, &app, n).await).await,
            (401, "unauthenticated".into())
        );
    }
    assert_eq!(upstream_calls(&session).await, 5);
    for n in 5..15 {
        let response = guess(&attacker, &app, n).await;
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(status_and_error(response).await, (429, "rate_limited".into()));
    }
    assert_eq!(upstream_calls(&session).await, 5, "no session call past the limit");
    let bad_key = attacker
        .get(app.token_url("triumph"))
        .header("X-API-Key", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), 429);

    // Another address is unaffected: its good key works and its bad key is a plain 401.
    let neighbour = client_from("127.0.0.4");
    let good = neighbour
        .get(app.token_url("triumph"))
        .header("X-API-Key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    let bad = neighbour
        .get(app.token_url("triumph"))
        .header("X-API-Key", "typo")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
}

/// Behind a trusted reverse proxy, the budget is the real client's, not the proxy's: one user's
/// typos do not lock out everyone who shares the proxy's address.
#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post").replace(
        "workers = 2",
        "workers = 2\nauth_failures_per_minute = 3\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let app = TestApp::spawn(&toml).await;
    let via_proxy = |client: &'static str, key: &'static str| {
        app.http
            .get(app.token_url("triumph"))
            .header("X-Forwarded-For", client)
            .header("X-API-Key", key)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(via_proxy("198.51.100.1", "typo").await.unwrap().status(), 401);
    }
    assert_eq!(via_proxy("198.51.100.1", "typo").await.unwrap().status(), 429);
    assert_eq!(via_proxy("198.51.100.2", ALICE_KEY).await.unwrap().status(), 200);
    assert_eq!(via_proxy("198.51.100.2", "typo").await.unwrap().status(), 401);
}

/// Six concurrent forged tokens once waited 1, 2 … 6 × the JWKS timeout, each doing its own fetch
/// in turn; a failed fetch is now remembered and shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_key_fetch_is_shared_by_the_callers_waiting_for_it() {
    use crate::helpers::idp::{sign_as, AUDIENCE};
    use jsonwebtoken::Algorithm;
    let jwks = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&jwks)
        .await;
    let issuer = "https://login.example.com";
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = format!(
        "{}\n[[authenticators]]\ntype = \"jwt\"\nissuer = \"{issuer}\"\njwks_url = \"{}/jwks\"\naudiences = [\"{AUDIENCE}\"]\ntimeout = \"1s\"\n",
        config(&format!("{}/token", upstream.uri()), "client_secret_post"),
        jwks.uri(),
    );
    let app = TestApp::spawn(&toml).await;
    let forged = |n: u64| {
        let claims = serde_json::json!({ "iss": issuer, "aud": AUDIENCE, "sub": format!("u{n}"), "exp": crate::helpers::idp::now() + 600 });
        sign_as("rsa-a", Algorithm::RS256, Some("rsa-a"), &claims)
    };
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all(
        (0..6).map(|n| app.http.get(app.token_url("triumph")).bearer_auth(forged(n)).send()),
    )
    .await;
    let elapsed = started.elapsed();
    for answer in answers {
        assert_eq!(
            status_and_error(answer.unwrap()).await,
            (503, "auth_unavailable".into())
        );
    }
    assert!(
        elapsed < Duration::from_millis(2_500),
        "took {elapsed:?}: one timeout, not six"
    );
    assert_eq!(upstream_calls(&jwks).await, 1);
}

/// A public token minted for the subject `alice` is not the API key `alice`: only the scopes it
/// carries count, never the grants table.
#[tokio::test]
async fn a_public_token_never_matches_grants_whatever_its_subject() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, token_broker::public_tokens::SigningKey::generate_pem()).unwrap();
    let app = TestApp::spawn(&config_with_public_tokens(&format!("{}/token", upstream.uri()), &key)).await;
    let minted: Value = app
        .http
        .post(format!("{}/v1/public-tokens", app.base))
        .header("X-API-Key", ALICE_KEY)
        .json(&serde_json::json!({ "subject": "alice", "scopes": {} }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap();
    let response = app
        .http
        .get(app.token_url("triumph"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_error(response).await, (403, "access_denied".into()));
    assert_eq!(upstream_calls(&upstream).await, 0);
}

/// A session endpoint that answers a guessed cookie with a redirect to its login page, or with an
/// error, was asked once per guess without limit: neither answer was counted as a failure.
#[tokio::test]
async fn guesses_a_session_endpoint_redirects_or_fails_on_are_limited_too() {
    for (status, broker_answer) in [(302, 401), (500, 503)] {
        let upstream = token_endpoint(IssueTokens::new(3600)).await;
        let session = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(status).insert_header("Location", "/login"))
            .mount(&session)
            .await;
        let toml = with_session_endpoint(&upstream, &session, 5);
        let app = TestApp::spawn(&toml).await;
        let attacker = client_from("127.0.0.5");
        let mut statuses = Vec::new();
        for n in 0..12 {
            let response = guess(&attacker, &app, n).await;
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses[..5], [broker_answer; 5], "session endpoint answering {status}");
        assert_eq!(statuses[5..], [429; 7], "session endpoint answering {status}");
        assert_eq!(upstream_calls(&session).await, 5, "session endpoint answering {status}");
    }
}

/// Failures used to be counted only when they finished: a hundred guesses sent at once against a
/// slow session endpoint all got in before the first was counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_cannot_outrun_the_failure_budget() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let session = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_delay(Duration::from_millis(500)))
        .mount(&session)
        .await;
    let toml = with_session_endpoint(&upstream, &session, 5);
    let app = TestApp::spawn(&toml).await;
    let attacker = client_from("127.0.0.6");
    let answers = futures_util::future::join_all((0..100).map(|n| guess(&attacker, &app, n))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 95, "{statuses:?}");
    assert_eq!(upstream_calls(&session).await, 5);
    // A genuine caller elsewhere, with a session the endpoint accepts, is not affected.
    session.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "sub": "alice" })))
        .mount(&session)
        .await;
    let genuine = client_from("127.0.0.7")
        .get(app.token_url("triumph"))
        .header("Cookie", "sid=real")
        .header("X-Requested-With", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(genuine.status(), 403, "authenticated; forward's alice has no grant");
}

/// A POST with `scope` in the query used to be answered for the whole grant: the query was ignored.
#[tokio::test]
async fn a_scope_in_the_query_of_a_post_counts() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    let post = |path: String, body: Value| app.http.post(path).header("X-API-Key", ALICE_KEY).json(&body).send();
    let narrow: Value = post(
        format!("{}?scope=reports:read", app.token_url("triumph")),
        serde_json::json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(narrow["scope"], "reports:read");
    app.clock.advance(Duration::from_secs(361));
    let replaced: Value = post(
        format!("{}/refresh?scope=reports:read", app.token_url("triumph")),
        serde_json::json!({ "access_token": narrow["access_token"] }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(replaced["scope"], "reports:read");
    assert_ne!(replaced["access_token"], narrow["access_token"]);
    let conflicting = post(
        format!("{}?scope=reports:read", app.token_url("triumph")),
        serde_json::json!({ "scope": "reports:write" }),
    )
    .await
    .unwrap();
    assert_eq!(status_and_error(conflicting).await, (400, "invalid_request".into()));
}

/// Costly work reserves against the failure budget, but a page's burst of first requests with one
/// new credential is one verification, not fifty: the budget is not spent by genuine callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_first_requests_with_one_new_credential_is_not_throttled() {
    use crate::helpers::idp::{jwt_authenticator, Idp};
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = format!(
        "{}{}\n[[grants]]\nauthenticators = [\"jwt\"]\nsubjects = [\"user-1\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n",
        config(&format!("{}/token", upstream.uri()), "client_secret_post")
            .replace("workers = 2", "workers = 2\nauth_failures_per_minute = 5"),
        jwt_authenticator(&idp.issuer),
    );
    let app = TestApp::spawn(&toml).await;
    let token = idp.token("rsa-a", "user-1");
    let answers = futures_util::future::join_all(
        (0..50).map(|_| app.http.get(app.token_url("triumph")).bearer_auth(&token).send()),
    )
    .await;
    let statuses: Vec<u16> = answers.into_iter().map(|a| a.unwrap().status().as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}
