//! The broker under a failing token endpoint: what the browser gets, what the upstream gets.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::helpers::rogue::{self, Misbehaviour};
use crate::helpers::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn spawn(token_url: &str) -> TestApp {
    TestApp::spawn(&config(token_url, "client_secret_post").replace("timeout = \"2s\"", "timeout = \"1s\"")).await
}

async fn app_with(upstream: &MockServer) -> TestApp {
    spawn(&format!("{}/token", upstream.uri())).await
}

async fn status_and_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].as_str().unwrap_or("").to_string())
}

/// Polls until the mock has seen `n` requests, for background work; bounded.
async fn wait_for_calls(upstream: &MockServer, n: usize) {
    for _ in 0..100 {
        if upstream_calls(upstream).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the upstream saw {} requests, expected {n}",
        upstream_calls(upstream).await
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_503_and_the_next_request_after_recovery_succeeds() {
    for status in [500, 503] {
        let upstream = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_string("<html>down</html>"))
            .mount(&upstream)
            .await;
        let app = app_with(&upstream).await;
        let response = app.get_token(ALICE_KEY, "triumph", None).await;
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(status_and_error(response).await, (503, "upstream_unavailable".into()));
        // Three attempts: the first and two retries with backoff, inside the timeout.
        assert_eq!(upstream_calls(&upstream).await, 3);

        upstream.reset().await;
        Mock::given(method("POST"))
            .respond_with(IssueTokens::new(600))
            .mount(&upstream)
            .await;
        let response = app.get_token(ALICE_KEY, "triumph", None).await;
        assert_eq!(response.status(), 200, "after a {status}");
    }
}

#[tokio::test]
async fn refused_and_reset_connections_are_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_url = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn(&refused_url).await;
    assert_eq!(
        status_and_error(app.get_token(ALICE_KEY, "triumph", None).await).await,
        (503, "upstream_unavailable".into())
    );

    let reset = rogue::start(Misbehaviour::Reset).await;
    let app = spawn(&reset.url).await;
    assert_eq!(
        status_and_error(app.get_token(ALICE_KEY, "triumph", None).await).await,
        (503, "upstream_unavailable".into())
    );
    assert_eq!(reset.connections.load(Ordering::SeqCst), 3, "retried twice");
}

#[tokio::test]
async fn headers_that_never_come_are_504_within_the_timeout_while_other_keys_are_served() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("scope=reports%3Awrite"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(IssueTokens::new(600))
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    assert_eq!(
        app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await.status(),
        200
    );

    let started = Instant::now();
    let slow = app.get_token(ALICE_KEY, "triumph", Some("reports:write"));
    let other = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let began = Instant::now();
        let response = app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await;
        (response.status(), began.elapsed())
    };
    let (slow, (other_status, other_took)) = tokio::join!(slow, other);
    assert_eq!(other_status, 200);
    assert!(other_took < Duration::from_millis(300), "{other_took:?}");
    assert_eq!(status_and_error(slow).await, (504, "upstream_timeout".into()));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    let rogue = rogue::start(Misbehaviour::NoHeaders).await;
    let app = spawn(&rogue.url).await;
    let started = Instant::now();
    assert_eq!(
        status_and_error(app.get_token(ALICE_KEY, "triumph", None).await)
            .await
            .0,
        504
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn huge_and_endless_bodies_are_502_and_read_no_further_than_the_cap() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b' '; 50 * 1024 * 1024]))
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    assert_eq!(
        status_and_error(app.get_token(ALICE_KEY, "triumph", None).await).await,
        (502, "upstream_error".into())
    );

    let endless = rogue::start(Misbehaviour::EndlessBody).await;
    let app = spawn(&endless.url).await;
    let started = Instant::now();
    assert_eq!(
        status_and_error(app.get_token(ALICE_KEY, "triumph", None).await).await,
        (502, "upstream_error".into())
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // The broker hung up after the 64 KiB cap; what else was written sat in socket buffers.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = endless.bytes_sent.load(Ordering::SeqCst);
    assert!(
        sent < 16 * 1024 * 1024,
        "{sent} bytes were sent before the broker hung up"
    );
}

