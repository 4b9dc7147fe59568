//! A WebSocket through the proxy: the handshake is forwarded to the API with the token added (the
//! browser cannot add it to a handshake itself, which is why a page would otherwise need the
//! token), then messages are relayed both ways until either side closes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as ApiMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use super::forward::{bearer, Caller};

/// Largest message (joined from fragments) relayed from the page.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The API's side of a relayed WebSocket.
pub type ApiSocket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the API did not complete the WebSocket handshake in time")]
    Timeout,
    #[error("the API refused or failed the WebSocket handshake")]
    Failed(#[source] tokio_tungstenite::tungstenite::Error),
}

/// Opens the API's side: `ws(s)://` for the proxy's `http(s)://` URL, with the token, the
/// broker's forwarding headers and the subprotocols the page asked for. Returns the socket and
/// the subprotocol the API chose.
pub async fn connect(
    mut url: Url,
    token: &str,
    caller: &Caller<'_>,
    protocols: Option<&str>,
    timeout: Duration,
) -> Result<(ApiSocket, Option<String>), HandshakeError> {
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    // Both schemes are special in the URL standard, so this cannot fail.
    let _ = url.set_scheme(scheme);
    let mut request = url.as_str().into_client_request().map_err(HandshakeError::Failed)?;
    let headers = request.headers_mut();
    if let Some(value) = bearer(token) {
        headers.insert(tokio_tungstenite::tungstenite::http::header::AUTHORIZATION, value);
    }
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    let address = caller.address();
    if let Some(address) = &address {
        set("x-forwarded-for", address);
    }
    set("x-forwarded-proto", caller.scheme);
    set("forwarded", &caller.forwarded(address.as_deref()));
    set("x-request-id", caller.request_id);
    if let Some(protocols) = protocols {
        set("sec-websocket-protocol", protocols);
    }
    let (socket, response) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Failed)?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((socket, chosen))
}

/// Relays messages between the page (`session`, `from_page`) and the API until either closes.
pub async fn relay(api: ApiSocket, mut session: actix_ws::Session, from_page: actix_ws::MessageStream) {
    // Fragmented messages from the page are joined (up to a bound) before they go on.
    let mut from_page = from_page
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE_BYTES);
    let (mut to_api, mut from_api) = api.split();
    loop {
        tokio::select! {
            message = from_page.next() => {
                let forwarded = match message {
                    Some(Ok(actix_ws::AggregatedMessage::Text(text))) => ApiMessage::Text(text.to_string().into()),
                    Some(Ok(actix_ws::AggregatedMessage::Binary(bytes))) => ApiMessage::Binary(bytes),
                    Some(Ok(actix_ws::AggregatedMessage::Ping(bytes))) => ApiMessage::Ping(bytes),
                    Some(Ok(actix_ws::AggregatedMessage::Pong(bytes))) => ApiMessage::Pong(bytes),
                    Some(Ok(actix_ws::AggregatedMessage::Close(reason))) => {
                        let frame = reason.map(|r| CloseFrame {
                            code: u16::from(r.code).into(),
                            reason: r.description.unwrap_or_default().into(),
                        });
                        let _ = to_api.send(ApiMessage::Close(frame)).await;
                        break;
                    }
                    Some(Err(_)) | None => {
                        let _ = to_api.send(ApiMessage::Close(None)).await;
                        break;
                    }
                };
                if to_api.send(forwarded).await.is_err() {
                    let _ = session.close(None).await;
                    break;
                }
            }
            message = from_api.next() => {
                let sent = match message {
                    Some(Ok(ApiMessage::Text(text))) => session.text(text.as_str().to_string()).await,
                    Some(Ok(ApiMessage::Binary(bytes))) => session.binary(bytes).await,
                    Some(Ok(ApiMessage::Ping(bytes))) => session.ping(&bytes).await,
                    Some(Ok(ApiMessage::Pong(bytes))) => session.pong(&bytes).await,
                    Some(Ok(ApiMessage::Close(frame))) => {
                        let reason = frame.map(|f| actix_ws::CloseReason {
                            code: u16::from(f.code).into(),
                            description: Some(f.reason.to_string()),
                        });
                        let _ = session.close(reason).await;
                        break;
                    }
                    Some(Ok(ApiMessage::Frame(_))) => continue,
                    Some(Err(_)) | None => {
                        let _ = session.close(None).await;
                        break;
                    }
                };
                if sent.is_err() {
                    let _ = to_api.send(ApiMessage::Close(None)).await;
                    break;
                }
            }
        }
    }
}
