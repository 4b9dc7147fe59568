//! Headers on every answer of the token routes, errors included: tokens must never be cached,
//! sniffed or leaked through a referrer.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::HttpResponse;

const NO_STORE: [(HeaderName, HeaderValue); 5] = [
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    (header::PRAGMA, HeaderValue::from_static("no-cache")),
    (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
];

/// The headers as a middleware, for a scope of routes.
pub fn no_store() -> DefaultHeaders {
    NO_STORE.into_iter().fold(DefaultHeaders::new(), DefaultHeaders::add)
}

/// The headers, for an answer that has none yet: a copy of a map made once (inserting them one
/// by one costs several times as much in actix-web's header map).
pub fn no_store_headers() -> HeaderMap {
    static HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| {
        let mut headers = HeaderMap::with_capacity(8);
        for (name, value) in NO_STORE {
            headers.insert(name, value);
        }
        headers
    });
    HEADERS.clone()
}

/// The headers on one answer, where they are not set already: for a handler that answers all of
/// its requests itself (on the token route, the middleware layer cost more than the headers).
pub fn with_no_store(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    for (name, value) in NO_STORE {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
    response
}
