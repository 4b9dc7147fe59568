//! Interop with a real OAuth2 server: panva's oidc-provider (npm), once per client auth method:
//! client_secret_basic, client_secret_post, client_secret_jwt and private_key_jwt (RSA, EC P-256,
//! EC P-384 and Ed25519 keys made by openssl, registered under their RFC 7638 thumbprints, so
//! the provider's own thumbprint agrees with the `kid` the broker computes).
//! The test command installs it (`npm ci` in tests/interop); this test fails, rather than skips,
//! when it is missing.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use token_broker::clock::SystemClock;
use token_broker::identity::hash_key;
use token_broker::settings::{Env, Settings};
use token_broker::startup::Application;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::pki::{self, Pair, TestCa};

/// ASCII only (oidc-provider refuses other secrets) but with every character Basic must encode.
const SECRET: &str = "s3cret:with%odd+chars=&more";
const API_KEY: &str = "interop-key";

struct Provider {
    _child: Child,
    base: String,
    /// With certificate clients: the port of the listener that asks for client certificates.
    tls_port: Option<String>,
}

async fn start_provider() -> Provider {
    start_provider_with_keys(None).await
}

/// With `keys`: a directory whose `<name>.pub.pem` files register `private_key_jwt` clients.
async fn start_provider_with_keys(keys: Option<&Path>) -> Provider {
    start_provider_with(keys, None).await
}

/// With `mtls`: a directory with `ca.pem`, `server.pem`, `server.key` and `self-signed.pem`, for
/// the certificate clients (see oidc-provider.mjs).
async fn start_provider_with(keys: Option<&Path>, mtls: Option<&Path>) -> Provider {
    start_provider_strict(keys, mtls, false).await
}

/// With `strict`, the TLS listener refuses at the handshake a certificate its CA did not sign.
async fn start_provider_strict(keys: Option<&Path>, mtls: Option<&Path>, strict: bool) -> Provider {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed: run `npm ci` in tests/interop (scripts/test does it)"
    );
    let mut child = Command::new("node")
        .arg("oidc-provider.mjs")
        .arg(SECRET)
        .current_dir(&dir)
        .envs(keys.map(|k| ("CLIENT_KEYS_DIR", k.as_os_str())))
        .envs(mtls.map(|m| ("MTLS_DIR", m.as_os_str())))
        .env("MTLS_STRICT", if strict { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut tls_port = None;
    let port = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("oidc-provider printed its port");
        if let Some(port) = line.strip_prefix("tls ") {
            tls_port = Some(port.trim().to_string());
        }
        if let Some(port) = line.strip_prefix("listening ") {
            break port.trim().to_string();
        }
    };
    Provider {
        _child: child,
        base: format!("http://127.0.0.1:{port}"),
        tls_port,
    }
}

async fn broker_for(provider: &Provider, client_id: &str, auth_method: &str, secret: &str) -> String {
    broker_with(
        provider,
        client_id,
        auth_method,
        "client_secret = { env = \"OP_SECRET\" }",
        secret,
    )
    .await
}

/// A broker whose upstream `op` is `client_id` at the provider's token URL, with `credential` (TOML
/// lines, the last of the upstream's table: tables of its own, such as `proxy`, may follow).
async fn broker_with(
    provider: &Provider,
    client_id: &str,
    auth_method: &str,
    credential: &str,
    secret: &str,
) -> String {
    let endpoint = format!("token_url = \"{}/token\"", provider.base);
    broker_at(&endpoint, client_id, auth_method, credential, secret).await
}

/// As [`broker_with`], the token endpoint given by `endpoint` (a `token_url` or `issuer` line).
async fn broker_at(endpoint: &str, client_id: &str, auth_method: &str, credential: &str, secret: &str) -> String {
    let toml = op_config(endpoint, client_id, auth_method, credential);
    let env: Env = [("OP_SECRET".to_string(), secret.to_string())].into();
    let mut settings = Settings::from_toml(&toml, &env).unwrap();
    token_broker::startup::discover(&mut settings, None)
        .await
        .expect("the issuer's metadata is usable");
    let app = Application::build_with_clock(settings, std::sync::Arc::new(SystemClock)).unwrap();
    let base = format!("http://{}", app.address());
    tokio::spawn(app.run_until_stopped());
    base
}

