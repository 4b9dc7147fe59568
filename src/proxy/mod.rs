//! Proxy mode: the browser calls the API through the broker, which adds the token; the browser
//! never holds it. `path` decides what may be forwarded, `forward` does it.

pub mod config;
pub mod forward;
pub mod path;
pub mod websocket;
