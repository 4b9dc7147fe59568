//! Interop with a second, independent OAuth2 server: Authlib's authorization server (PyPI, on
//! Flask; tests/authlib/authlib_server.py), with `private_key_jwt` for RSA and EC P-256 keys made
//! by openssl. It verifies each assertion with the registered public key and refuses a `jti` it
//! has seen. (Authlib, through joserfc, accepts only RFC 7518's recommended algorithms unless told
//! otherwise: RS256 and ES256 pass, while EdDSA, ES384 and PS256 are refused by its default.) The test command installs it into tests/authlib/.venv; this test fails,
//! rather than skips, when it is missing.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{openssl_key, TestApp, ALICE_KEY};

struct Authlib {
    _child: Child,
    base: String,
}

/// Starts the server with one client per `(client_id, key type, public key file)`.
async fn start_authlib(clients: &[(&str, &str, String)]) -> Authlib {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/authlib");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "Authlib is not installed: scripts/test installs tests/authlib/requirements.txt into tests/authlib/.venv"
    );
    let mut child = Command::new(python)
        .arg(dir.join("authlib_server.py"))
        .args(clients.iter().map(|(id, kty, public)| format!("{id}={kty}:{public}")))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines.next_line().await.unwrap().expect("Authlib printed its port");
        if let Some(port) = line.strip_prefix("listening ") {
            break port.trim().to_string();
        }
    };
    Authlib {
        _child: child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// A broker whose `triumph` is `client_id` at the server, signing with `private` (PKCS#8 file).
async fn broker(server: &Authlib, client_id: &str, private: &str) -> TestApp {
    let toml = crate::helpers::config(&format!("{}/token", server.base), "private_key_jwt")
        .replacen(
            "client_secret = { env = \"TRIUMPH_SECRET\" }",
            &format!("private_key = {{ file = {private:?} }}"),
            1,
        )
        .replacen(
            "client_id = \"broker-client\"",
            &format!("client_id = \"{client_id}\""),
            1,
        )
        .replace(
            "scopes = [\"reports:read\", \"reports:write\", \"admin\"]",
            "scopes = [\"api:read\"]",
        )
        .replace(
            "triumph = [\"reports:read\", \"reports:write\"]",
            "triumph = [\"api:read\"]",
        )
        .replace("triumph = [\"reports:read\"]", "triumph = [\"api:read\"]");
    TestApp::spawn(&toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_authlib_with_private_key_jwt_for_rsa_and_ec_keys() {
    let dir = tempfile::tempdir().unwrap();
    let kinds: [(&str, &str, &[&str]); 2] = [
        ("rsa", "RSA", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        (
            "p256",
            "EC",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
    ];
    let keys: Vec<(String, &str, String, String)> = kinds
        .iter()
        .map(|(name, kty, args)| {
            let (private, _) = openssl_key(dir.path(), name, args);
            let public = dir.path().join(format!("{name}.pub.pem")).display().to_string();
            (format!("authlib-{name}"), *kty, private, public)
        })
        .collect();
    let clients: Vec<(&str, &str, String)> = keys
        .iter()
        .map(|(id, kty, _, public)| (id.as_str(), *kty, public.clone()))
        .collect();
    let server = start_authlib(&clients).await;
    let http = reqwest::Client::new();
    for (client_id, _, private, _) in &keys {
        let app = broker(&server, client_id, private).await;
        let mut tokens = Vec::new();
        // Two fetches (the second after the first token's served life): each assertion is new,
        // or Authlib would refuse the repeated `jti`.
        for _ in 0..2 {
            let response = app.get_token(ALICE_KEY, "triumph", Some("api:read")).await;
            assert_eq!(response.status(), 200, "{client_id}");
            let body: Value = response.json().await.unwrap();
            tokens.push(body["access_token"].as_str().unwrap().to_string());
            app.clock.advance(std::time::Duration::from_secs(370 * 24 * 3600));
        }
        assert_ne!(tokens[0], tokens[1]);
        for token in &tokens {
            let issued: Value = http
                .get(format!("{}/issued", server.base))
                .query(&[("token", token)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(issued["client_id"], client_id.as_str(), "{issued}");
            assert_eq!(issued["scope"], "api:read");
        }
    }
    // Another client's key: Authlib refuses the assertion, the caller gets 502.
    let app = broker(&server, "authlib-rsa", &keys[1].2).await;
    let response = app.get_token(ALICE_KEY, "triumph", Some("api:read")).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "upstream_error");
}
