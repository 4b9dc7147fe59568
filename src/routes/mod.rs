//! The HTTP routes of the public and admin listeners.

pub mod admin;
pub mod admin_page;
pub mod client_js;
pub mod common;
pub mod proxy;
pub mod public_tokens;
pub mod token;

use actix_web::web::ServiceConfig;

/// The public listener's routes, in the order actix-web's router tries them (one after the
/// other): first the fixed paths, compared as text, among them a token route and a proxy route
/// of their own for each upstream configured when the app is built; then the routes with a
/// segment, each a regular expression, which serve the upstreams a reload adds. A warm request
/// to a configured upstream runs no regular expression.
pub fn public(upstreams: Vec<String>) -> impl FnOnce(&mut ServiceConfig) {
    move |cfg| {
        token::fixed(cfg, &upstreams);
        proxy::fixed(cfg, &upstreams);
        client_js::configure(cfg);
        public_tokens::configure(cfg);
        token::general(cfg);
        proxy::general(cfg);
    }
}
