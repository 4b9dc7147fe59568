//! The admin API on the admin listener: what is cached (never a token), evicting (here, in Redis
//! and on the other replicas), refreshing now, each upstream's state; all behind the admin token.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::process::BrokerProcess;
use crate::helpers::redis_server::RedisServer;
use crate::helpers::*;
use crate::replicas::{get, replica_config, start_replicas, token_of, KEY};

const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn with_admin_token(toml: &str) -> String {
    toml.replacen(
        "workers = 2",
        &format!("workers = 2\nadmin_token = \"{ADMIN_TOKEN}\""),
        1,
    )
}

/// A broker with the admin token whose `triumph` asks `server`.
async fn broker_for(server: &wiremock::MockServer) -> TestApp {
    TestApp::spawn(&with_admin_token(&config(
        &format!("{}/token", server.uri()),
        "client_secret_post",
    )))
    .await
}

async fn admin(http: &reqwest::Client, method: reqwest::Method, url: String) -> (u16, Value) {
    let response = http.request(method, url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn every_admin_route_wants_the_admin_token() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = broker_for(&upstream).await;
    let routes = [
        (reqwest::Method::GET, "/admin/tokens"),
        (reqwest::Method::DELETE, "/admin/tokens/triumph"),
        (reqwest::Method::POST, "/admin/tokens/triumph/refresh"),
        (reqwest::Method::GET, "/admin/upstreams"),
    ];
    for (method, path) in routes {
        let url = format!("{}{path}", app.admin);
        let without = app.http.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(without.status(), 401, "{method} {path}");
        let wrong = app
            .http
            .request(method.clone(), &url)
            .bearer_auth("admin-token-0123456788")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{method} {path}");
        let (status, _) = admin(&app.http, method.clone(), url).await;
        assert_eq!(status, 200, "{method} {path}");
    }
    let (status, body) = admin(
        &app.http,
        reqwest::Method::DELETE,
        format!("{}/admin/tokens/nope", app.admin),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_upstream")));
}

#[tokio::test]
async fn the_listing_shows_an_entry_after_a_fetch_with_its_fingerprints_but_never_the_token() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = broker_for(&upstream).await;
    let list = || admin(&app.http, reqwest::Method::GET, format!("{}/admin/tokens", app.admin));
    assert_eq!(list().await, (200, serde_json::json!([])));

    let response = app
        .get_token(ALICE_KEY, "triumph", Some("reports:write reports:read"))
        .await;
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_string();

    let (status, entries) = list().await;
    assert_eq!(status, 200);
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["upstream"], "triumph");
    assert_eq!(entry["scopes"], serde_json::json!(["reports:read", "reports:write"]));
    assert_eq!(entry["source"], "memory");
    assert_eq!(
        entry["token"],
        hex::encode(&Sha256::digest(token.as_bytes())[..6]),
        "the token's fingerprint, as log lines name it"
    );
    let triumph = app.upstream_status("triumph", Some(ADMIN_TOKEN)).await;
    assert_eq!(entry["credential"], triumph["credentials"][0], "{triumph}");
    let expires_at = entry["expires_at"].as_u64().unwrap();
    let served_until = entry["served_until"].as_u64().unwrap();
    assert!(
        served_until < expires_at && expires_at - entry["fetched_at"].as_u64().unwrap() == 3600,
        "{entry}"
    );
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains(&token), "never the token: {text}");
}

#[tokio::test]
async fn refresh_fetches_new_tokens_now_and_upstreams_shows_a_failing_endpoint() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = broker_for(&upstream).await;
    let first: Value = app
        .get_token(ALICE_KEY, "triumph", Some("reports:read"))
        .await
        .json()
        .await
        .unwrap();
    let (status, body) = admin(
        &app.http,
        reqwest::Method::POST,
        format!("{}/admin/tokens/triumph/refresh", app.admin),
    )
    .await;
    assert_eq!(
        (status, body["refreshed"].as_u64(), body["failed"].as_u64()),
        (200, Some(1), Some(0))
    );
    let second: Value = app
        .get_token(ALICE_KEY, "triumph", Some("reports:read"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(first["access_token"], second["access_token"]);
    assert_eq!(upstream_calls(&upstream).await, 2);

    let triumph = app.upstream_status("triumph", Some(ADMIN_TOKEN)).await;
    assert_eq!(triumph["breaker"], "closed");
    assert_eq!(triumph["failing"], false);
    assert_eq!(triumph["last_outcome"]["outcome"], "success");

    // Another broker whose token endpoint fails.
    let failing = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(401).set_body_json(serde_json::json!({ "error": "invalid_client" })),
        )
        .mount(&failing)
        .await;
    let app = broker_for(&failing).await;
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 502);
    let triumph = app.upstream_status("triumph", Some(ADMIN_TOKEN)).await;
    assert_eq!(triumph["failing"], true, "{triumph}");
    assert_eq!(triumph["last_error"]["outcome"], "refused");
    assert_eq!(triumph["last_error"]["oauth_error"], "invalid_client");
    let text = triumph.to_string();
    assert!(!text.contains(CLIENT_SECRET), "{text}");
}

