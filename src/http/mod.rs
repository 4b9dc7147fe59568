//! HTTP concerns shared by the routes: errors as responses, CORS, and the headers every token answer carries.

pub mod cors;
pub mod errors;
pub mod headers;