/// The configuration of a broker whose upstream `op` is `client_id` at `endpoint`.
fn op_config(endpoint: &str, client_id: &str, auth_method: &str, credential: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        workers = 1

        [upstreams.op]
        {endpoint}
        client_id = "{client_id}"
        auth_method = "{auth_method}"
        scopes = ["api:read", "api:write"]
        {credential}

        [[authenticators]]
        type = "api_key"
        keys = [{{ id = "k", hash = "{hash}", subject = "user" }}]

        [[grants]]
        subjects = ["user"]
        upstreams = {{ op = ["api:read", "api:write"] }}
        "#,
        hash = hash_key(API_KEY),
    )
}

/// Asks the provider itself whether it issued `token` (RFC 7662 introspection).
async fn introspect(provider_base: &str, token: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{provider_base}/token/introspection"))
        .form(&[
            ("token", token),
            ("client_id", "post-client"),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn exchange_and_verify(client_id: &str, auth_method: &str) {
    let provider = start_provider().await;
    let broker = broker_for(&provider, client_id, auth_method, SECRET).await;
    verify_exchanges(&provider, &broker, client_id).await;
}

/// Two scope sets through `broker`: each token is one the provider issued to `client_id`, with
/// the scopes asked; the second call for the same set comes from the cache.
async fn verify_exchanges(provider: &Provider, broker: &str, client_id: &str) {
    let http = reqwest::Client::new();
    let get = |scope: &'static str| {
        http.get(format!("{broker}/v1/token/op"))
            .query(&[("scope", scope)])
            .header("X-API-Key", API_KEY)
            .send()
    };

    let response = get("api:write api:read").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(body["scope"], "api:read api:write");
    // oidc-provider issues 600 s tokens; the broker serves them for 600 − min(60, 150) s.
    assert!((538..=540).contains(&body["expires_in"].as_u64().unwrap()), "{body}");

    let introspection = introspect(&provider.base, token).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], client_id);
    assert_eq!(introspection["scope"], "api:read api:write");

    let again: Value = get("api:read api:write").await.unwrap().json().await.unwrap();
    assert_eq!(again["access_token"], token, "the second call is served from the cache");

    let narrower: Value = get("api:read").await.unwrap().json().await.unwrap();
    assert_ne!(narrower["access_token"], token);
    assert_eq!(
        introspect(&provider.base, narrower["access_token"].as_str().unwrap()).await["scope"],
        "api:read"
    );
}

#[tokio::test]
async fn tokens_from_oidc_provider_with_client_secret_basic() {
    exchange_and_verify("basic-client", "client_secret_basic").await;
}

#[tokio::test]
async fn tokens_from_oidc_provider_with_client_secret_post() {
    exchange_and_verify("post-client", "client_secret_post").await;
}

#[tokio::test]
async fn tokens_from_oidc_provider_with_client_secret_jwt() {
    let provider = start_provider().await;
    let broker = broker_with(
        &provider,
        "jwt-client",
        "client_secret_jwt",
        "client_secret = { env = \"OP_SECRET\" }",
        SECRET,
    )
    .await;
    verify_exchanges(&provider, &broker, "jwt-client").await;
}

