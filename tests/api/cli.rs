//! The command line as an operator uses it: check, hash-key, serve with a bad file, demo.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_token-broker");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

const THREE_MISTAKES: &str = r#"
[cache]
default_ttl = "3 months"

[upstreams.triumph]
token_url = "http://auth.example.com/token"
client_id = "id"
client_secret = { env = "TB_TEST_UNSET_SECRET" }

[[authenticators]]
type = "api_key"
keys = [{ id = "ci", hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", subject = "svc" }]
"#;

#[test]
fn check_reports_each_mistake_on_its_own_line_naming_the_key() {
    let file = write_config(THREE_MISTAKES);
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(file.path())
        .env_remove("TB_TEST_UNSET_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].starts_with("cache.default_ttl: "), "{stderr}");
    assert!(lines[1].starts_with("upstreams.triumph.token_url: "), "{stderr}");
    assert!(lines[2].starts_with("upstreams.triumph.client_secret: "), "{stderr}");
}

#[test]
fn check_accepts_a_valid_file_and_never_prints_a_secret() {
    let text = THREE_MISTAKES
        .replace("3 months", "5m")
        .replace("http://auth", "https://auth")
        .replace(r#"{ env = "TB_TEST_UNSET_SECRET" }"#, r#"{ env = "TB_TEST_SECRET" }"#);
    let file = write_config(&text);
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(file.path())
        .env("TB_TEST_SECRET", "canary-cli-secret")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{all}");
    assert!(all.contains("configuration valid"), "{all}");
    assert!(!all.contains("canary-cli-secret"));
}

#[test]
fn serve_refuses_to_start_half_configured() {
    let file = write_config(THREE_MISTAKES);
    let output = Command::new(BIN).arg("--config").arg(file.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("upstreams.triumph.token_url"), "{stderr}");
    assert!(stderr.contains("not starting"), "{stderr}");
}

#[test]
fn environment_overrides_are_validated_with_the_file() {
    let file = write_config(
        &THREE_MISTAKES
            .replace("3 months", "5m")
            .replace("http://auth", "https://auth"),
    );
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(file.path())
        .env("TB_TEST_UNSET_SECRET", "s")
        .env("TOKEN_BROKER__SERVER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    // The problem names the variable the value came from (the structure issue asks for it).
    assert!(stderr.starts_with("TOKEN_BROKER__SERVER__LISTEN: "), "{stderr}");
}

#[test]
fn hash_key_prints_the_sha256_form() {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
}

#[test]
fn demo_serves_the_curl_line_it_prints() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let curl = loop {
        let line = lines.next().expect("demo prints a curl line").unwrap();
        if line.trim_start().starts_with("curl") {
            break line;
        }
    };
    let url = curl.split_whitespace().last().unwrap().to_string();
    let key = curl
        .split('\'')
        .nth(1)
        .unwrap()
        .trim_start_matches("X-API-Key: ")
        .to_string();
    // A plain HTTP/1.0 GET, as the printed curl line sends it.
    let fetch = || {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nX-API-Key: {key}\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str::<serde_json::Value>(body).unwrap()
    };
    let first = fetch();
    std::thread::sleep(Duration::from_millis(50));
    let second = fetch();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first["access_token"].as_str().unwrap().starts_with("demo-"), "{first}");
    assert_eq!(first["access_token"], second["access_token"], "the demo caches");
    assert_eq!(first["token_type"], "Bearer");
}

#[test]
fn the_shipped_example_configuration_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let auth0 = dir.path().join("auth0");
    std::fs::write(&auth0, "auth0-secret\n").unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml")).unwrap();
    let signing = dir.path().join("signing.pem");
    std::fs::write(&signing, token_broker::public_tokens::SigningKey::generate_pem()).unwrap();
    let file = write_config(
        &example
            .replace("/run/secrets/auth0", auth0.to_str().unwrap())
            .replace("/run/secrets/broker-ed25519.pem", signing.to_str().unwrap()),
    );
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(file.path())
        .env("TRIUMPH_CLIENT_SECRET", "x")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `check` names each upstream's token endpoint, method and credential fingerprint (a hash prefix,
/// never the secret), so an operator sees what a rotation changed.
#[test]
fn check_shows_each_upstreams_endpoint_method_and_credential_fingerprint() {
    let text = r#"
        [upstreams.triumph]
        token_url = "https://auth.example.com/token"
        client_id = "id"
        client_secret = { env = "TB_TEST_SECRET" }
        auth_method = "client_secret_basic"

        [[authenticators]]
        type = "api_key"
        keys = [{ id = "k", hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000", subject = "s" }]
    "#;
    let file = write_config(text);
    let line_with = |secret: &str| {
        let output = Command::new(BIN)
            .args(["check", "--config"])
            .arg(file.path())
            .env("TB_TEST_SECRET", secret)
            .output()
            .unwrap();
        assert!(output.status.success());
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(!stdout.contains(secret), "{stdout}");
        stdout
            .lines()
            .find(|l| l.starts_with("upstream triumph: "))
            .unwrap()
            .to_string()
    };
    let before = line_with("first-secret-value");
    assert!(
        before.starts_with(
            "upstream triumph: token endpoint https://auth.example.com/token, client_secret_basic, credentials "
        ),
        "{before}"
    );
    let after = line_with("rotated-secret-value");
    assert_ne!(before, after, "a rotated secret shows as another fingerprint");
}
