//! The upstream token endpoint: the client-credentials request (RFC 6749 §4.4) and its errors.

mod client;
mod error;

pub use client::{FetchedToken, TokenClient};
pub use error::{OAuthErrorCode, UpstreamError};