/// PKCS#8 keys made by `openssl genpkey`, their public halves where oidc-provider registers them.
fn client_keys(dir: &Path) -> Vec<(&'static str, String)> {
    let kinds: [(&str, &[&str]); 4] = [
        ("rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        ("p256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("p384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
        ("ed25519", &["-algorithm", "ED25519"]),
    ];
    kinds
        .into_iter()
        .map(|(name, args)| (name, crate::helpers::openssl_key(dir, name, args).0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_oidc_provider_with_private_key_jwt_for_rsa_ec_and_ed25519_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = client_keys(dir.path());
    let provider = start_provider_with_keys(Some(dir.path())).await;
    for (name, private) in &keys {
        let client_id = format!("pkjwt-{name}");
        let credential = format!("private_key = {{ file = \"{private}\" }}");
        let broker = broker_with(&provider, &client_id, "private_key_jwt", &credential, SECRET).await;
        verify_exchanges(&provider, &broker, &client_id).await;
    }
    // Another key than the one registered: refused by the provider, 502 to the caller.
    let credential = format!("private_key = {{ file = \"{}\" }}", keys[3].1);
    let broker = broker_with(&provider, "pkjwt-rsa", "private_key_jwt", &credential, SECRET).await;
    assert_refused_as_502(&broker).await;
}

/// oidc-provider remembers every assertion's `jti`: sent twice, the same assertion is refused.
/// The broker's own exchanges above succeed one after another, so each of them was signed anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_assertion_is_refused_by_oidc_provider() {
    let dir = tempfile::tempdir().unwrap();
    let keys = client_keys(dir.path());
    let provider = start_provider_with_keys(Some(dir.path())).await;
    let pem = secrecy::SecretString::from(std::fs::read_to_string(&keys[3].1).unwrap());
    let key = token_broker::upstream::assertion::PrivateKey::from_pem(&pem, None, None).unwrap();
    let token_url = format!("{}/token", provider.base);
    let assertion = key.sign("pkjwt-ed25519", &token_url).unwrap();
    let send = || {
        reqwest::Client::new()
            .post(&token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "api:read"),
                ("client_id", "pkjwt-ed25519"),
                (
                    "client_assertion_type",
                    token_broker::upstream::assertion::ASSERTION_TYPE,
                ),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(
        first.status(),
        200,
        "the first use is accepted: {}",
        first.text().await.unwrap()
    );
    let replayed = send().await.unwrap();
    assert_eq!(replayed.status(), 401);
    assert_eq!(replayed.json::<Value>().await.unwrap()["error"], "invalid_client");
}

/// Configured with the provider's issuer alone, the broker finds the token endpoint in its OpenID
/// Connect discovery document (oidc-provider serves no RFC 8414 one, so the fallback is what
/// works), for a client secret and for a private key whose assertion names the issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_oidc_provider_found_by_its_issuer_alone() {
    let dir = tempfile::tempdir().unwrap();
    let keys = client_keys(dir.path());
    let provider = start_provider_with_keys(Some(dir.path())).await;
    let issuer = format!("issuer = \"{}\"", provider.base);
    let credential = "client_secret = { env = \"OP_SECRET\" }";
    let broker = broker_at(&issuer, "post-client", "client_secret_post", credential, SECRET).await;
    verify_exchanges(&provider, &broker, "post-client").await;

    let credential = format!(
        "private_key = {{ file = \"{}\" }}\nassertion_audience = \"issuer\"",
        keys[0].1
    );
    let broker = broker_at(&issuer, "pkjwt-rsa", "private_key_jwt", &credential, SECRET).await;
    verify_exchanges(&provider, &broker, "pkjwt-rsa").await;
}

/// Certificates for the mTLS clients, in `dir`: the provider's CA and server certificate, a client
/// certificate it signed for `mtls-client`, a self-signed one for `self-signed-client`, and one
/// for `mtls-client`'s subject from a CA the provider does not trust.
fn mtls_material(dir: &Path) -> [Pair; 3] {
    let ca = TestCa::new("interop CA");
    ca.write_ca(dir, "ca.pem");
    ca.server(dir, "server");
    let client = ca.client(dir, "client", "token-broker-mtls");
    let self_signed = pki::self_signed(dir, "self-signed", "self-signed");
    let stranger = TestCa::new("another CA").client(dir, "stranger", "token-broker-mtls");
    [client, self_signed, stranger]
}

/// `client_certificate` and `private_key` lines for `pair`, with the provider's CA as `ca_file`.
fn certificate_lines(dir: &Path, pair: &Pair) -> String {
    format!(
        "client_certificate = {{ file = {:?} }}\nprivate_key = {{ file = {:?} }}\nca_file = {:?}",
        pair.cert,
        pair.key,
        dir.join("ca.pem")
    )
}

/// RFC 8705 against oidc-provider behind TLS that asks for client certificates: a certificate
/// from its CA (`tls_client_auth`, by subject DN) and a registered self-signed one
/// (`self_signed_tls_client_auth`), at the TLS token URL and through the issuer's metadata, whose
/// `mtls_endpoint_aliases` names that URL (the plain endpoint would not see a certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_oidc_provider_with_tls_client_auth_and_self_signed_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let [client, self_signed, _] = mtls_material(dir.path());
    let provider = start_provider_with(None, Some(dir.path())).await;
    let tls_url = format!(
        "token_url = \"https://127.0.0.1:{}/token\"",
        provider.tls_port.as_ref().unwrap()
    );
    let issuer = format!("issuer = \"{}\"", provider.base);
    let cases = [
        (&tls_url, "mtls-client", "tls_client_auth", &client),
        (&issuer, "mtls-client", "tls_client_auth", &client),
        (
            &tls_url,
            "self-signed-client",
            "self_signed_tls_client_auth",
            &self_signed,
        ),
        (
            &issuer,
            "self-signed-client",
            "self_signed_tls_client_auth",
            &self_signed,
        ),
    ];
    for (endpoint, client_id, method, pair) in cases {
        let credential = certificate_lines(dir.path(), pair);
        let broker = broker_at(endpoint, client_id, method, &credential, SECRET).await;
        verify_exchanges(&provider, &broker, client_id).await;
    }
}

/// Rotation with certificates when the server refuses a certificate in the TLS handshake itself
/// (a TLS alert, not an `invalid_client` answer): the next pair is tried and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_refused_at_the_handshake_is_followed_by_the_next_pair() {
    let dir = tempfile::tempdir().unwrap();
    let [client, _, stranger] = mtls_material(dir.path());
    let provider = start_provider_strict(None, Some(dir.path()), true).await;
    let tls_url = format!(
        "token_url = \"https://127.0.0.1:{}/token\"",
        provider.tls_port.as_ref().unwrap()
    );
    let credential = format!(
        "client_certificate = [{{ file = {:?} }}, {{ file = {:?} }}]\nprivate_key = [{{ file = {:?} }}, {{ file = {:?} }}]\nca_file = {:?}",
        stranger.cert,
        client.cert,
        stranger.key,
        client.key,
        dir.path().join("ca.pem")
    );
    let broker = broker_at(&tls_url, "mtls-client", "tls_client_auth", &credential, SECRET).await;
    verify_exchanges(&provider, &broker, "mtls-client").await;
}

/// A key or certificate the provider does not know: the caller gets 502 `upstream_error`, the
/// log says the credential was refused (by its place in the list), and neither the key nor the
/// certificate appears in any log line. The real binary, so its log lines can be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_certificate_is_refused_with_502_and_the_refusal_logged() {
    use crate::helpers::process::{write, BrokerProcess};
    let dir = tempfile::tempdir().unwrap();
    let keys = client_keys(dir.path());
    let [_, _, stranger] = mtls_material(dir.path());
    let provider = start_provider_with(Some(dir.path()), Some(dir.path())).await;
    let tls_url = format!(
        "token_url = \"https://127.0.0.1:{}/token\"",
        provider.tls_port.as_ref().unwrap()
    );
    let plain_url = format!("token_url = \"{}/token\"", provider.base);
    let cases = [
        (
            plain_url,
            "pkjwt-rsa",
            "private_key_jwt",
            format!("private_key = {{ file = {:?} }}", keys[3].1),
            std::fs::read_to_string(&keys[3].1).unwrap(),
        ),
        (
            tls_url,
            "mtls-client",
            "tls_client_auth",
            certificate_lines(dir.path(), &stranger),
            std::fs::read_to_string(&stranger.key).unwrap(),
        ),
    ];
    for (endpoint, client_id, method, credential, material) in cases {
        let toml = op_config(&endpoint, client_id, method, &credential);
        let config = write(dir.path(), "broker.toml", &toml);
        let mut broker = BrokerProcess::start(&config, &[]);
        assert_refused_as_502(&broker.base).await;
        let line = broker.wait_for_log("refused a credential", std::time::Duration::from_secs(5));
        assert!(
            line.contains("\"upstream\":\"op\"") && line.contains("\"credential\":0"),
            "{line}"
        );
        broker.stop();
        let body = material.lines().nth(1).unwrap();
        for line in broker.logs() {
            assert!(!line.contains(body), "key material in a log line: {line}");
        }
    }
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_oidc_provider_and_reported_as_502() {
    let provider = start_provider().await;
    let broker = broker_for(&provider, "basic-client", "client_secret_basic", "not-the-secret").await;
    assert_refused_as_502(&broker).await;
}

/// The provider refused the broker's credentials: the caller gets 502 `upstream_error` and not
/// the provider's own words.
async fn assert_refused_as_502(broker: &str) {
    let response = reqwest::Client::new()
        .get(format!("{broker}/v1/token/op"))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"], "upstream_error");
    assert!(
        !text.contains("invalid_client"),
        "the upstream's own words stay out: {text}"
    );
}

/// A resource server as a real API would be: it accepts a request only with a bearer token that
/// oidc-provider says is active (RFC 7662 introspection), and reports the token's scope and which
/// of the caller's own headers reached it.
fn start_resource_server(provider_base: String) -> String {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        let provider_base = provider_base.clone();
        App::new().default_service(web::to(move |req: HttpRequest| {
            let provider_base = provider_base.clone();
            async move {
                let bearer = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default()
                    .to_string();
                let introspection = introspect(&provider_base, &bearer).await;
                if introspection["active"] != true {
                    return HttpResponse::Unauthorized().finish();
                }
                let saw = |name: &str| req.headers().contains_key(name);
                HttpResponse::Ok().json(serde_json::json!({
                    "path": req.path(),
                    "scope": introspection["scope"],
                    "client_id": introspection["client_id"],
                    "saw_cookie": saw("cookie"),
                    "saw_api_key": saw("x-api-key"),
                    "saw_csrf_header": saw("x-requested-with"),
                    "authorization_was_the_callers": bearer == "caller-token",
                }))
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_reaches_a_resource_server_that_introspects_the_token_at_oidc_provider() {
    let provider = start_provider().await;
    let resource = start_resource_server(provider.base.clone());
    // The credential lines close the upstream's table, so the proxy table can follow them.
    let lines = format!(
        "client_secret = {{ env = \"OP_SECRET\" }}\nexpose_tokens = false\n\n[upstreams.op.proxy]\nurl = \"{resource}/api\"\npaths = [\"/things/**\"]\nscopes = [\"api:read\"]"
    );
    let broker = broker_with(&provider, "post-client", "client_secret_post", &lines, SECRET).await;

    let response = reqwest::Client::new()
        .get(format!("{broker}/v1/proxy/op/things/7"))
        .header("X-API-Key", API_KEY)
        .header("Authorization", "Bearer caller-token")
        .header("Cookie", "app_session=secret")
        .header("X-Requested-With", "csrf")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/api/things/7");
    assert_eq!(
        seen["scope"], "api:read",
        "the proxy's scopes, not the whole grant: {seen}"
    );
    assert_eq!(seen["client_id"], "post-client");
    for flag in [
        "saw_cookie",
        "saw_api_key",
        "saw_csrf_header",
        "authorization_was_the_callers",
    ] {
        assert_eq!(seen[flag], false, "{flag}: {seen}");
    }
    // The token itself stays with the broker: its token route refuses this upstream.
    let token = reqwest::Client::new()
        .get(format!("{broker}/v1/token/op"))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 403);
}
