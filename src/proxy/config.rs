//! `[upstreams.<name>.proxy]` as the proxy uses it.

use std::time::Duration;

use actix_web::http::Method;
use url::Url;

use super::path::PathPattern;
use crate::scope::ScopeSet;

/// Where and what the broker forwards for one upstream (`/v1/proxy/<name>/…`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// The API's base; the path after `/v1/proxy/<name>` is appended to it.
    pub url: Url,
    /// `Host` for the API: the base's host, and its port when not the scheme's default.
    pub host: http::HeaderValue,
    /// Allowed methods; anything else is 405.
    pub methods: Vec<Method>,
    /// Allowed paths after normalisation; anything else is 403.
    pub paths: Vec<PathPattern>,
    /// The scopes the proxy asks for; `None`: the caller's whole grant.
    pub scopes: Option<ScopeSet>,
    /// The whole exchange with the API, first byte to last.
    pub timeout: Duration,
    /// Longest request body forwarded.
    pub max_body_bytes: u64,
}

impl ProxySettings {
    /// The `Host` header for requests to `url`.
    pub fn host_of(url: &Url) -> http::HeaderValue {
        let host = url.host_str().unwrap_or_default();
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        http::HeaderValue::from_str(&host).unwrap_or(http::HeaderValue::from_static("localhost"))
    }
}
