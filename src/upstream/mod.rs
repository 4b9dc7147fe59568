//! The upstream token endpoint: the client-credentials request (RFC 6749 §4.4), its errors, and
//! the retries, circuit breaker and memory of refusals around it.

pub mod assertion;
pub mod certificate;
mod client;
pub mod config;
pub mod discovery;
pub mod endpoint;
mod error;
mod resilient;

pub use client::{FetchedToken, TokenClient, MAX_LIFETIME};
pub use error::{OAuthErrorCode, UpstreamError};
pub use resilient::{Purpose, Upstream};
