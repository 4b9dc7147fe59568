//! HTTP concerns shared by the routes: errors as responses, CORS, trusted proxies, request ids
//! and access logs, the per-identity rate limit, and the headers every token answer carries.

pub mod auth_failures;
pub mod config;
pub mod cors;
pub mod errors;
pub mod forwarded;
pub mod headers;
pub mod limits;
pub mod middleware;
pub mod observe;
pub mod rate_limit;