#[tokio::test]
async fn unusable_token_responses_are_502_and_odd_lifetimes_are_handled() {
    let cases = [
        (json!({"access_token": "t", "expires_in": -1}), 502),
        (json!({"access_token": "t", "expires_in": 0}), 502),
        (json!({"access_token": "t", "expires_in": 1e12}), 502),
        (json!({"access_token": "t", "expires_in": null}), 200),
        (json!({"access_token": "t", "expires_in": "3600"}), 200),
        (json!({"expires_in": 3600}), 502),
        (json!({"access_token": "t", "token_type": "DPoP"}), 502),
    ];
    for (body, status) in cases {
        let upstream = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body.clone()))
            .mount(&upstream)
            .await;
        let app = app_with(&upstream).await;
        assert_eq!(
            app.get_token(ALICE_KEY, "triumph", None).await.status(),
            status,
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_429_pauses_the_upstream_until_retry_after_has_passed() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "2"))
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(status_and_error(response).await, (503, "upstream_unavailable".into()));

    upstream.reset().await;
    Mock::given(method("POST"))
        .respond_with(IssueTokens::new(600))
        .mount(&upstream)
        .await;
    app.clock.advance(Duration::from_millis(1000));
    let response = app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.status(), 503);
    assert_eq!(
        upstream_calls(&upstream).await,
        0,
        "nothing reaches the upstream during Retry-After"
    );

    app.clock.advance(Duration::from_millis(1100));
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    assert_eq!(upstream_calls(&upstream).await, 1);
}

/// A token endpoint whose first answer is token-1, for 100 s; the test mounts what comes next
/// (at a lower priority).
async fn issuing_one_token() -> MockServer {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(IssueTokens::new(100))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&upstream)
        .await;
    upstream
}

#[tokio::test]
async fn refresh_ahead_answers_at_once_and_swaps_the_token_in_the_background() {
    let upstream = issuing_one_token().await;
    // The refresh is slow, to show that nobody waits on it.
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "token-2", "token_type": "Bearer", "expires_in": 100}))
                .set_delay(Duration::from_millis(500)),
        )
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    let first: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(first["access_token"], "token-1");

    // 100 s tokens are served for 75 s; 64 s is past 80% ± 5% of that.
    app.clock.advance(Duration::from_secs(64));
    let started = Instant::now();
    let during: Vec<Value> = join_all((0..20).map(|_| async {
        app.get_token(ALICE_KEY, "triumph", None)
            .await
            .json::<Value>()
            .await
            .unwrap()
    }))
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(during.iter().all(|b| b["access_token"] == "token-1"));

    // The refresh answers after 500 ms; meanwhile callers keep getting token-1 at once.
    let mut after = Value::Null;
    for _ in 0..40 {
        after = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
        if after["access_token"] != "token-1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(after["access_token"], "token-2");
    assert!(
        after["expires_in"].as_u64().unwrap() > 60,
        "the fresh token's life: {after}"
    );
    assert_eq!(upstream_calls(&upstream).await, 2, "one refresh however many callers");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_current_token_until_its_served_life_ends() {
    let upstream = issuing_one_token().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);

    app.clock.advance(Duration::from_secs(64));
    let body: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(body["access_token"], "token-1");
    // A refresh ahead makes one attempt (its retries come from its own, shortening backoff).
    wait_for_calls(&upstream, 2).await;

    app.clock.advance(Duration::from_secs(10));
    let body: Value = app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(body["access_token"], "token-1", "still within its served life");
    assert!(body["expires_in"].as_u64().unwrap() <= 1);

    app.clock.advance(Duration::from_secs(2));
    let response = app.get_token(ALICE_KEY, "triumph", None).await;
    assert_eq!(status_and_error(response).await, (503, "upstream_unavailable".into()));
}

