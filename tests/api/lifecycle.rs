//! The binary under signals: SIGTERM drains, SIGHUP reloads (or keeps the running configuration
//! when the new file is broken), and every stderr line is JSON without a secret in it.

use std::time::{Duration, Instant};

use crate::helpers::idp::{jwt_authenticator, Idp, AUDIENCE};
use crate::helpers::process::{write, BrokerProcess};
use crate::helpers::*;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

/// `toml` and an upstream `added` (with `extra` sections), which alice may use.
fn with_added_upstream(toml: &str, token_url: &str, extra: &str) -> String {
    format!(
        "{toml}\n[upstreams.added]\ntoken_url = \"{token_url}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret = {{ env = \"TRIUMPH_SECRET\" }}\nscopes = [\"reports:read\"]\n\n{extra}\n\
         [[grants]]\nauthenticators = [\"api_key\"]\nsubjects = [\"alice\"]\n\
         upstreams = {{ added = [\"reports:read\"] }}\n"
    )
}

async fn metrics_of(http: &reqwest::Client, broker: &BrokerProcess) -> String {
    let response = http.get(format!("{}/metrics", broker.admin)).send().await.unwrap();
    response.text().await.unwrap()
}

fn env_pairs() -> Vec<(&'static str, &'static str)> {
    vec![("TRIUMPH_SECRET", CLIENT_SECRET)]
}

