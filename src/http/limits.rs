//! Request header size limit: the HTTP server already refuses more than 96 headers, or headers it
//! cannot parse within 128 KiB of buffered data; `server.max_header_bytes` (0 = off) lowers the
//! total further (431, RFC 6585 §5).

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use crate::startup::Broker;

pub async fn header_size(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let broker = req.app_data::<web::Data<Broker>>().expect("Broker is registered");
    let limit = broker.state_for(&req).settings.server.max_header_bytes;
    if limit == 0 {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let total: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if total > limit {
        let response = HttpResponse::build(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({
                "error": "invalid_request",
                "error_description": "the request headers are over the limit",
            }));
        return Ok(req.into_response(response).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}