/// A refresh ahead that hangs gives way to another try while the token is still in service: a
/// try waits a quarter of the served life left (or twice what the last token took, if longer),
/// not the upstream's whole timeout, so a flapping endpoint's healthy moment is not spent waiting
/// on a try that never answers (the soak benchmark lost tokens that way: a try made at the very
/// end of a slow phase held the refresh through the whole healthy phase after it).
#[tokio::test]
async fn a_hung_refresh_ahead_gives_way_to_another_try_before_the_token_lapses() {
    let upstream = issuing_one_token().await;
    let answer = |token: &str| {
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 100}))
    };
    // The first refresh would answer long after the upstream's timeout.
    Mock::given(method("POST"))
        .respond_with(answer("never-seen").set_delay(Duration::from_secs(10)))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(answer("token-2"))
        .with_priority(3)
        .mount(&upstream)
        .await;
    // A 4 s timeout: a try that waited it out would still be waiting when the token lapses.
    let config = config(&format!("{}/token", upstream.uri()), "client_secret_post");
    let app = TestApp::spawn(&config.replace("timeout = \"2s\"", "timeout = \"4s\"")).await;
    assert_eq!(token_of(&app).await["access_token"], "token-1");

    // 100 s tokens are served for 75 s: with 3 s left, a refresh ahead waits 0.75 s (unless the
    // first token took over half of that), and the next try may start about 0.56 s after.
    app.clock.advance(Duration::from_secs(72));
    let started = Instant::now();
    assert_eq!(token_of(&app).await["access_token"], "token-1");
    // Before the token lapses (3 s), when a miss would fetch token-2 too.
    let latest = token_other_than_first(&app, started + Duration::from_millis(2800)).await;
    assert_eq!(
        latest["access_token"], "token-2",
        "a second try renewed the token in time"
    );
    assert_eq!(misses(&app).await, 1.0, "renewed ahead, not fetched on a miss");
    assert_eq!(upstream_calls(&upstream).await, 3, "the first fetch and two tries");
}

/// An endpoint that is slow but answers keeps its refresh ahead: a try waits at least twice what
/// the last token took, so it is not abandoned for being slower than a quarter of the life left.
#[tokio::test]
async fn a_slow_endpoint_that_answers_is_still_refreshed_ahead() {
    let upstream = token_endpoint(IssueTokens::new(100).with_delay(Duration::from_millis(600))).await;
    let app = TestApp::spawn(&config(&format!("{}/token", upstream.uri()), "client_secret_post")).await;
    assert_eq!(token_of(&app).await["access_token"], "token-1");

    // 2 s left: a quarter of it (0.5 s) is less than the 0.6 s a token takes.
    app.clock.advance(Duration::from_secs(73));
    let started = Instant::now();
    assert_eq!(token_of(&app).await["access_token"], "token-1");
    let latest = token_other_than_first(&app, started + Duration::from_millis(1800)).await;
    assert_eq!(latest["access_token"], "token-2", "the refresh ahead was waited for");
    assert_eq!(misses(&app).await, 1.0, "renewed ahead, not fetched on a miss");
    assert_eq!(upstream_calls(&upstream).await, 2, "no try abandoned");
}

async fn token_of(app: &TestApp) -> Value {
    app.get_token(ALICE_KEY, "triumph", None).await.json().await.unwrap()
}

