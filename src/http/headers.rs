//! Headers on every answer of the token routes, errors included: tokens must never be cached,
//! sniffed or leaked through a referrer.

use actix_web::middleware::DefaultHeaders;

pub fn no_store() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("Cache-Control", "no-store"))
        .add(("Pragma", "no-cache"))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Content-Type", "application/json"))
}
