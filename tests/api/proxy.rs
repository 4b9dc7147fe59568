//! Proxy mode: the browser calls the API through the broker, which adds the token. What the API
//! receives, what the browser gets back, and what is never sent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::*;

/// The usual configuration with `triumph` proxied to `api` under `/v2`.
fn proxy_config(token_url: &str, api: &str, extra: &str) -> String {
    config(token_url, "client_secret_post").replacen(
        "timeout = \"2s\"",
        &format!(
            "timeout = \"2s\"\n{extra}\n[upstreams.triumph.proxy]\nurl = \"{api}/v2\"\nmethods = [\"GET\", \"POST\"]\npaths = [\"/reports/**\", \"/me\"]\ntimeout = \"1s\"\nmax_body_bytes = 1048576\n",
        ),
        1,
    )
}

struct Setup {
    app: TestApp,
    api: MockServer,
    tokens: MockServer,
}

async fn setup(extra: &str) -> Setup {
    let api = MockServer::start().await;
    let (app, tokens) = broker_for(&api.uri(), extra).await;
    Setup { app, api, tokens }
}

/// A broker proxying `triumph` to the API at `api`, and the token endpoint it asks.
async fn broker_for(api: &str, extra: &str) -> (TestApp, MockServer) {
    let tokens = token_endpoint(IssueTokens::new(3600)).await;
    let app = TestApp::spawn(&proxy_config(&format!("{}/token", tokens.uri()), api, extra)).await;
    (app, tokens)
}

fn proxy_url(app: &TestApp, rest: &str) -> String {
    format!("{}/v1/proxy/triumph{rest}", app.base)
}

/// `method` on the proxy route `rest`, as the caller with `key`.
async fn proxied(app: &TestApp, method: reqwest::Method, rest: &str, key: &str) -> reqwest::Response {
    app.http
        .request(method, proxy_url(app, rest))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
}

fn header_of<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_proxied_request_carries_the_token_and_none_of_the_callers_credentials() {
    let s = setup("").await;
    Mock::given(method("GET"))
        .and(path("/v2/reports/42"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "report": 42 }))
                .insert_header("Set-Cookie", "api_session=1")
                .insert_header("Access-Control-Allow-Origin", "*")
                .insert_header("X-Api-Version", "2"),
        )
        .expect(1)
        .mount(&s.api)
        .await;
    let response = s
        .app
        .http
        .get(proxy_url(&s.app, "/reports/42?format=json"))
        .header("X-API-Key", BOB_KEY)
        .header("Cookie", "app_session=secret-cookie")
        .header("X-Requested-With", "csrf")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("Forwarded", "for=6.6.6.6")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-HTTP-Method-Override", "DELETE")
        .header("X-Original-URL", "/admin")
        .header("X-Rewrite-URL", "/admin")
        .header("True-Client-IP", "6.6.6.6")
        .header("X_Forwarded_For", "6.6.6.6")
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "the API's cookie never reaches the browser"
    );
    assert!(response.headers().get("access-control-allow-origin").is_none());
    assert_eq!(response.headers()["x-api-version"], "2");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(response.json::<Value>().await.unwrap()["report"], 42);

    let received = &s.api.received_requests().await.unwrap()[0];
    assert_eq!(received.url.path(), "/v2/reports/42");
    assert_eq!(received.url.query(), Some("format=json"));
    assert_eq!(header_of(received, "authorization"), Some("Bearer token-1"));
    assert_eq!(header_of(received, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header_of(received, "x-forwarded-proto"), Some("http"));
    assert_eq!(header_of(received, "x-request-id"), Some(request_id.as_str()));
    assert_eq!(header_of(received, "accept"), Some("application/json"));
    // The API is addressed by its own name, not the broker's.
    let api_host = s.api.uri().trim_start_matches("http://").to_string();
    assert_eq!(header_of(received, "host"), Some(api_host.as_str()));
    // The broker states who called, in both forms; what the caller claimed is gone.
    assert_eq!(header_of(received, "forwarded"), Some("for=127.0.0.1;proto=http"));
    for name in [
        "cookie",
        "x-api-key",
        "x-requested-with",
        "x-forwarded-host",
        "x-http-method-override",
        "x-original-url",
        "x-rewrite-url",
        "true-client-ip",
        "x_forwarded_for",
    ] {
        assert!(received.headers.get(name).is_none(), "{name} was forwarded");
    }
    // The scopes asked for are the caller's grant.
    let form: Vec<(String, String)> =
        serde_urlencoded::from_bytes(&s.tokens.received_requests().await.unwrap()[0].body).unwrap();
    assert!(form.contains(&("scope".into(), "reports:read".into())), "{form:?}");
}