/// Asks until the answer is no longer token-1, or `deadline` (real time) has passed.
async fn token_other_than_first(app: &TestApp, deadline: Instant) -> Value {
    loop {
        let latest = token_of(app).await;
        if latest["access_token"] != "token-1" || Instant::now() >= deadline {
            return latest;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The broker's count of answers that had to fetch a token (`token_broker_cache_misses_total`).
async fn misses(app: &TestApp) -> f64 {
    sample(
        &app.metrics().await,
        r#"token_broker_cache_misses_total{upstream="triumph"}"#,
    )
}

/// A token endpoint that issues tokens while `healthy` is set and answers 500 otherwise.
struct Switch {
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokens: IssueTokens,
}

impl wiremock::Respond for Switch {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        if self.healthy.load(Ordering::SeqCst) {
            self.tokens.respond(request)
        } else {
            ResponseTemplate::new(500)
        }
    }
}

/// Misses for other scopes open the circuit while an endpoint flaps; a token still in service is
/// refreshed ahead all the same once the endpoint answers again (its refreshes are paced per key,
/// not held back by the circuit), and its failed refreshes do not open the circuit themselves.
#[tokio::test]
async fn refresh_ahead_is_not_held_back_by_an_open_circuit() {
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let upstream = token_endpoint(Switch {
        healthy: healthy.clone(),
        tokens: IssueTokens::new(100),
    })
    .await;
    let app = app_with(&upstream).await;
    let read = |app: &TestApp| {
        let app = app
            .http
            .get(app.token_url("triumph"))
            .query(&[("scope", "reports:read")])
            .header("X-API-Key", ALICE_KEY);
        async move { app.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(read(&app).await["access_token"], "token-1");

    // reports:read's token becomes due for its refresh ahead (at ~60 of 75 s); meanwhile misses
    // for another scope set open the circuit.
    app.clock.advance(Duration::from_secs(64));
    healthy.store(false, Ordering::SeqCst);
    for _ in 0..5 {
        let response = app.get_token(ALICE_KEY, "triumph", Some("reports:write")).await;
        assert_eq!(response.status(), 503);
    }
    let response = app.get_token(ALICE_KEY, "triumph", Some("reports:write")).await;
    assert_eq!(status_and_error(response).await, (503, "upstream_unavailable".into()));
    assert_eq!(app.upstream_status("triumph", None).await["breaker"], "open");

    // The endpoint is back; the circuit is still open (the manual clock stands still).
    healthy.store(true, Ordering::SeqCst);
    assert_eq!(read(&app).await["access_token"], "token-1", "answered at once");
    let mut refreshed = false;
    for _ in 0..100 {
        if read(&app).await["access_token"] == "token-2" {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refreshed,
        "the refresh went through the open circuit and swapped the token in"
    );
    assert_eq!(
        app.upstream_status("triumph", None).await["breaker"],
        "closed",
        "and its success closed it"
    );
}

#[tokio::test]
async fn an_open_circuit_keeps_every_request_from_the_upstream() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    for _ in 0..5 {
        assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 503);
    }
    let after_opening = upstream_calls(&upstream).await;
    assert_eq!(after_opening, 15);
    for scope in ["reports:read", "reports:write", "reports:read reports:write"] {
        let response = app.get_token(ALICE_KEY, "triumph", Some(scope)).await;
        let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=5).contains(&retry_after), "{retry_after}");
        assert_eq!(status_and_error(response).await, (503, "upstream_unavailable".into()));
    }
    assert_eq!(
        upstream_calls(&upstream).await,
        after_opening,
        "nothing reaches the upstream while open"
    );

    // After the cool-down one probe goes through; it fails, and the circuit opens for longer.
    app.clock.advance(Duration::from_secs(6));
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 503);
    assert_eq!(upstream_calls(&upstream).await, after_opening + 3);
    app.clock.advance(Duration::from_secs(6));
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 503);
    assert_eq!(
        upstream_calls(&upstream).await,
        after_opening + 3,
        "the second cool-down is 10 s"
    );

    upstream.reset().await;
    Mock::given(method("POST"))
        .respond_with(IssueTokens::new(600))
        .mount(&upstream)
        .await;
    app.clock.advance(Duration::from_secs(5));
    assert_eq!(
        app.get_token(ALICE_KEY, "triumph", None).await.status(),
        200,
        "a good probe closes it"
    );
    assert_eq!(app.get_token(BOB_KEY, "triumph", None).await.status(), 200);
}

