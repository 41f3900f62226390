//! A bound on request headers: actix reads heads of up to 128 KiB, far more than any
//! browser or proxy sends to this service, and every byte is parsed and logged.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use super::context::{caller, request_id};
use super::problem::Problem;
use super::AppState;
use crate::catalog::ProblemType;

/// Largest total size of the request headers (names and values), in bytes.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Answers 431 to a request whose headers together exceed [`MAX_HEADER_BYTES`].
pub async fn head_limit_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > MAX_HEADER_BYTES {
        let detail = format!("request headers must not exceed {MAX_HEADER_BYTES} bytes");
        audit_if_vend(req.request(), &detail).await;
        let response =
            Problem::new(ProblemType::HeadersTooLarge, detail).respond(&request_id(req.request()));
        return Ok(req.into_response(response));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Every `POST /v1/tokens` and relay upgrade attempt is audited, those refused here too.
async fn audit_if_vend(req: &actix_web::HttpRequest, detail: &str) {
    let route =
        super::connection::route_of(req.method().as_str().as_bytes(), req.path().as_bytes());
    // An encoded path (`Route::Unknown`) may be routed to either once decoded.
    if !route.audited() {
        return;
    }
    let Some(state) = req.app_data::<actix_web::web::Data<AppState>>() else {
        return;
    };
    let caller = caller(req, &state.trusted_proxies);
    state
        .vendor
        .refuse_before_handler(&caller, ProblemType::HeadersTooLarge, detail)
        .await;
}