/// A worker that served a token warm recalls it without reading the cache: an operator's
/// eviction, made on the admin listener's thread, still reaches that worker's next request.
#[tokio::test]
async fn after_an_eviction_a_warm_worker_answers_with_a_new_token() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let app = broker_for(&upstream).await;
    let token = || async {
        let body: Value = app
            .get_token(ALICE_KEY, "triumph", Some("reports:read"))
            .await
            .json()
            .await
            .unwrap();
        body["access_token"].as_str().unwrap().to_string()
    };
    let first = token().await;
    for _ in 0..3 {
        assert_eq!(token().await, first);
    }
    let (status, _) = admin(
        &app.http,
        reqwest::Method::DELETE,
        format!("{}/admin/tokens/triumph", app.admin),
    )
    .await;
    assert_eq!(status, 200);
    let second = token().await;
    assert_ne!(second, first);
    assert_eq!(token().await, second);
    assert_eq!(upstream_calls(&upstream).await, 2);
}

/// Two replicas share a Redis: evicting on one deletes the Redis entry and makes the other drop
/// its copy, so the next request there fetches anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_reaches_redis_and_the_other_replicas() {
    let redis = RedisServer::start();
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<BrokerProcess> = start_replicas(
        dir.path(),
        &with_admin_token(&replica_config(&upstream, &redis, KEY)),
        2,
    );
    let http = reqwest::Client::new();
    let first = token_of(get(&http, &replicas[0], "reports:read").await).await;
    assert_eq!(token_of(get(&http, &replicas[1], "reports:read").await).await, first);
    let (_, listed) = admin(
        &http,
        reqwest::Method::GET,
        format!("{}/admin/tokens", replicas[1].admin),
    )
    .await;
    assert_eq!(listed[0]["source"], "redis", "{listed}");
    assert_eq!(upstream_calls(&upstream).await, 1);

    // Someone with write access to Redis publishes the upstream's tag, read off an entry's name,
    // on the eviction channel: not signed with the deployment's key, so nobody drops anything.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*token:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    let tag = names[0].split(':').rev().nth(1).unwrap().to_string();
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("*evictions")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(channels.len(), 1, "{channels:?}");
    for _ in 0..1000 {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channels[0])
            .arg(&tag)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, listed) = admin(
        &http,
        reqwest::Method::GET,
        format!("{}/admin/tokens", replicas[1].admin),
    )
    .await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "a forged eviction is ignored: {listed}"
    );

    let (status, evicted) = admin(
        &http,
        reqwest::Method::DELETE,
        format!("{}/admin/tokens/triumph", replicas[0].admin),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (evicted["evicted"].as_u64(), evicted["shared_evicted"].as_u64()),
        (Some(1), Some(1)),
        "{evicted}"
    );
    // The other replica hears of it on the eviction channel.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, listed) = admin(
            &http,
            reqwest::Method::GET,
            format!("{}/admin/tokens", replicas[1].admin),
        )
        .await;
        if listed.as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replica 2 still holds {listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = token_of(get(&http, &replicas[1], "reports:read").await).await;
    assert_ne!(second, first);
    assert_eq!(upstream_calls(&upstream).await, 2);
}

/// Runs `token-broker status` against `admin`: exit code, stdout, stderr.
fn status_command(admin: &str, token: Option<&str>, json: bool) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_token-broker"));
    command
        .args(["status", "--admin", admin])
        .env_remove("TOKEN_BROKER_ADMIN_TOKEN");
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    if json {
        command.arg("--json");
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// `token-broker status` against running brokers: all healthy → the tables and exit 0; an
/// upstream whose endpoint fails → printed as FAILING with its error, exit 1; without the admin
/// token → exit 2 saying why. `--json` for scripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_command_prints_a_failing_upstream_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let start = |name: &str, token_url: String| {
        let toml = with_admin_token(&config(&token_url, "client_secret_post"));
        let path = crate::helpers::process::write(dir.path(), name, &toml);
        BrokerProcess::start(&path, &[("TRIUMPH_SECRET", CLIENT_SECRET)])
    };

    let healthy_endpoint = token_endpoint(IssueTokens::new(3600)).await;
    let healthy = start("healthy.toml", format!("{}/token", healthy_endpoint.uri()));
    let token = token_of(get(&http, &healthy, "reports:read").await).await;
    let (code, stdout, _) = status_command(&healthy.admin, Some(ADMIN_TOKEN), false);
    assert_eq!(code, Some(0), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("triumph ")).unwrap();
    assert!(line.contains(" ok ") && line.contains(" closed "), "{stdout}");
    assert!(stdout.contains("reports:read") && !stdout.contains(&token), "{stdout}");

    let failing_endpoint = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(401).set_body_json(serde_json::json!({ "error": "invalid_client" })),
        )
        .mount(&failing_endpoint)
        .await;
    let failing = start("failing.toml", format!("{}/token", failing_endpoint.uri()));
    assert_eq!(get(&http, &failing, "reports:read").await.status(), 502);
    let (code, stdout, _) = status_command(&failing.admin, Some(ADMIN_TOKEN), false);
    assert_eq!(code, Some(1), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("triumph ")).unwrap();
    assert!(
        line.contains("FAILING") && line.contains("refused (invalid_client)"),
        "{stdout}"
    );

    let (code, json, _) = status_command(&failing.admin, Some(ADMIN_TOKEN), true);
    assert_eq!(code, Some(1));
    let json: Value = serde_json::from_str(&json).unwrap();
    let triumph = json["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["upstream"] == "triumph")
        .unwrap();
    assert_eq!(triumph["failing"], true);

    let (code, _, stderr) = status_command(&failing.admin, None, false);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("401"), "{stderr}");
}
