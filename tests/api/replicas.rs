//! Several broker processes sharing a real Redis: one upstream request between them, nothing
//! readable in Redis, and no failed request when Redis freezes or dies.

use std::time::{Duration, Instant};

use crate::helpers::process::{write, BrokerProcess};
use crate::helpers::redis_server::RedisServer;
use crate::helpers::*;
use futures_util::future::join_all;
use serde_json::Value;
use wiremock::MockServer;

pub(crate) const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes, base64
const OTHER_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

/// The usual configuration, a Redis tier, and an upstream `spare` whose scopes r1…r20 give the
/// tests fresh cache keys.
pub(crate) fn replica_config(upstream: &MockServer, redis: &RedisServer, key: &str) -> String {
    let token_url = format!("{}/token", upstream.uri());
    let scopes: Vec<String> = (1..=20).map(|n| format!("\"r{n}\"")).collect();
    format!(
        "{}\n[upstreams.spare]\ntoken_url = \"{token_url}\"\nclient_id = \"c\"\nclient_secret = {{ env = \"TRIUMPH_SECRET\" }}\nscopes = [{scopes}]\n\n[[grants]]\nsubjects = [\"alice\"]\nupstreams = {{ spare = [{scopes}] }}\n\n[cache.redis]\nurl = \"{}\"\nencryption_key = \"{key}\"\ntimeout = \"200ms\"\n",
        config(&token_url, "client_secret_post"),
        redis.url(),
        scopes = scopes.join(", "),
    )
}

pub(crate) fn start_replicas(dir: &std::path::Path, toml: &str, n: usize) -> Vec<BrokerProcess> {
    let path = write(dir, "replica.toml", toml);
    (0..n)
        .map(|_| BrokerProcess::start(&path, &[("TRIUMPH_SECRET", CLIENT_SECRET)]))
        .collect()
}

