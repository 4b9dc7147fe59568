//! `GET /v1/access-token-provider.js`: the browser client, embedded in the binary. A page on
//! another origin imports it as a module, which is a CORS request: the CORS middleware answers it.
//! `GET /v1/openapi.yaml`: the HTTP API's description, embedded too.

use actix_web::{web, HttpResponse};

const MODULE: &str = include_str!("../../client/access-token-provider.js");
const DECLARATIONS: &str = include_str!("../../client/access-token-provider.d.ts");
const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

pub fn configure(cfg: &mut web::ServiceConfig) {
    const MODULE_PATH: &str = "/v1/access-token-provider.js";
    const DECLARATIONS_PATH: &str = "/v1/access-token-provider.d.ts";
    const OPENAPI_PATH: &str = "/v1/openapi.yaml";
    cfg.service(
        web::resource(MODULE_PATH)
            .name(MODULE_PATH)
            .route(web::get().to(module)),
    )
    .service(
        web::resource(DECLARATIONS_PATH)
            .name(DECLARATIONS_PATH)
            .route(web::get().to(declarations)),
    )
    .service(
        web::resource(OPENAPI_PATH)
            .name(OPENAPI_PATH)
            .route(web::get().to(openapi)),
    );
}

fn static_text(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "public, max-age=300"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

async fn module() -> HttpResponse {
    static_text("text/javascript; charset=utf-8", MODULE)
}

async fn declarations() -> HttpResponse {
    static_text("application/typescript; charset=utf-8", DECLARATIONS)
}

async fn openapi() -> HttpResponse {
    static_text("application/yaml; charset=utf-8", OPENAPI)
}
