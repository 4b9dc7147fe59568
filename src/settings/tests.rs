//! The configuration as operators write it: defaults, overrides, and every problem named.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;
use crate::identity::config::{AuthenticatorSettings, GOOGLE_ISSUER, GOOGLE_ISSUERS};
use crate::tokens::config::redact_url_password;
use crate::upstream::config::ClientAuthMethod;
use server::validate_origin;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const MINIMAL: &str = r#"
    [upstreams.triumph]
    token_url = "https://auth.example.com/token"
    client_id = "id"
    client_secret = { env = "TRIUMPH_SECRET" }
    scopes = ["reports:read", "reports:write"]

    [[authenticators]]
    type = "api_key"
    keys = [{ id = "ci", hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000", subject = "svc-ci" }]

    [[grants]]
    authenticators = ["api_key"]
    subjects = ["*"]
    upstreams = { triumph = ["reports:read"] }
"#;

/// The client secrets of `upstream`, in order.
fn secrets(upstream: &crate::upstream::config::UpstreamSettings) -> Vec<&str> {
    upstream
        .credentials
        .iter()
        .map(|c| match c {
            crate::upstream::config::Credential::Secret(s) => s.expose_secret(),
            other => panic!("not a secret: {other:?}"),
        })
        .collect()
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let settings = Settings::from_toml(MINIMAL, &env(&[("TRIUMPH_SECRET", "s3cret")])).unwrap();
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(settings.cache.refresh_skew, Duration::from_secs(60));
    assert_eq!(settings.cache.default_ttl, Duration::from_secs(300));
    assert_eq!(settings.cache.max_entries, 10_000);
    assert_eq!(settings.server.csrf_header.as_str(), "x-requested-with");
    let up = &settings.upstreams["triumph"];
    assert_eq!(up.auth_method, ClientAuthMethod::ClientSecretPost);
    assert_eq!(up.timeout, Duration::from_secs(5));
    assert_eq!(secrets(up), ["s3cret"]);
}

#[test]
fn environment_overrides_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let settings = Settings::load(
        Some(&path),
        &env(&[
            ("TRIUMPH_SECRET", "s"),
            ("TOKEN_BROKER__SERVER__LISTEN", "0.0.0.0:8081"),
            ("TOKEN_BROKER__CACHE__REFRESH_SKEW", "30"),
            ("TOKEN_BROKER__CACHE__DEFAULT_TTL", "2 min"),
            (
                "TOKEN_BROKER__SERVER__CORS_ALLOWED_ORIGINS",
                "https://a.example.com, https://b.example.com",
            ),
            ("TOKEN_BROKER__UPSTREAMS__TRIUMPH__CLIENT_SECRET", "12345"),
        ]),
    )
    .unwrap();
    assert_eq!(settings.server.listen.to_string(), "0.0.0.0:8081");
    assert_eq!(settings.cache.refresh_skew, Duration::from_secs(30));
    assert_eq!(settings.cache.default_ttl, Duration::from_secs(120));
    assert_eq!(
        settings.server.cors_allowed_origins,
        ["https://a.example.com", "https://b.example.com"]
    );
    assert_eq!(secrets(&settings.upstreams["triumph"]), ["12345"]);
}

#[test]
fn secrets_come_from_files_without_their_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "from-file\n").unwrap();
    let text = MINIMAL.replace(
        r#"{ env = "TRIUMPH_SECRET" }"#,
        &format!("{{ file = {:?} }}", secret.display().to_string()),
    );
    let settings = Settings::from_toml(&text, &Env::new()).unwrap();
    assert_eq!(secrets(&settings.upstreams["triumph"]), ["from-file"]);
}

#[test]
fn every_problem_is_reported_at_once_naming_its_key() {
    let text = r#"
        [cache]
        refresh_skew = "3 months"

        [upstreams.triumph]
        token_url = "http://auth.example.com/token"
        client_id = "id"
        client_secret = { env = "NOT_SET" }
        scopes = ["reports:read"]

        [[authenticators]]
        type = "api_key"
        keys = [{ id = "ci", hash = "md5:abc", subject = "svc" }]

        [[grants]]
        subjects = ["*"]
        upstreams = { nope = ["x"], triumph = ["reports:write"] }
    "#;
    let problems = Settings::from_toml(text, &Env::new()).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cache.refresh_skew",
            "upstreams.triumph.token_url",
            "upstreams.triumph.client_secret",
            "authenticators[0].keys[0].hash",
            "grants[0].upstreams.nope",
            "grants[0].upstreams.triumph",
        ]
    );
}

