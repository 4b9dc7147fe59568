//! CORS (Fetch standard §3.2): a strict allow-list of exact origins. An allowed origin gets itself
//! back with credentials allowed; any other origin, `null` included, gets no
//! `Access-Control-Allow-Origin` at all. Applied to every public route, error answers included,
//! so a page can read the status of a refusal.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use crate::startup::Broker;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";

pub struct CorsPolicy {
    origins: Vec<String>,
    allow_headers: HeaderValue,
}

impl CorsPolicy {
    pub fn new(origins: &[String], csrf_header: &HeaderName) -> Self {
        let allow_headers = format!("Authorization, X-API-Key, Content-Type, {csrf_header}");
        Self {
            origins: origins.to_vec(),
            allow_headers: HeaderValue::from_str(&allow_headers).expect("header names are valid header values"),
        }
    }

    fn allowed<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let origin = origin?;
        let text = origin.to_str().ok()?;
        self.origins.iter().any(|o| o == text).then_some(origin)
    }
}

pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let broker = req.app_data::<web::Data<Broker>>().expect("Broker is registered");
    let state = broker.state_for(&req);
    let policy = &state.cors;
    let allowed = policy.allowed(req.headers().get(header::ORIGIN)).cloned();

    let is_preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if is_preflight {
        let mut response = HttpResponse::NoContent();
        response.insert_header((header::VARY, "Origin"));
        if let Some(origin) = allowed {
            response
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
                .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, policy.allow_headers.clone()))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE));
        }
        return Ok(req.into_response(response.finish()).map_into_right_body());
    }

    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After, X-Request-Id"),
        );
    }
    Ok(response.map_into_left_body())
}
