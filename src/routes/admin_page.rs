//! `GET /admin/`: a small self-contained page (no external assets, no framework) showing what
//! `token-broker status` shows, refreshed every few seconds. The page itself holds no data, so it
//! is served without the admin token; its script asks the admin API with the token the operator
//! types into it (kept in the tab's sessionStorage, never in the URL) and puts what it gets into
//! the page as text only.
//! A strict Content-Security-Policy allows exactly its own inline style and script (by hash) and
//! requests to this listener.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::state::Broker;

const TEMPLATE: &str = include_str!("admin_page/page.html");
const STYLE: &str = include_str!("admin_page/page.css");
const SCRIPT: &str = include_str!("admin_page/page.js");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/", web::get().to(page)).route(
        "/admin",
        web::get().to(|| async {
            HttpResponse::PermanentRedirect()
                .insert_header((header::LOCATION, "/admin/"))
                .finish()
        }),
    );
}

/// The page and its Content-Security-Policy, made once.
fn assembled() -> &'static (String, String) {
    static PAGE: OnceLock<(String, String)> = OnceLock::new();
    PAGE.get_or_init(|| {
        let hash = |text: &str| {
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
            )
        };
        let csp = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        );
        let html = TEMPLATE.replace("{{STYLE}}", STYLE).replace("{{SCRIPT}}", SCRIPT);
        (html, csp)
    })
}

/// The page says whether the admin API wants a token, so that its script asks for one first.
async fn page(broker: web::Data<Broker>) -> HttpResponse {
    let (html, csp) = assembled();
    let required = broker.state().settings.server.admin_token.is_some();
    let html = html.replacen("{{AUTH}}", if required { "required" } else { "open" }, 1);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, csp.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(html)
}