#[test]
fn a_forward_decision_kept_longer_than_a_day_is_refused_naming_its_key() {
    let forward = |ttl: &str| {
        format!(
            "{MINIMAL}\n[[authenticators]]\ntype = \"forward\"\nurl = \"https://app.example.com/session\"\nforward_cookies = [\"s\"]\ncache_ttl = \"{ttl}\"\n"
        )
    };
    let env = env(&[("TRIUMPH_SECRET", "s")]);
    assert!(Settings::from_toml(&forward("24h"), &env).is_ok());
    for ttl in ["25h", "2000 years"] {
        let problems = Settings::from_toml(&forward(ttl), &env).unwrap_err();
        let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["authenticators[1].cache_ttl"], "{ttl}");
    }
}

#[test]
fn loopback_token_urls_may_use_http() {
    for url in [
        "http://127.0.0.1:9000/token",
        "http://localhost/token",
        "http://[::1]:8000/t",
    ] {
        let text = MINIMAL.replace("https://auth.example.com/token", url);
        assert!(
            Settings::from_toml(&text, &env(&[("TRIUMPH_SECRET", "s")])).is_ok(),
            "{url}"
        );
    }
}

#[test]
fn a_literal_secret_never_shows_in_debug_output_or_errors() {
    let text = MINIMAL
        .replace(r#"{ env = "TRIUMPH_SECRET" }"#, r#""canary-literal-secret""#)
        .replace("https://auth", "http://auth");
    let problems = Settings::from_toml(&text, &Env::new()).unwrap_err();
    assert!(!problems.to_string().contains("canary-literal-secret"));
    let ok = Settings::from_toml(
        &MINIMAL.replace(r#"{ env = "TRIUMPH_SECRET" }"#, r#""canary-literal-secret""#),
        &Env::new(),
    )
    .unwrap();
    assert!(!format!("{ok:?}").contains("canary-literal-secret"));
}

#[test]
fn jwt_authenticators_refuse_symmetric_algorithms_and_need_an_audience() {
    let text = format!(
        "{MINIMAL}\n[[authenticators]]\ntype = \"jwt\"\nissuer = \"http://idp.example.com\"\nalgorithms = [\"RS256\", \"HS256\", \"none\"]\n"
    );
    let problems = Settings::from_toml(&text, &env(&[("TRIUMPH_SECRET", "s")])).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "authenticators[1].issuer",
            "authenticators[1].audiences",
            "authenticators[1].algorithms[1]",
            "authenticators[1].algorithms[2]"
        ]
    );
}

#[test]
fn the_google_preset_accepts_both_issuer_spellings() {
    let text = format!("{MINIMAL}\n[[authenticators]]\ntype = \"jwt\"\npreset = \"google\"\naudiences = [\"x.apps.googleusercontent.com\"]\n");
    let settings = Settings::from_toml(&text, &env(&[("TRIUMPH_SECRET", "s")])).unwrap();
    let AuthenticatorSettings::Jwt(jwt) = &settings.authenticators[1].settings else {
        panic!("a jwt authenticator")
    };
    assert_eq!(jwt.issuer, GOOGLE_ISSUER);
    assert_eq!(jwt.accepted_issuers, GOOGLE_ISSUERS);
    assert_eq!(jwt.leeway, Duration::from_secs(60));
    assert_eq!(jwt.algorithms.len(), 3);
}

#[test]
fn a_redis_tier_needs_a_redis_url_and_a_32_byte_key() {
    let with =
        |url: &str, key: &str| format!("{MINIMAL}\n[cache.redis]\nurl = \"{url}\"\nencryption_key = \"{key}\"\n");
    let env = env(&[("TRIUMPH_SECRET", "s")]);
    let good = Settings::from_toml(
        &with(
            "redis://127.0.0.1:6379/0",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
        &env,
    )
    .unwrap();
    let redis = good.cache.redis.unwrap();
    assert_eq!(redis.timeout, Duration::from_millis(200));
    assert_eq!(redis.key_prefix, "token-broker:");
    assert!(!format!("{redis:?}").contains("MDEy"));
    let problems = Settings::from_toml(&with("http://127.0.0.1:6379", "c2hvcnQ="), &env).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["cache.redis.url", "cache.redis.encryption_key"]);
    let password = redact_url_password("redis://:hunter2@127.0.0.1:6379/0");
    assert!(!password.contains("hunter2"), "{password}");
}