/// The request line exactly as written, for paths an HTTP client library would normalise.
fn raw_status(base: &str, target: &str) -> u16 {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {BOB_KEY}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn traversal_and_smuggling_forms_are_refused_and_nothing_reaches_the_api() {
    let s = setup("").await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&s.api)
        .await;
    let forms = [
        "/reports/../admin",
        "/reports/./../admin",
        "/reports/%2e%2e/admin",
        "/reports/%2E%2E/admin",
        "/reports/.%2e/admin",
        "/reports/%2e./admin",
        "/reports/%2e/admin",
        "/reports/%252e%252e/admin",
        "/reports/%252E%252E/admin",
        "/reports%2f..%2fadmin",
        "/reports%2F..%2Fadmin",
        "/reports/%5c..%5cadmin",
        "/reports/%5C..%5Cadmin",
        "/reports//admin",
        "//reports/x",
        "/reports/%00",
        "/reports/%0d%0aHost:%20evil.example",
        "/reports/%09",
        "/reports;/../admin",
        "/reports/x;jsessionid=1",
        "/reports/%3b/admin",
        "/reports/%25",
        "/reports/%zz",
        "/reports/%c0%ae%c0%ae/admin",
        "/reports/%e2%80%ae",
        "/reports/...",
        "/reports/..%20/admin",
        "/reports/%20../admin",
        "/reports/..%c2%a0/admin",
        "/reports/%ef%bc%8e%ef%bc%8e/admin",
        "/reports/%e2%80%a5/admin",
        "/reports/..%ef%bc%8fadmin",
        "/reports/..%e2%88%95admin",
        "/reports/..%ef%bc%bcadmin",
        "/admin",
        "/me/../admin",
    ];
    let base = s.app.base.clone();
    let statuses = tokio::task::spawn_blocking(move || {
        forms
            .iter()
            .map(|form| (*form, raw_status(&base, &format!("/v1/proxy/triumph{form}"))))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (form, status) in &statuses {
        assert_eq!(*status, 403, "{form}");
    }
    let long = format!("/reports/{}", "a".repeat(2100));
    let base = s.app.base.clone();
    let long_status = tokio::task::spawn_blocking(move || raw_status(&base, &format!("/v1/proxy/triumph{long}")))
        .await
        .unwrap();
    assert_eq!(long_status, 403);
    assert_eq!(
        upstream_calls(&s.api).await,
        0,
        "nothing was sent for {} forms",
        statuses.len()
    );
    // The same broker forwards a plain path.
    let base = s.app.base.clone();
    let plain = tokio::task::spawn_blocking(move || raw_status(&base, "/v1/proxy/triumph/reports/a%20b/"))
        .await
        .unwrap();
    assert_eq!(plain, 200);
    assert_eq!(upstream_calls(&s.api).await, 1);
}

#[tokio::test]
async fn a_method_the_upstream_does_not_allow_is_405_and_nothing_is_sent() {
    let s = setup("").await;
    let response = proxied(&s.app, reqwest::Method::DELETE, "/reports/42", BOB_KEY).await;
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    assert_eq!(upstream_calls(&s.api).await, 0);
    assert_eq!(upstream_calls(&s.tokens).await, 0);
}

#[tokio::test]
async fn callers_without_a_grant_or_credential_are_refused_before_anything_is_sent() {
    let s = setup("").await;
    let anonymous = s.app.http.get(proxy_url(&s.app, "/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let carol = proxied(&s.app, reqwest::Method::GET, "/me", CAROL_KEY).await;
    assert_eq!(carol.status(), 403);
    let unknown = s
        .app
        .http
        .get(format!("{}/v1/proxy/other/me", s.app.base))
        .header("X-API-Key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404, "an upstream without a proxy is not proxied");
    assert_eq!(upstream_calls(&s.api).await, 0);
}

#[tokio::test]
async fn with_expose_tokens_false_the_token_route_is_closed_and_the_proxy_still_works() {
    let s = setup("expose_tokens = false").await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&s.api)
        .await;
    let token = s.app.get_token(BOB_KEY, "triumph", None).await;
    assert_eq!(token.status(), 403);
    assert_eq!(token.json::<Value>().await.unwrap()["error"], "access_denied");
    let proxied = proxied(&s.app, reqwest::Method::GET, "/me", BOB_KEY).await;
    assert_eq!(proxied.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_rejects_the_token_gets_one_new_token_and_the_request_again() {
    let s = setup("").await;
    Mock::given(header("authorization", "Bearer token-1"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&s.api)
        .await;
    Mock::given(header("authorization", "Bearer token-2"))
        .respond_with(ResponseTemplate::new(200).set_body_string("fresh"))
        .mount(&s.api)
        .await;
    // Fetch token-1, and let it grow old enough to be replaced (a tenth of its hour).
    assert_eq!(s.app.get_token(BOB_KEY, "triumph", None).await.status(), 200);
    s.app.clock.advance(Duration::from_secs(361));
    let answers = join_all((0..50).map(|_| {
        s.app
            .http
            .post(proxy_url(&s.app, "/reports"))
            .header("X-API-Key", BOB_KEY)
            .body("{\"q\":1}")
            .send()
    }))
    .await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "fresh");
    }
    assert_eq!(upstream_calls(&s.tokens).await, 2, "one new token for fifty callers");
    // Every retried request carried its body again.
    let requests = s.api.received_requests().await.unwrap();
    assert!(requests
        .iter()
        .filter(|r| header_of(r, "authorization") == Some("Bearer token-2"))
        .all(|r| r.body == b"{\"q\":1}"));
}

/// After the API rejected the token and the request went again with a new one, the audit line
/// names the token the answer came with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_line_of_a_retried_request_names_the_token_it_was_answered_with() {
    use crate::helpers::process::{write, BrokerProcess};
    use sha2::{Digest, Sha256};

    let api = MockServer::start().await;
    Mock::given(header("authorization", "Bearer token-1"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&api)
        .await;
    Mock::given(header("authorization", "Bearer token-2"))
        .respond_with(ResponseTemplate::new(200).set_body_string("fresh"))
        .mount(&api)
        .await;
    let tokens = token_endpoint(IssueTokens::new(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = proxy_config(&format!("{}/token", tokens.uri()), &api.uri(), "");
    let mut broker = BrokerProcess::start(
        &write(dir.path(), "broker.toml", &toml),
        &[("TRIUMPH_SECRET", CLIENT_SECRET)],
    );
    let http = reqwest::Client::new();
    let proxied = || {
        http.post(format!("{}/v1/proxy/triumph/reports", broker.base))
            .header("X-API-Key", BOB_KEY)
            .body("{}")
            .send()
    };
    // token-1 is too young to be replaced at first (5 s at least), then old enough.
    assert_eq!(proxied().await.unwrap().status(), 401);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(proxied().await.unwrap().status(), 200);
    broker.stop();

    let fingerprint = |token: &str| hex::encode(Sha256::digest(token))[..12].to_string();
    let audited: Vec<(u64, String)> = broker
        .logs()
        .iter()
        .filter(|line| line.contains("\"request proxied\""))
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            (
                line["status"].as_u64().unwrap(),
                line["token_fingerprint"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(audited, [(401, fingerprint("token-1")), (200, fingerprint("token-2"))]);
}

#[tokio::test]
async fn a_slow_api_is_504_at_the_proxy_timeout() {
    let s = setup("").await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&s.api)
        .await;
    let started = Instant::now();
    let response = proxied(&s.app, reqwest::Method::GET, "/me", BOB_KEY).await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bodies_stream_both_ways_and_the_cap_applies() {
    let s = setup("").await;
    let download = vec![7u8; 3 * 1024 * 1024];
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(download.clone()))
        .mount(&s.api)
        .await;
    Mock::given(method("POST"))
        .respond_with(|request: &Request| ResponseTemplate::new(200).set_body_string(request.body.len().to_string()))
        .mount(&s.api)
        .await;
    let got = proxied(&s.app, reqwest::Method::GET, "/reports/big", BOB_KEY).await;
    assert_eq!(got.headers()["content-length"], download.len().to_string().as_str());
    assert_eq!(got.bytes().await.unwrap().len(), download.len());

    // 900 KiB, streamed (over the replayable size) and under the 1 MiB cap; as chunks without a length too.
    let upload = vec![1u8; 900 * 1024];
    let sent = s
        .app
        .http
        .post(proxy_url(&s.app, "/reports/upload"))
        .header("X-API-Key", BOB_KEY)
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(sent.text().await.unwrap(), upload.len().to_string());
    let chunks = futures_util::stream::iter((0..9).map(|_| Ok::<_, std::io::Error>(vec![2u8; 100 * 1024])));
    let chunked = s
        .app
        .http
        .post(proxy_url(&s.app, "/reports/upload"))
        .header("X-API-Key", BOB_KEY)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.text().await.unwrap(), (900 * 1024).to_string());

    let calls = upstream_calls(&s.api).await;
    let too_big = s
        .app
        .http
        .post(proxy_url(&s.app, "/reports/upload"))
        .header("X-API-Key", BOB_KEY)
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    assert_eq!(
        upstream_calls(&s.api).await,
        calls,
        "a declared oversized body is not sent"
    );
}

/// An API that answers `101 Switching Protocols` to a plain request, whatever it was asked.
async fn switching_api() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            });
        }
    });
    format!("http://{address}")
}

#[tokio::test]
async fn an_api_switching_protocols_on_a_plain_request_is_a_502_not_a_tunnel() {
    let tokens = token_endpoint(IssueTokens::new(3600)).await;
    let api = switching_api().await;
    let config = config(&format!("{}/token", tokens.uri()), "client_secret_post").replacen(
        "timeout = \"2s\"",
        &format!("timeout = \"2s\"\n[upstreams.triumph.proxy]\nurl = \"{api}\"\nmethods = [\"GET\"]\npaths = [\"/me\"]\ntimeout = \"1s\"\n"),
        1,
    );
    let app = TestApp::spawn(&config).await;
    let response = app
        .http
        .get(proxy_url(&app, "/me"))
        .header("X-API-Key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(response.headers().get("upgrade").is_none());
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "upstream_error");
}

#[tokio::test]
async fn a_small_body_sent_too_slowly_is_refused_at_the_proxy_timeout() {
    let s = setup("").await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&s.api)
        .await;
    let address = s.app.base.trim_start_matches("http://").to_string();
    let started = Instant::now();
    // Declares 100 bytes, sends 10 and stalls.
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            stream,
            "POST /v1/proxy/triumph/reports/x HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {BOB_KEY}\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(upstream_calls(&s.api).await, 0);
}