pub(crate) async fn get(http: &reqwest::Client, replica: &BrokerProcess, scope: &str) -> reqwest::Response {
    http.get(format!("{}/v1/token/triumph", replica.base))
        .query(&[("scope", scope)])
        .header("X-API-Key", ALICE_KEY)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn token_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_make_one_upstream_request_for_300_concurrent_cold_requests() {
    let redis = RedisServer::start();
    let upstream = token_endpoint(IssueTokens::new(3600).with_delay(Duration::from_millis(300))).await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = start_replicas(dir.path(), &replica_config(&upstream, &redis, KEY), 3);
    let http = reqwest::Client::new();
    let responses = join_all((0..300).map(|i| get(&http, &replicas[i % 3], "reports:read"))).await;
    let mut tokens = Vec::new();
    for response in responses {
        tokens.push(token_of(response).await);
    }
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "every replica serves the same token"
    );
    assert_eq!(upstream_calls(&upstream).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_no_readable_token_and_a_replica_with_another_key_fetches_for_itself() {
    let redis = RedisServer::start();
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = start_replicas(dir.path(), &replica_config(&upstream, &redis, KEY), 2);
    let http = reqwest::Client::new();
    let token = token_of(get(&http, &replicas[0], "reports:read").await).await;
    assert_eq!(token_of(get(&http, &replicas[1], "reports:read").await).await, token);
    assert_eq!(upstream_calls(&upstream).await, 1);

    let dump = redis.dump().await;
    assert!(!dump.is_empty(), "the token was shared through Redis");
    for (key, value) in &dump {
        for needle in [token.as_str(), CLIENT_SECRET, "reports:read", "triumph"] {
            assert!(!key.contains(needle), "a key name reveals {needle}: {key}");
            assert!(
                !value.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "a value reveals {needle}"
            );
        }
    }

    let other_dir = tempfile::tempdir().unwrap();
    let stranger = start_replicas(other_dir.path(), &replica_config(&upstream, &redis, OTHER_KEY), 1);
    let own = token_of(get(&http, &stranger[0], "reports:read").await).await;
    assert_ne!(own, token);
    assert_eq!(upstream_calls(&upstream).await, 2);
    let errors = stranger[0]
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .count();
    assert_eq!(errors, 0, "the stranger carried on without errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_a_tls_redis_and_one_that_does_not_trust_its_certificate_shares_nothing() {
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_tls(redis_dir.path());
    let ca_file = redis.ca_file.clone().unwrap();
    let upstream = token_endpoint(IssueTokens::new(3600).with_delay(Duration::from_millis(300))).await;
    let dir = tempfile::tempdir().unwrap();
    let trusting = format!(
        "{}ca_file = \"{}\"\n",
        replica_config(&upstream, &redis, KEY),
        ca_file.display()
    );
    assert!(trusting.contains("url = \"rediss://127.0.0.1:"), "{trusting}");
    let replicas = start_replicas(dir.path(), &trusting, 2);
    let http = reqwest::Client::new();
    let responses = join_all((0..100).map(|i| get(&http, &replicas[i % 2], "reports:read"))).await;
    let mut tokens = Vec::new();
    for response in responses {
        tokens.push(token_of(response).await);
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]), "both replicas serve one token");
    assert_eq!(upstream_calls(&upstream).await, 1);
    assert!(!redis.dump().await.is_empty(), "the token went through Redis, over TLS");

    // Without ca_file the system's roots are trusted, and the test CA is not among them.
    let other_dir = tempfile::tempdir().unwrap();
    let distrusting = start_replicas(other_dir.path(), &replica_config(&upstream, &redis, KEY), 1);
    let own = token_of(get(&http, &distrusting[0], "reports:read").await).await;
    assert_ne!(
        own, tokens[0],
        "nothing was read from a Redis whose certificate is not trusted"
    );
    assert_eq!(upstream_calls(&upstream).await, 2);
    // The operator is told why, once, at start-up.
    let warning = distrusting[0].wait_for_log("shared cache: Redis is not usable", Duration::from_secs(10));
    assert!(
        warning.contains("certificate") || warning.contains("UnknownIssuer"),
        "{warning}"
    );
    for replica in &replicas {
        replica.wait_for_log("shared cache: Redis answers", Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_is_reported_at_start_up_without_either_password_in_the_logs() {
    const PASSWORD: &str = "redis-canary-pass-4f1c";
    const WRONG: &str = "wrong-canary-pass-9d2e";
    let redis = RedisServer::start_with_password(PASSWORD);
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let right = replica_config(&upstream, &redis, KEY);
    assert!(right.contains(&format!(":{PASSWORD}@")), "{right}");
    let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut good = start_replicas(dir.path(), &right, 1);
    let mut bad = start_replicas(other_dir.path(), &right.replace(PASSWORD, WRONG), 1);
    good[0].wait_for_log("shared cache: Redis answers", Duration::from_secs(5));
    let warning = bad[0].wait_for_log("shared cache: Redis is not usable", Duration::from_secs(10));
    assert!(
        warning.to_lowercase().contains("pass") || warning.contains("auth"),
        "{warning}"
    );

    let http = reqwest::Client::new();
    let token = token_of(get(&http, &good[0], "reports:read").await).await;
    assert_ne!(token_of(get(&http, &bad[0], "reports:read").await).await, token);
    good[0].stop();
    bad[0].stop();
    for line in good[0].logs().iter().chain(bad[0].logs().iter()) {
        assert!(
            !line.contains(PASSWORD) && !line.contains(WRONG),
            "a Redis password in a log line: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_then_killed_redis_fails_no_request_and_service_recovers_when_it_returns() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = start_replicas(dir.path(), &replica_config(&upstream, &redis, KEY), 2);
    let http = reqwest::Client::new();
    let warm = token_of(get(&http, &replicas[0], "reports:read").await).await;
    assert_eq!(token_of(get(&http, &replicas[1], "reports:read").await).await, warm);

    redis.signal("STOP");
    // Warm requests never wait on Redis.
    for replica in &replicas {
        for _ in 0..20 {
            let started = Instant::now();
            assert_eq!(token_of(get(&http, replica, "reports:read").await).await, warm);
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "{:?}",
                started.elapsed()
            );
        }
    }
    // A cold key waits at most about the Redis timeout, then fetches for itself.
    let started = Instant::now();
    token_of(get(&http, &replicas[0], "reports:write").await).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    redis.kill();
    for replica in &replicas {
        assert_eq!(token_of(get(&http, replica, "reports:read").await).await, warm);
    }
    token_of(get(&http, &replicas[1], "reports:read reports:write").await).await;

    // Back again: the replicas reconnect by themselves and share tokens once more: a fresh key
    // fetched through one replica is served by the other without another upstream request.
    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut recovered = false;
    for n in 1..=20 {
        let scope = format!("r{n}");
        let spare = |replica: &BrokerProcess| {
            http.get(format!("{}/v1/token/spare", replica.base))
                .query(&[("scope", scope.as_str())])
                .header("X-API-Key", ALICE_KEY)
                .send()
        };
        let first = token_of(spare(&replicas[0]).await.unwrap()).await;
        let second = token_of(spare(&replicas[1]).await.unwrap()).await;
        if first == second {
            recovered = true;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not share tokens again within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(recovered, "the replicas share tokens again once Redis is back");
}
