//! HTTP concerns shared by the routes: errors as responses, and the headers every token answer carries.

pub mod errors;
pub mod headers;
