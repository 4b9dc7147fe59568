//! WebSocket through the proxy: the broker adds the token to the handshake (a page cannot), and a
//! cookie session's handshake needs an allowed Origin, since a browser cannot add the CSRF header
//! to it (cross-site WebSocket hijacking).

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// The headers of every handshake the echo API accepted.
type Handshakes = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A WebSocket API that echoes every message and remembers each handshake's headers.
#[allow(clippy::result_large_err)] // tungstenite's handshake callback returns its own error type
async fn echo_api() -> (String, Handshakes) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handshakes: Handshakes = Arc::default();
    let seen = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let record = |request: &Request, response: Response| {
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    seen.lock().unwrap().push(headers);
                    Ok(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    } else if message.is_close() {
                        break;
                    }
                }
            });
        }
    });
    (base, handshakes)
}

async fn setup() -> (TestApp, Handshakes, MockServer, MockServer) {
    let (api, handshakes) = echo_api().await;
    let tokens = token_endpoint(IssueTokens::new(3600)).await;
    let session = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "sub": "bob" })))
        .mount(&session)
        .await;
    let toml = format!(
        "{}\n[upstreams.triumph.proxy]\nurl = \"{api}/v2\"\npaths = [\"/ws/**\"]\n\n[[authenticators]]\ntype = \"forward\"\nurl = \"{}/session\"\nforward_cookies = [\"sid\"]\n\n[[grants]]\nauthenticators = [\"forward\"]\nsubjects = [\"bob\"]\nupstreams = {{ triumph = [\"reports:read\"] }}\n",
        config(&format!("{}/token", tokens.uri()), "client_secret_post")
            .replace("workers = 2", "workers = 2\ncors_allowed_origins = [\"https://app.example.com\"]"),
        session.uri(),
    );
    (TestApp::spawn(&toml).await, handshakes, tokens, session)
}

/// Opens a WebSocket to the proxy with `headers`; the HTTP status when the handshake is refused.
async fn connect(
    app: &TestApp,
    headers: &[(&'static str, &str)],
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, u16> {
    let url = format!("{}/v1/proxy/triumph/ws/echo", app.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("handshake failed: {other}"),
    }
}

fn header<'a>(handshake: &'a [(String, String)], name: &str) -> Option<&'a str> {
    handshake.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_relayed_with_the_token_in_the_handshake() {
    let (app, handshakes, _tokens, _session) = setup().await;
    let mut socket = connect(&app, &[("x-api-key", BOB_KEY)])
        .await
        .expect("the handshake succeeds");
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("hello"));
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::binary(vec![1u8, 2, 3]));
    socket.close(None).await.unwrap();

    let handshakes = handshakes.lock().unwrap().clone();
    assert_eq!(handshakes.len(), 1);
    assert_eq!(header(&handshakes[0], "authorization"), Some("Bearer token-1"));
    assert!(header(&handshakes[0], "x-api-key").is_none());
    assert_eq!(header(&handshakes[0], "x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_sessions_handshake_needs_an_allowed_origin() {
    let (app, handshakes, _tokens, _session) = setup().await;
    let cookie = ("cookie", "sid=bobs-session");
    assert_eq!(connect(&app, &[cookie]).await.err(), Some(403), "no Origin");
    assert_eq!(
        connect(&app, &[cookie, ("origin", "https://evil.example")]).await.err(),
        Some(403),
        "another site's page"
    );
    assert_eq!(handshakes.lock().unwrap().len(), 0, "nothing reached the API");

    let mut socket = connect(&app, &[cookie, ("origin", "https://app.example.com")])
        .await
        .expect("the app's own page may open it");
    socket.send(Message::text("from the app")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("from the app"));
    let handshakes = handshakes.lock().unwrap().clone();
    assert_eq!(handshakes.len(), 1);
    assert!(
        header(&handshakes[0], "cookie").is_none(),
        "the session cookie stays with the broker"
    );
    assert_eq!(header(&handshakes[0], "authorization"), Some("Bearer token-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_handshake_is_refused_before_the_api_sees_the_token() {
    let (app, handshakes, _tokens, _session) = setup().await;
    let address = app.base.trim_start_matches("http://").to_string();
    let answers = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        ["Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n"]
            .iter()
            .map(|extra| {
                let mut stream = std::net::TcpStream::connect(&address).unwrap();
                stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                write!(
                    stream,
                    "GET /v1/proxy/triumph/ws/echo HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {BOB_KEY}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}Connection: close\r\n\r\n"
                )
                .unwrap();
                let mut answer = vec![0u8; 2048];
                let n = stream.read(&mut answer).unwrap_or(0);
                String::from_utf8_lossy(&answer[..n]).to_string()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for answer in answers {
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(handshakes.lock().unwrap().len(), 0, "the API was never contacted");
}

/// The WebSocket client library logs whole handshake requests at trace level; the broker's log
/// filter keeps it at info whatever `RUST_LOG` says, so the token in the handshake stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_at_trace_level_logs_no_token() {
    use crate::helpers::process::{write, BrokerProcess};
    const CANARY: &str = "canary-websocket-token-7c1e";
    let (api, handshakes) = echo_api().await;
    let tokens = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": CANARY, "token_type": "Bearer", "expires_in": 600,
        })))
        .mount(&tokens)
        .await;
    let toml = config(&format!("{}/token", tokens.uri()), "client_secret_post").replacen(
        "timeout = \"2s\"",
        &format!("timeout = \"2s\"\n[upstreams.triumph.proxy]\nurl = \"{api}/v2\"\npaths = [\"/ws/**\"]\n"),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(
        &write(dir.path(), "broker.toml", &toml),
        &[("TRIUMPH_SECRET", CLIENT_SECRET)],
    );
    let url = format!("{}/v1/proxy/triumph/ws/echo", broker.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-api-key", HeaderValue::from_static(BOB_KEY));
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the handshake succeeds");
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("hello"));
    socket.close(None).await.unwrap();
    assert_eq!(
        header(&handshakes.lock().unwrap()[0], "authorization").map(str::to_string),
        Some(format!("Bearer {CANARY}"))
    );
    broker.wait_for_log("request proxied", std::time::Duration::from_secs(5));
    broker.stop();
    let logs = broker.logs();
    assert!(
        logs.iter().any(|l| l.contains("\"level\":\"TRACE\"")),
        "trace lines were captured"
    );
    for line in &logs {
        assert!(!line.contains(CANARY), "the token appears in a log line: {line}");
    }
}
