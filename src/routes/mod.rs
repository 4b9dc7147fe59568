//! The HTTP routes of the public and admin listeners.

pub mod admin;
pub mod token;