#[test]
fn a_tls_redis_is_rediss_with_certificate_checks_that_cannot_be_turned_off() {
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]))).unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let with = |url: &str, ca_file: Option<&std::path::Path>| {
        let ca_line = ca_file.map_or(String::new(), |p| format!("ca_file = \"{}\"\n", p.display()));
        format!("{MINIMAL}\n[cache.redis]\nurl = \"{url}\"\nencryption_key = \"{KEY}\"\n{ca_line}")
    };
    let env = env(&[("TRIUMPH_SECRET", "s")]);
    let problem_keys = |toml: String| -> Vec<String> {
        let problems = Settings::from_toml(&toml, &env).unwrap_err();
        problems.0.iter().map(|p| format!("{}: {}", p.key, p.message)).collect()
    };

    let system_roots = Settings::from_toml(&with("rediss://redis.internal:6380/0", None), &env).unwrap();
    assert_eq!(system_roots.cache.redis.unwrap().ca_pem, None);
    let own_ca = Settings::from_toml(&with("rediss://redis.internal:6380/0", Some(&ca)), &env).unwrap();
    assert_eq!(own_ca.cache.redis.unwrap().ca_pem, Some(std::fs::read(&ca).unwrap()));

    let insecure = problem_keys(with("rediss://redis.internal:6380/0#insecure", None));
    assert!(insecure[0].starts_with("cache.redis.url: #insecure"), "{insecure:?}");
    let plain = problem_keys(with("redis://redis.internal:6379/0", Some(&ca)));
    assert_eq!(plain, ["cache.redis.ca_file: applies to a rediss:// (TLS) url only"]);
    let not_a_certificate = problem_keys(with("rediss://redis.internal:6380/0", Some(&not_pem)));
    assert!(
        not_a_certificate[0].contains("no PEM certificate"),
        "{not_a_certificate:?}"
    );
    let missing = problem_keys(with("rediss://r:6380/0", Some(&dir.path().join("absent.pem"))));
    assert!(
        missing[0].starts_with("cache.redis.ca_file: cannot read"),
        "{missing:?}"
    );
}

#[test]
fn wildcard_and_null_origins_are_refused() {
    assert!(validate_origin("*").is_err());
    assert!(validate_origin("null").is_err());
    assert!(validate_origin("https://app.example.com/path").is_err());
    assert_eq!(
        validate_origin("https://app.example.com").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        validate_origin("http://localhost:5173").unwrap(),
        "http://localhost:5173"
    );
}

#[test]
fn a_problem_in_an_environment_override_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let problems = Settings::load(
        Some(&path),
        &env(&[
            ("TRIUMPH_SECRET", "s"),
            ("TOKEN_BROKER__SERVER__LISTEN", "nonsense"),
            (
                "TOKEN_BROKER__UPSTREAMS__TRIUMPH__TOKEN_URL",
                "http://auth.example.com/token",
            ),
        ]),
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "TOKEN_BROKER__SERVER__LISTEN",
            "TOKEN_BROKER__UPSTREAMS__TRIUMPH__TOKEN_URL"
        ],
        "{problems}"
    );
}

#[test]
fn resource_indicators_are_absolute_uris_and_shape_the_fingerprint() {
    let with = |resource: &str| {
        Settings::from_toml(
            &MINIMAL.replace(
                "scopes = [\"reports:read\", \"reports:write\"]",
                &format!("scopes = [\"reports:read\", \"reports:write\"]\nresource = {resource}"),
            ),
            &env(&[("TRIUMPH_SECRET", "s")]),
        )
    };
    let a = with("[\"https://api.example.com/\"]").unwrap();
    let b = with("[\"https://other.example.com/\"]").unwrap();
    assert_ne!(
        a.upstreams["triumph"].token_fingerprint(),
        b.upstreams["triumph"].token_fingerprint()
    );
    let problems = with("[\"not a uri\", \"https://api.example.com/#frag\"]").unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["upstreams.triumph.resource[0]", "upstreams.triumph.resource[1]"]);
}
