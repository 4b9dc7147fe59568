//! `[server]` as the HTTP layer uses it.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use ipnet::IpNet;
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// 0 means one worker per core.
    pub workers: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub cors_allowed_origins: Vec<String>,
    pub csrf_header: HeaderName,
    pub max_body_bytes: usize,
    /// Total size of the request headers; more is 431. 0 leaves only the HTTP server's own limits.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Token-route requests per second per identity; 0 turns the limit off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// `/refresh` requests per minute per caller (a burst of up to 3); 0 turns the limit off.
    pub refresh_per_minute: u32,
    /// When set, every admin route but `/healthz` and `/readyz` wants `Authorization: Bearer` it.
    pub admin_token: Option<SecretString>,
    /// Failed authentications per minute per client address (and as a burst); 0 turns it off.
    pub auth_failures_per_minute: u32,
}