#[tokio::test]
async fn a_refusal_is_remembered_so_a_wrong_secret_does_not_hammer_the_upstream() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&upstream)
        .await;
    let app = app_with(&upstream).await;
    for _ in 0..100 {
        assert_eq!(
            status_and_error(app.get_token(ALICE_KEY, "triumph", None).await).await,
            (502, "upstream_error".into())
        );
    }
    assert_eq!(
        upstream_calls(&upstream).await,
        1,
        "refusals are neither retried nor repeated"
    );
    app.clock.advance(Duration::from_secs(11));
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 502);
    assert_eq!(upstream_calls(&upstream).await, 2);
}

#[tokio::test]
async fn past_the_hourly_quota_cached_tokens_are_served_and_fresh_fetches_refused() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post")
        .replace("timeout = \"2s\"", "timeout = \"2s\"\nmax_tokens_per_hour = 2");
    let app = TestApp::spawn(&toml).await;
    assert_eq!(
        app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await.status(),
        200
    );
    assert_eq!(
        app.get_token(ALICE_KEY, "triumph", Some("reports:write"))
            .await
            .status(),
        200
    );
    let third = app.get_token(ALICE_KEY, "triumph", None).await;
    assert!(third.headers().contains_key("retry-after"));
    assert_eq!(status_and_error(third).await, (503, "upstream_unavailable".into()));
    assert_eq!(
        app.get_token(ALICE_KEY, "triumph", Some("reports:read")).await.status(),
        200
    );
    assert_eq!(upstream_calls(&upstream).await, 2);
    app.clock.advance(Duration::from_secs(3601));
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
}

async fn report(app: &TestApp, key: &str, token: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/refresh", app.token_url("triumph")))
        .header("X-API-Key", key)
        .json(&json!({ "access_token": token }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once_however_many_callers_report_it() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = app_with(&upstream).await;
    let first: Value = app.get_token(BOB_KEY, "triumph", None).await.json().await.unwrap();
    assert_eq!(first["access_token"], "token-1");

    // Reported within a few seconds of its fetch: kept.
    let kept: Value = report(&app, BOB_KEY, "token-1").await.json().await.unwrap();
    assert_eq!(kept["access_token"], "token-1");

    // Old enough to replace: a tenth of its hour's lifetime.
    app.clock.advance(Duration::from_secs(361));
    let reports = join_all((0..20).map(|_| report(&app, BOB_KEY, "token-1"))).await;
    for response in reports {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.json::<Value>().await.unwrap()["access_token"], "token-2");
    }
    assert_eq!(upstream_calls(&upstream).await, 2);

    // A stale report of an older token gets the current one, and fetches nothing.
    let stale: Value = report(&app, BOB_KEY, "token-1").await.json().await.unwrap();
    assert_eq!(stale["access_token"], "token-2");
    let unknown: Value = report(&app, BOB_KEY, "never-issued").await.json().await.unwrap();
    assert_eq!(unknown["access_token"], "token-2");
    assert_eq!(upstream_calls(&upstream).await, 2);

    assert_eq!(report(&app, "wrong-key", "token-2").await.status(), 401);
    assert_eq!(report(&app, CAROL_KEY, "token-2").await.status(), 403);
    let missing = app
        .http
        .post(format!("{}/refresh", app.token_url("triumph")))
        .header("X-API-Key", BOB_KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_error(missing).await, (400, "invalid_request".into()));
    let get = app
        .http
        .get(format!("{}/refresh", app.token_url("triumph")))
        .send()
        .await
        .unwrap();
    assert_eq!(get.headers()["allow"], "POST");
    assert_eq!(status_and_error(get).await, (405, "method_not_allowed".into()));
}
