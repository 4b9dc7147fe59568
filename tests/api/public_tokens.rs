//! Public access tokens: minted by the app's backend, exchanged by the browser, scoped by what they
//! carry, verified by an independent JOSE implementation.

use std::path::Path;
use std::process::Command;

use crate::helpers::idp::now;
use crate::helpers::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use token_broker::public_tokens::SigningKey;
use wiremock::MockServer;

/// The usual configuration plus `[public_tokens]` signed with `key` (previous keys after it);
/// alice may mint.
fn config_with_keys(upstream: &MockServer, key: &Path, previous: &[&Path]) -> String {
    let previous: Vec<String> = previous
        .iter()
        .map(|p| format!("{{ file = {:?} }}", p.display().to_string()))
        .collect();
    format!(
        "{}\n[[authenticators]]\ntype = \"public_token\"\n\n[public_tokens]\nsigning_key = {{ file = {:?} }}\nprevious_keys = [{}]\nmax_expiration = \"30 days\"\nmint_subjects = [\"alice\"]\n",
        config(&format!("{}/token", upstream.uri()), "client_secret_post"),
        key.display().to_string(),
        previous.join(", "),
    )
}

fn new_key(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, SigningKey::generate_pem()).unwrap();
    path
}

struct Setup {
    app: TestApp,
    _upstream: MockServer,
    _dir: tempfile::TempDir,
    key: std::path::PathBuf,
}

async fn setup() -> Setup {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "current.pem");
    let app = TestApp::spawn(&config_with_keys(&upstream, &key, &[])).await;
    Setup {
        app,
        _upstream: upstream,
        _dir: dir,
        key,
    }
}

