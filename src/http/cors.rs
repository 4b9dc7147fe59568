//! CORS (Fetch standard §3.2): a strict allow-list of exact origins. An allowed origin gets itself
//! back with credentials allowed; any other origin, `null` included, gets no
//! `Access-Control-Allow-Origin` at all. Applied to every public route, error answers included,
//! so a page can read the status of a refusal.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;

/// How long a browser may cache a preflight answer.
pub(crate) const PREFLIGHT_MAX_AGE: &str = "600";

pub struct CorsPolicy {
    origins: Vec<String>,
    pub(crate) allow_headers: HeaderValue,
    /// `GET, POST` and the methods proxied to any API.
    pub(crate) allow_methods: HeaderValue,
}

impl CorsPolicy {
    pub fn new<'a>(
        origins: &[String],
        csrf_header: &HeaderName,
        proxied_methods: impl IntoIterator<Item = &'a Method>,
    ) -> Self {
        let allow_headers = format!("Authorization, X-API-Key, Content-Type, {csrf_header}");
        let mut methods = vec!["GET".to_string(), "POST".to_string()];
        for method in proxied_methods {
            if !methods.iter().any(|m| m == method.as_str()) {
                methods.push(method.as_str().to_string());
            }
        }
        Self {
            origins: origins.to_vec(),
            allow_headers: HeaderValue::from_str(&allow_headers).unwrap_or(HeaderValue::from_static("Content-Type")),
            allow_methods: HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static("GET, POST")),
        }
    }

    /// The request headers a preflight for `path` may allow: ours, and on proxied paths also what
    /// the page asks for (`Access-Control-Request-Headers`), as the API may take headers of its own.
    pub(crate) fn allow_headers_for(&self, path: &str, requested: Option<&HeaderValue>) -> HeaderValue {
        let requested = requested
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b)));
        match requested {
            Some(requested) if path.starts_with("/v1/proxy/") && !requested.trim().is_empty() => {
                let joined = format!("{}, {requested}", self.allow_headers.to_str().unwrap_or_default());
                HeaderValue::from_str(&joined).unwrap_or_else(|_| self.allow_headers.clone())
            }
            _ => self.allow_headers.clone(),
        }
    }

    /// `origin` when it is one of the allowed origins.
    pub(crate) fn allowed<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let origin = origin?;
        let text = origin.to_str().ok()?;
        self.origins.iter().any(|o| o == text).then_some(origin)
    }
}
