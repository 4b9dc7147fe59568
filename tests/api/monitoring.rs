//! The shipped dashboard and alerts, checked by the tools operators run: `promtool check rules`
//! and `promtool test rules` (synthetic series), and every metric they read exists in a live
//! broker's `/metrics`. promtool comes from Debian's `prometheus` package, which the test command
//! installs; these tests fail, rather than skip, without it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::helpers::*;

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool is not installed: scripts/test installs Debian's prometheus package");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The `token_broker_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("token_broker_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.insert(text[start..end].to_string());
        i = end;
    }
    names
}

/// Every metric the dashboard and the alerts read is one a live broker exposes (counters and
/// histograms by their sample names: `_total`, `_bucket`).
#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_read_exists_in_a_live_broker() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let toml = config(&format!("{}/token", upstream.uri()), "client_secret_post").replacen(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nmax_tokens_per_hour = 100",
        1,
    );
    let app = TestApp::spawn(&toml).await;
    assert_eq!(app.get_token(ALICE_KEY, "triumph", None).await.status(), 200);
    let exposed = app.metrics().await;
    let families: BTreeSet<String> = exposed
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_string)
        .collect();
    let exists = |name: &str| {
        families.contains(name)
            || ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| families.contains(base)))
    };
    let dashboard = std::fs::read_to_string(deploy("grafana/token-broker.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = parsed["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{}", panels.len());
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let read = metric_names(&format!("{}\n{alerts}", queries.join("\n")));
    assert!(read.len() >= 12, "{read:?}");
    let missing: Vec<&String> = read.iter().filter(|name| !exists(name)).collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}\n{exposed}");
    // What the issue asks the dashboard to show, by the metrics that show it.
    for wanted in [
        "token_broker_http_requests_total",
        "token_broker_cache_hits_total",
        "token_broker_upstream_request_duration_seconds_bucket",
        "token_broker_upstream_requests_total",
        "token_broker_upstream_circuit_open",
        "token_broker_upstream_quota_fetches_total",
        "token_broker_proxied_requests_total",
    ] {
        assert!(
            queries.iter().any(|q| q.contains(wanted)),
            "the dashboard does not read {wanted}"
        );
    }
}