async fn readyz(http: &reqwest::Client, broker: &BrokerProcess) -> u16 {
    let url = format!("{}/readyz", broker.admin);
    http.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_while_readyz_says_503_then_exits_0() {
    let upstream = token_endpoint(IssueTokens::new(600).with_delay(Duration::from_millis(1500))).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post")
        .replace("workers = 2", "workers = 2\nshutdown_grace = \"10s\"");
    let path = write(dir.path(), "broker.toml", &toml);
    let mut broker = BrokerProcess::start(&path, &env_pairs());
    let http = reqwest::Client::new();
    assert_eq!(readyz(&http, &broker).await, 200);

    let in_flight = tokio::spawn({
        let (http, url) = (http.clone(), format!("{}/v1/token/triumph", broker.base));
        async move { http.get(url).header("X-API-Key", ALICE_KEY).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    broker.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(readyz(&http, &broker).await, 503, "draining");

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "the request in flight completes");
    let status = broker.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    // Info lines are buffered on their way out; a graceful stop writes out every one, the last too.
    broker.wait_for_log("token served", Duration::from_secs(2));
    broker.wait_for_log("\"message\":\"stopped\"", Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_grant_and_keeps_the_old_configuration_when_the_new_file_is_broken() {
    let upstream = token_endpoint(IssueTokens::new(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post");
    let path = write(dir.path(), "broker.toml", &toml);
    let broker = BrokerProcess::start(&path, &env_pairs());
    let http = reqwest::Client::new();
    let carol = || {
        http.get(format!("{}/v1/token/triumph", broker.base))
            .header("X-API-Key", CAROL_KEY)
            .send()
    };
    assert_eq!(carol().await.unwrap().status(), 403);

    write(
        dir.path(),
        "broker.toml",
        &format!("{toml}\n[[grants]]\nsubjects = [\"carol\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n"),
    );
    broker.signal("HUP");
    broker.wait_for_log("configuration reloaded", Duration::from_secs(5));
    assert_eq!(
        carol().await.unwrap().status(),
        200,
        "the new grant applies without a restart"
    );

    write(
        dir.path(),
        "broker.toml",
        &toml.replace("token_url = \"http://127.0.0.1", "token_url = \"ftp://127.0.0.1"),
    );
    broker.signal("HUP");
    let line = broker.wait_for_log("upstreams.triumph.token_url", Duration::from_secs(5));
    assert!(line.contains("configuration not reloaded"), "{line}");
    assert_eq!(carol().await.unwrap().status(), 200, "the running configuration stays");
    assert_eq!(readyz(&http, &broker).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_what_unchanged_parts_learnt_the_issuers_keys_and_the_hourly_quota() {
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = token_endpoint(IssueTokens::new(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}\n[[grants]]\nauthenticators = [\"jwt\"]\nsubjects = [\"user-1\", \"user-2\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n",
        config(&format!("{}/token", upstream.uri()), "client_secret_post")
            .replace("timeout = \"2s\"", "timeout = \"2s\"\nmax_tokens_per_hour = 1"),
        jwt_authenticator(&idp.issuer),
    );
    let path = write(dir.path(), "broker.toml", &toml);
    let broker = BrokerProcess::start(&path, &env_pairs());
    let http = reqwest::Client::new();
    let as_user = |token: String| {
        http.get(format!("{}/v1/token/triumph", broker.base))
            .bearer_auth(token)
            .send()
    };
    let alice_write = || {
        http.get(format!("{}/v1/token/triumph?scope=reports:write", broker.base))
            .header("X-API-Key", ALICE_KEY)
            .send()
    };
    assert_eq!(as_user(idp.token("rsa-a", "user-1")).await.unwrap().status(), 200);
    assert_eq!(idp.jwks_fetches(), 1);
    assert_eq!(
        alice_write().await.unwrap().status(),
        503,
        "the hour's one fetch is spent"
    );

    // The identity provider goes down, and the operator reloads for an unrelated change.
    idp.server.reset().await;
    write(
        dir.path(),
        "broker.toml",
        &toml.replace("refresh_skew = \"60s\"", "refresh_skew = \"50s\""),
    );
    broker.signal("HUP");
    broker.wait_for_log("configuration reloaded", Duration::from_secs(5));

    assert_eq!(
        as_user(idp.token("rsa-a", "user-2")).await.unwrap().status(),
        200,
        "a new id_token verifies with the keys learnt before the reload"
    );
    assert_eq!(alice_write().await.unwrap().status(), 503, "the quota carried over");
    assert_eq!(upstream_calls(&upstream).await, 1);
}

/// Every worker has accepted an id_token many times; a reload that changes the audience the
/// authenticator accepts must refuse it on every worker from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_audience_refuses_an_id_token_every_worker_had_accepted() {
    let idp = Idp::start(&["rsa-a"], None).await;
    let upstream = token_endpoint(IssueTokens::new(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}{}\n[[grants]]\nauthenticators = [\"jwt\"]\nsubjects = [\"user-1\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n",
        config(&format!("{}/token", upstream.uri()), "client_secret_post"),
        jwt_authenticator(&idp.issuer),
    );
    let path = write(dir.path(), "broker.toml", &toml);
    let broker = BrokerProcess::start(&path, &env_pairs());
    let token = idp.token("rsa-a", "user-1");
    // One kept connection per client: several clients reach both workers, each many times.
    let clients: Vec<reqwest::Client> = (0..4).map(|_| reqwest::Client::new()).collect();
    let statuses = || async {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            for http in &clients {
                let url = format!("{}/v1/token/triumph", broker.base);
                statuses.push(
                    http.get(url)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16(),
                );
            }
        }
        statuses
    };
    assert!(statuses().await.iter().all(|s| *s == 200));

    write(
        dir.path(),
        "broker.toml",
        &toml.replace(
            &format!("audiences = [\"{AUDIENCE}\"]"),
            "audiences = [\"another-app\"]",
        ),
    );
    broker.signal("HUP");
    broker.wait_for_log("configuration reloaded", Duration::from_secs(5));
    assert!(
        statuses().await.iter().all(|s| *s == 401),
        "the token is not for this audience any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_a_reload_adds_serves_tokens_on_the_same_route_as_the_configured_ones() {
    let upstream = token_endpoint(IssueTokens::new(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_url = format!("{}/token", upstream.uri());
    let toml = config(&token_url, "client_secret_post");
    let path = write(dir.path(), "broker.toml", &toml);
    let broker = BrokerProcess::start(&path, &env_pairs());
    let http = reqwest::Client::new();
    let get = |name: &str| {
        http.get(format!("{}/v1/token/{name}", broker.base))
            .header("X-API-Key", ALICE_KEY)
            .send()
    };
    let status = |response: reqwest::Response| response.status().as_u16();
    assert_eq!(status(get("triumph").await.unwrap()), 200);
    assert_eq!(
        status(get("tri%75mph").await.unwrap()),
        200,
        "percent-encoded, as before"
    );
    let unknown = get("added").await.unwrap();
    assert_eq!(status(unknown), 404);

    write(dir.path(), "broker.toml", &with_added_upstream(&toml, &token_url, ""));
    broker.signal("HUP");
    broker.wait_for_log("configuration reloaded", Duration::from_secs(5));
    let added = get("added").await.unwrap();
    assert_eq!(added.status(), 200);
    let body: Value = added.json().await.unwrap();
    assert_eq!(body["scope"], "reports:read");
    assert_eq!(status(get("triumph").await.unwrap()), 200);

    // All of them count under the one route label.
    let metrics = metrics_of(&http, &broker).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("token_broker_http_requests_total{route=\"/v1/token/{upstream}\",status=\"200\"}"))
        .unwrap_or_default();
    assert!(line.ends_with(" 4"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_is_json_lines_with_an_audit_line_per_token_and_no_secrets_even_at_trace_level() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "canary-process-token", "token_type": "Bearer", "expires_in": 600,
        })))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "broker.toml",
        &config(&format!("{}/token", upstream.uri()), "client_secret_basic"),
    );
    let broker = BrokerProcess::start(&path, &env_pairs());
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/v1/token/triumph", broker.base))
        .header("X-API-Key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(response.status(), 200);
    let audit = broker.wait_for_log("token served", Duration::from_secs(5));
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit["subject"], "alice");
    assert_eq!(audit["upstream"], "triumph");
    assert_eq!(audit["scopes"], "reports:read reports:write");
    assert_eq!(audit["cache_hit"], false);
    assert_eq!(audit["token_fingerprint"].as_str().unwrap().len(), 12);
    assert_eq!(audit["request_id"], request_id.as_str());
    broker.wait_for_log("\"status\":200", Duration::from_secs(5));

    let logs = broker.logs();
    assert!(
        logs.iter().any(|l| l.contains("\"level\":\"TRACE\"")),
        "trace level is on"
    );
    for line in &logs {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not JSON: {line}");
        for canary in [CLIENT_SECRET, ALICE_KEY, "canary-process-token"] {
            assert!(!line.contains(canary), "a secret in: {line}");
        }
    }
}

/// Each upstream configured at start has proxy routes of its own (matched as text, a prefix);
/// one a reload adds is served by the general route. Both answer alike and count under the
/// same route labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_a_reload_adds_is_proxied_on_the_same_routes_as_the_configured_ones() {
    let upstream = token_endpoint(IssueTokens::new(600)).await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("{}"))
        .mount(&api)
        .await;
    let proxied = |name: &str| {
        format!(
            "[upstreams.{name}.proxy]\nurl = \"{}/v2\"\nmethods = [\"GET\"]\npaths = [\"/me\"]\n",
            api.uri()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let token_url = format!("{}/token", upstream.uri());
    let toml = format!("{}\n{}", config(&token_url, "client_secret_post"), proxied("triumph"));
    let path = write(dir.path(), "broker.toml", &toml);
    let broker = BrokerProcess::start(&path, &env_pairs());
    let http = reqwest::Client::new();
    let get = |rest: &str| {
        http.get(format!("{}/v1/proxy/{rest}", broker.base))
            .header("X-API-Key", ALICE_KEY)
            .send()
    };
    let status = |response: reqwest::Response| response.status().as_u16();
    assert_eq!(status(get("triumph/me").await.unwrap()), 200);
    assert_eq!(
        status(get("tri%75mph/me").await.unwrap()),
        200,
        "percent-encoded, as before"
    );
    assert_eq!(
        status(get("triumph").await.unwrap()),
        403,
        "the root is a path like any other"
    );
    assert_eq!(
        status(get("triumphant/me").await.unwrap()),
        404,
        "a prefix ends at a segment"
    );
    assert_eq!(status(get("added/me").await.unwrap()), 404);
    assert_eq!(api.received_requests().await.unwrap().len(), 2);

    write(
        dir.path(),
        "broker.toml",
        &with_added_upstream(&toml, &token_url, &proxied("added")),
    );
    broker.signal("HUP");
    broker.wait_for_log("configuration reloaded", Duration::from_secs(5));
    assert_eq!(status(get("added/me").await.unwrap()), 200);
    assert_eq!(status(get("added").await.unwrap()), 403);
    assert_eq!(status(get("triumph/me").await.unwrap()), 200);
    assert_eq!(api.received_requests().await.unwrap().len(), 4);

    let metrics = metrics_of(&http, &broker).await;
    let count = |prefix: &str| {
        let line = metrics.lines().find(|l| l.starts_with(prefix)).unwrap_or_default();
        line.rsplit(' ').next().unwrap_or_default().to_string()
    };
    let path_route = r#"token_broker_http_requests_total{route="/v1/proxy/{upstream}/{path}""#;
    let root_route = r#"token_broker_http_requests_total{route="/v1/proxy/{upstream}""#;
    assert_eq!(count(&format!("{path_route},status=\"200\"}}")), "4", "{metrics}");
    assert_eq!(count(&format!("{path_route},status=\"404\"}}")), "2", "{metrics}");
    assert_eq!(count(&format!("{root_route},status=\"403\"}}")), "2", "{metrics}");
}