async fn mint(app: &TestApp, api_key: &str, body: Value) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/public-tokens", app.base))
        .header("X-API-Key", api_key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn minted(app: &TestApp, body: Value) -> (String, u64) {
    let response = mint(app, ALICE_KEY, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_string(),
        body["expires_at"].as_u64().unwrap(),
    )
}

async fn exchange(app: &TestApp, token: &str, upstream: &str, scope: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(app.token_url(upstream)).bearer_auth(token);
    if let Some(scope) = scope {
        request = request.query(&[("scope", scope)]);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_expiration_form_behaves_as_documented() {
    let s = setup().await;
    let date = time::OffsetDateTime::from_unix_timestamp((now() + 7200) as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let accepted = [
        (json!("1hr"), 3600),
        (json!("15 min"), 900),
        (json!("2 days"), 172_800),
        (json!("1 week"), 604_800),
        (json!(now() + 600), 600),
        (json!(date), 7200),
        (Value::Null, 900),
    ];
    for (expiration, seconds) in accepted {
        let (_, expires_at) = minted(&s.app, json!({"subject": "user-42", "expirationTime": expiration})).await;
        assert!(expires_at.abs_diff(now() + seconds) <= 2, "{expiration}: {expires_at}");
    }
    let refused = [
        (json!("-1h"), "in the past"),
        (json!("1h ago"), "in the past"),
        (json!(now() - 10), "in the past"),
        (json!("3 months"), "months"),
        (json!("tomorrow-ish"), "time span"),
        (json!("31 days"), "beyond max_expiration"),
        (json!(now() + 40 * 86_400), "beyond max_expiration"),
    ];
    for (expiration, says) in refused {
        let response = mint(
            &s.app,
            ALICE_KEY,
            json!({"subject": "user-42", "expirationTime": expiration}),
        )
        .await;
        assert_eq!(response.status(), 400, "{expiration}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(says), "{expiration}: {description}");
    }
}

#[tokio::test]
async fn a_token_without_scopes_authenticates_but_can_exchange_nothing() {
    let s = setup().await;
    let (token, _) = minted(&s.app, json!({"subject": "user-42"})).await;
    let response = exchange(&s.app, &token, "triumph", None).await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "access_denied");
}

#[tokio::test]
async fn a_token_gets_exactly_its_scopes_and_nothing_else() {
    let s = setup().await;
    let (token, _) = minted(
        &s.app,
        json!({"subject": "user-42", "scopes": {"upstreams": {"triumph": ["reports:read"]}}, "expirationTime": "1hr"}),
    )
    .await;
    let ok = exchange(&s.app, &token, "triumph", None).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["scope"], "reports:read");
    assert_eq!(
        exchange(&s.app, &token, "triumph", Some("reports:write"))
            .await
            .status(),
        403
    );
    assert_eq!(exchange(&s.app, &token, "other", None).await.status(), 403);

    let (everything, _) = minted(
        &s.app,
        json!({"subject": "user-43", "scopes": {"upstreams": {"triumph": true}}}),
    )
    .await;
    let all = exchange(&s.app, &everything, "triumph", None).await;
    assert_eq!(
        all.json::<Value>().await.unwrap()["scope"],
        "reports:read reports:write"
    );
}

#[tokio::test]
async fn a_minter_never_hands_out_more_than_its_own_grants() {
    let s = setup().await;
    let beyond = mint(
        &s.app,
        ALICE_KEY,
        json!({"subject": "u", "scopes": {"upstreams": {"triumph": ["admin"]}}}),
    )
    .await;
    assert_eq!(beyond.status(), 403);
    let ungranted = mint(
        &s.app,
        ALICE_KEY,
        json!({"subject": "u", "scopes": {"upstreams": {"other": true}}}),
    )
    .await;
    assert_eq!(ungranted.status(), 403);
    let not_a_minter = mint(&s.app, BOB_KEY, json!({"subject": "u"})).await;
    assert_eq!(not_a_minter.status(), 403);
    assert_eq!(not_a_minter.json::<Value>().await.unwrap()["error"], "access_denied");
    let anonymous = s
        .app
        .http
        .post(format!("{}/v1/public-tokens", s.app.base))
        .json(&json!({"subject": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // A public token cannot mint, whatever its subject.
    let (token, _) = minted(
        &s.app,
        json!({"subject": "alice", "scopes": {"upstreams": {"triumph": true}}}),
    )
    .await;
    let by_token = s
        .app
        .http
        .post(format!("{}/v1/public-tokens", s.app.base))
        .bearer_auth(&token)
        .json(&json!({"subject": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_token.status(), 403);
    let malformed = mint(
        &s.app,
        ALICE_KEY,
        json!({"subject": "u", "scopes": {"upstreams": {"nope": true}}}),
    )
    .await;
    assert_eq!(malformed.status(), 400);
}

#[tokio::test]
async fn tampered_foreign_and_expired_tokens_are_401() {
    let s = setup().await;
    let (token, _) = minted(
        &s.app,
        json!({"subject": "user-42", "scopes": {"upstreams": {"triumph": ["reports:read"]}}}),
    )
    .await;
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["scopes"]["upstreams"]["triumph"] = json!(["reports:read", "reports:write"]);
    let tampered = format!("{}.{}.{}", parts[0], b64.encode(payload.to_string()), parts[2]);
    assert_eq!(exchange(&s.app, &tampered, "triumph", None).await.status(), 401);

    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap();
    let sign = |pem: &str, claims: &Value| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap()).unwrap()
    };
    let claims = |exp: u64| {
        json!({"iss": "token-broker", "sub": "user-42", "iat": now() - 7200, "exp": exp, "jti": "x",
               "scopes": {"upstreams": {"triumph": ["reports:read"]}}})
    };
    let other_key = sign(&SigningKey::generate_pem(), &claims(now() + 600));
    assert_eq!(exchange(&s.app, &other_key, "triumph", None).await.status(), 401);
    let own_key = std::fs::read_to_string(&s.key).unwrap();
    let expired = sign(&own_key, &claims(now() - 3600));
    assert_eq!(exchange(&s.app, &expired, "triumph", None).await.status(), 401);
    // The same key and claims, not expired: accepted, so the refusals above were for the reasons named.
    assert_eq!(
        exchange(&s.app, &sign(&own_key, &claims(now() + 600)), "triumph", None)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_token_signed_by_a_key_moved_to_previous_keys_is_still_accepted() {
    let upstream = token_endpoint(IssueTokens::new(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let old = new_key(dir.path(), "old.pem");
    let new = new_key(dir.path(), "new.pem");
    let before = TestApp::spawn(&config_with_keys(&upstream, &old, &[])).await;
    let (token, _) = minted(
        &before,
        json!({"subject": "u", "scopes": {"upstreams": {"triumph": ["reports:read"]}}}),
    )
    .await;

    let rotated = TestApp::spawn(&config_with_keys(&upstream, &new, &[&old])).await;
    assert_eq!(exchange(&rotated, &token, "triumph", None).await.status(), 200);
    let jwks: Value = rotated
        .http
        .get(format!("{}/.well-known/jwks.json", rotated.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);

    let dropped = TestApp::spawn(&config_with_keys(&upstream, &new, &[])).await;
    assert_eq!(exchange(&dropped, &token, "triumph", None).await.status(), 401);
}

#[tokio::test]
async fn an_independent_jose_implementation_verifies_a_minted_token_against_the_jwks() {
    let s = setup().await;
    let (token, expires_at) = minted(
        &s.app,
        json!({"subject": "user-42", "scopes": {"upstreams": {"triumph": ["reports:read"]}}, "expirationTime": "1hr"}),
    )
    .await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        dir.join("node_modules/jose").is_dir(),
        "jose is not installed: run `npm ci` in tests/interop"
    );
    let verify = |token: &str| {
        Command::new("node")
            .arg("verify-jwt.mjs")
            .arg(format!("{}/.well-known/jwks.json", s.app.base))
            .arg("token-broker")
            .arg(token)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let output = verify(&token);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let verified: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verified["header"]["alg"], "EdDSA");
    assert_eq!(verified["header"]["typ"], "at+jwt");
    assert_eq!(verified["payload"]["sub"], "user-42");
    assert_eq!(verified["payload"]["exp"], expires_at);
    assert!(verified["payload"]["jti"].is_string() && verified["payload"]["iat"].is_u64());
    assert_eq!(
        verified["payload"]["scopes"]["upstreams"]["triumph"],
        json!(["reports:read"])
    );
    // And it refuses a token that is not ours.
    let signature_middle = token.rfind('.').unwrap() + 20;
    let flipped = if &token[signature_middle..=signature_middle] == "A" {
        "B"
    } else {
        "A"
    };
    let forged = format!(
        "{}{flipped}{}",
        &token[..signature_middle],
        &token[signature_middle + 1..]
    );
    let refused = verify(&forged);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("signature"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test]
async fn keygen_writes_a_key_the_broker_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.pem");
    let output = Command::new(env!("CARGO_BIN_EXE_token-broker"))
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let kid = String::from_utf8(output.stderr)
        .unwrap()
        .trim()
        .trim_start_matches("kid: ")
        .to_string();
    let key = SigningKey::from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(key.verifying.kid, kid);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}
