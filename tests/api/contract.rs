//! The HTTP contract in docs/openapi.yaml, checked two ways: the document validates as OpenAPI
//! 3.1 (openapi-spec-validator), and schemathesis drives every operation of a running broker
//! with generated requests (bounded), failing on a server error, an undocumented status, a
//! content type, header or body that does not match the document. Both come from PyPI into
//! tests/contract/.venv (scripts/test installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KEY: &str = "contract-key-0123456789";

fn tool(name: &str) -> PathBuf {
    let path = Path::new(ROOT).join("tests/contract/.venv/bin").join(name);
    assert!(
        path.exists(),
        "{name} is not installed: python3 -m venv tests/contract/.venv && tests/contract/.venv/bin/pip install -r tests/contract/requirements.txt (scripts/test does it)"
    );
    path
}

#[test]
fn the_openapi_document_is_valid_openapi() {
    let output = Command::new(tool("openapi-spec-validator"))
        .arg(format!("{ROOT}/docs/openapi.yaml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The broker the contract is checked against: an upstream `demo` at a stand-in token endpoint,
/// an API key, public tokens; limits that would turn generated requests into 429s are off.
fn contract_config(token_url: &str, signing_key: &Path) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        workers = 2
        rate_limit_per_second = 0
        auth_failures_per_minute = 0
        refresh_per_minute = 0
        max_header_bytes = 16384

        [upstreams.demo]
        token_url = "{token_url}"
        client_id = "contract"
        client_secret = {{ env = "TRIUMPH_SECRET" }}
        scopes = ["read", "write"]

        [[authenticators]]
        type = "api_key"
        keys = [{{ id = "contract", hash = "{hash}", subject = "contract-user" }}]

        [[authenticators]]
        type = "public_token"

        [[grants]]
        subjects = ["contract-user"]
        upstreams = {{ demo = ["read", "write"] }}

        [public_tokens]
        signing_key = {{ file = {key:?} }}
        mint_subjects = ["contract-user"]
        "#,
        hash = token_broker::identity::hash_key(KEY),
        key = signing_key.display().to_string(),
    )
}

fn schemathesis(base: &str, selection: &[&str]) -> std::process::Output {
    Command::new(tool("schemathesis"))
        .args(["run", &format!("{ROOT}/docs/openapi.yaml"), "--url", base])
        .args(["--header", &format!("X-API-Key: {KEY}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "1"])
        .args(["--generation-database", "none", "--no-color", "--workers", "2"])
        .args(selection)
        // It keeps a state folder in its working directory: not in the repository.
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_a_running_broker() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, token_broker::public_tokens::SigningKey::generate_pem()).unwrap();
    let app = TestApp::spawn(&contract_config(&format!("{}/token", upstream.uri()), &key)).await;
    let base = app.base.clone();
    let admin = app.admin.clone();
    let (public, admin) = tokio::task::spawn_blocking(move || {
        (
            schemathesis(&base, &["--exclude-tag", "admin"]),
            schemathesis(&admin, &["--include-tag", "admin"]),
        )
    })
    .await
    .unwrap();
    for (listener, output) in [("public", public), ("admin", admin)] {
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        println!("{report}");
        assert!(
            output.status.success(),
            "schemathesis found problems on the {listener} listener:\n{report}"
        );
        assert!(report.contains("passed"), "{listener}: no operation ran:\n{report}");
    }
}
