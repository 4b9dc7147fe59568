//! `[server]`: listeners, proxies, CORS and CSRF, limits, the admin token.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use ipnet::IpNet;
use secrecy::ExposeSecret;
use url::Url;

use super::check::Check;
use super::{raw, Env};
use crate::http::config::ServerSettings;

/// `[server]`.
pub(super) fn validate(check: &mut Check, s: &raw::Server, env: &Env) -> ServerSettings {
    let mut trusted_proxies = Vec::new();
    for (i, text) in s.trusted_proxies.iter().enumerate() {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => check.problem(
                format!("server.trusted_proxies[{i}]"),
                format!("`{text}` is not a CIDR or IP address"),
            ),
        }
    }
    let mut cors_allowed_origins = Vec::new();
    for (i, origin) in s.cors_allowed_origins.iter().enumerate() {
        match validate_origin(origin) {
            Ok(origin) => cors_allowed_origins.push(origin),
            Err(message) => check.problem(format!("server.cors_allowed_origins[{i}]"), message),
        }
    }
    let csrf_header = validate_csrf_header(check, s.csrf_header.as_deref());
    let max_body_bytes = s.max_body_bytes.unwrap_or(16 * 1024);
    if max_body_bytes == 0 {
        check.problem("server.max_body_bytes", "must be greater than 0");
    }
    ServerSettings {
        listen: check.socket_addr("server.listen", s.listen.as_deref(), "127.0.0.1:8080"),
        admin_listen: check.socket_addr("server.admin_listen", s.admin_listen.as_deref(), "127.0.0.1:9090"),
        workers: s.workers.unwrap_or(0),
        trusted_proxies,
        cors_allowed_origins,
        csrf_header,
        max_body_bytes,
        max_header_bytes: s.max_header_bytes.unwrap_or(0),
        shutdown_grace: check.duration(
            "server.shutdown_grace",
            s.shutdown_grace.as_ref(),
            Duration::from_secs(30),
        ),
        rate_limit_per_second: s.rate_limit_per_second.unwrap_or(100),
        rate_limit_burst: s.rate_limit_burst.unwrap_or(1000),
        refresh_per_minute: s.refresh_per_minute.unwrap_or(6),
        auth_failures_per_minute: s.auth_failures_per_minute.unwrap_or(30),
        admin_token: s.admin_token.as_ref().map(|secret| {
            let token = check.secret("server.admin_token", secret, env);
            if !token.expose_secret().is_empty() && token.expose_secret().len() < 16 {
                check.problem(
                    "server.admin_token",
                    "must be at least 16 characters (openssl rand -base64 32)",
                );
            }
            token
        }),
    }
}

/// Headers a page can send cross-site without a CORS preflight (Fetch standard, CORS-safelisted
/// request headers), that browsers add to requests on their own, or that a page cannot set at all
/// (forbidden request headers): none proves that the request came from a page the broker's CORS
/// policy allowed.
const UNFIT_CSRF_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "content-language",
    "content-type",
    "range",
    "authorization",
    "cache-control",
    "device-memory",
    "downlink",
    "dpr",
    "ect",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "pragma",
    "priority",
    "purpose",
    "rtt",
    "save-data",
    "upgrade-insecure-requests",
    "user-agent",
    "viewport-width",
    "width",
    "accept-charset",
    "accept-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "connection",
    "content-length",
    "cookie",
    "cookie2",
    "date",
    "dnt",
    "expect",
    "host",
    "keep-alive",
    "origin",
    "referer",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
];

/// The header a cookie-authenticated request must carry. It works because a page can send a
/// custom header to another origin only after a preflight the CORS policy answers.
fn validate_csrf_header(check: &mut Check, value: Option<&str>) -> HeaderName {
    let text = value.unwrap_or("x-requested-with");
    let Ok(name) = HeaderName::try_from(text) else {
        check.problem("server.csrf_header", format!("`{text}` is not a valid header name"));
        return HeaderName::from_static("x-requested-with");
    };
    let lower = name.as_str();
    if UNFIT_CSRF_HEADERS.contains(&lower) || lower.starts_with("proxy-") || lower.starts_with("sec-") {
        check.problem(
            "server.csrf_header",
            format!(
                "`{text}` proves nothing: browsers send it cross-site without a CORS preflight, or pages cannot \
                 set it; use a custom header such as x-requested-with"
            ),
        );
    }
    name
}

/// An origin as browsers send it: scheme, host and port only (RFC 6454); `*` and `null` refused.
pub(super) fn validate_origin(origin: &str) -> Result<String, String> {
    if origin == "*" || origin.eq_ignore_ascii_case("null") {
        return Err(format!("`{origin}` is never allowed: list exact origins"));
    }
    let url = Url::parse(origin).map_err(|_| format!("`{origin}` is not an origin such as https://app.example.com"))?;
    let serialized = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "http" | "https") || serialized != origin.trim_end_matches('/') {
        return Err(format!(
            "`{origin}` is not an origin such as https://app.example.com (no path)"
        ));
    }
    Ok(serialized)
}
