//! CORS (Fetch standard §3.2): a strict allow-list of exact origins. An allowed origin gets itself
//! back with credentials allowed; any other origin, `null` included, gets no
//! `Access-Control-Allow-Origin` at all. Applied to every public route, error answers included,
//! so a page can read the status of a refusal.

use actix_web::http::header::{HeaderName, HeaderValue};

/// How long a browser may cache a preflight answer.
pub(crate) const PREFLIGHT_MAX_AGE: &str = "600";

pub struct CorsPolicy {
    origins: Vec<String>,
    pub(crate) allow_headers: HeaderValue,
}

impl CorsPolicy {
    pub fn new(origins: &[String], csrf_header: &HeaderName) -> Self {
        let allow_headers = format!("Authorization, X-API-Key, Content-Type, {csrf_header}");
        Self {
            origins: origins.to_vec(),
            allow_headers: HeaderValue::from_str(&allow_headers).expect("header names are valid header values"),
        }
    }

    /// `origin` when it is one of the allowed origins.
    pub(crate) fn allowed<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let origin = origin?;
        let text = origin.to_str().ok()?;
        self.origins.iter().any(|o| o == text).then_some(origin)
    }
}
