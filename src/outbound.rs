//! What every request the broker itself makes shares: no redirects followed, and response bodies
//! read no further than a cap, so a hostile or broken server cannot fill memory.

use std::time::Duration;

use reqwest::header::CONTENT_LENGTH;
use url::Url;

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("token-broker/", env!("CARGO_PKG_VERSION")))
}

/// A client that follows no redirect; `timeout` bounds each whole request when given.
pub fn client(timeout: Option<Duration>) -> reqwest::Client {
    let mut builder = builder();
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder
        .build()
        .expect("the HTTP client's settings are static and valid")
}

/// A client as [`client`] (no timeout of its own) that trusts only `roots` when given (a private
/// CA) and presents `identity` (a client certificate, RFC 8705) when given. Fails when the
/// identity's key does not belong to its certificate or is of a kind TLS cannot use.
pub fn tls_client(
    roots: Option<&[reqwest::Certificate]>,
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = builder();
    if let Some(roots) = roots {
        builder = builder.tls_built_in_root_certs(false);
        for root in roots {
            builder = builder.add_root_certificate(root.clone());
        }
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build()
}

/// What can go wrong asking another server: the errors of every request the broker makes.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connecting, sending or reading failed.
    #[error("the request failed")]
    Transport(#[source] reqwest::Error),
    /// The server answered a status the caller cannot use.
    #[error("the answer's status was {0}")]
    Status(u16),
    /// Declared or streamed past the cap.
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
    /// Not the JSON document expected.
    #[error("the answer is not the JSON document expected")]
    Json(#[source] serde_json::Error),
}

/// The body of `response`, refused past `max` bytes (declared in Content-Length or streamed).
pub async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, FetchError> {
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(FetchError::TooLarge(max));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(max));
    while let Some(chunk) = response.chunk().await.map_err(FetchError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(FetchError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether `url` is on a loopback host, where plain HTTP never leaves the machine.
pub fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `https://`, or `http://` on a loopback host: where the broker sends secrets, session cookies, or
/// asks for the keys it trusts.
pub fn is_secure_url(url: &Url) -> bool {
    url.scheme() == "https" || (url.scheme() == "http" && is_loopback_url(url))
}
