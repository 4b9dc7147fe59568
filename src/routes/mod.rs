//! The HTTP routes of the public and admin listeners.

pub mod admin;
pub mod admin_page;
pub mod client_js;
pub mod common;
pub mod proxy;
pub mod public_tokens;
pub mod token;