/// An API over https must prove its name with a certificate a public root signed: one that signs
/// itself (here for 127.0.0.1) fails the handshake, the caller gets 502 and the token is never
/// sent, because no request is.
#[tokio::test]
async fn an_https_api_whose_certificate_no_public_root_signed_never_gets_the_token() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (refused, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counts = (refused.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            match acceptor.accept(stream).await {
                Err(_) => counts.0.fetch_add(1, Ordering::SeqCst),
                Ok(mut tls) => {
                    let mut buf = [0u8; 1024];
                    if tls.read(&mut buf).await.unwrap_or(0) > 0 {
                        counts.1.fetch_add(1, Ordering::SeqCst);
                    }
                    0
                }
            };
        }
    });
    let (app, _tokens) = broker_for(&format!("https://127.0.0.1:{port}"), "").await;
    let response = proxied(&app, reqwest::Method::GET, "/reports/1", BOB_KEY).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_error");
    assert!(refused.load(Ordering::SeqCst) >= 1, "the broker never tried the API");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "a request reached an API nobody vouched for"
    );
}

/// The proxy's `timeout` bounds the whole exchange even when the browser reads slowly: the API's
/// data is then always waiting at the broker, and the broker must still let go of the API at the
/// deadline rather than relay for as long as the browser takes.
#[tokio::test]
async fn a_slow_reader_cannot_hold_the_api_past_the_proxy_timeout() {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An API that sends a large answer as fast as it is taken, and notes when the broker hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let hung_up: Arc<Mutex<Option<Duration>>> = Arc::default();
    let noted = hung_up.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let started = Instant::now();
        let size = 1u64 << 30;
        let mut result = stream
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").as_bytes())
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        while result.is_ok() {
            result = stream.write_all(&chunk).await;
        }
        *noted.lock().unwrap() = Some(started.elapsed());
    });
    let (app, _tokens) = broker_for(&api, "").await;
    let mut response = proxied(&app, reqwest::Method::GET, "/reports/big", BOB_KEY).await;
    assert_eq!(response.status(), 200);
    // The browser reads about 50 KB/s for as long as it gets anything.
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = response.chunk().await {
            tokio::time::sleep(Duration::from_micros(chunk.len() as u64 * 20)).await;
        }
    });
    let waited = Instant::now();
    while hung_up.lock().unwrap().is_none() && waited.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = *hung_up.lock().unwrap();
    // The proxy timeout is 1 s; the broker lets go of the API soon after it.
    assert!(
        after.is_some_and(|after| after < Duration::from_secs(3)),
        "the API was still sending after {:?} (hung up: {after:?})",
        waited.elapsed()
    );
}

/// A query string too long to forward is the caller's error, found before any token is fetched.
#[tokio::test]
async fn a_query_string_too_long_to_forward_is_400_before_any_token_is_fetched() {
    let s = setup("").await;
    let long = format!("/reports/1?q={}", "a".repeat(9000));
    let response = proxied(&s.app, reqwest::Method::GET, &long, BOB_KEY).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert!(s.tokens.received_requests().await.unwrap().is_empty());
    assert!(s.api.received_requests().await.unwrap().is_empty());
    // Just under the limit is forwarded.
    Mock::given(method("GET"))
        .and(path("/v2/reports/1"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&s.api)
        .await;
    let fits = format!("/reports/1?q={}", "a".repeat(8000));
    assert_eq!(
        proxied(&s.app, reqwest::Method::GET, &fits, BOB_KEY).await.status(),
        200
    );
}
