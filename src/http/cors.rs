//! CORS for the allowed origins: preflights and the headers on actual responses.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use super::context::caller;
use super::problem::Problem;
use super::AppState;

const ALLOWED_HEADERS: &str = "authorization, content-type, x-request-id";
const EXPOSED_HEADERS: &str = "x-request-id, retry-after, ratelimit, ratelimit-policy";

/// Adds `Access-Control-Allow-*` to responses for allowed origins. Disallowed
/// origins get no CORS headers, so the browser withholds the response from the page.
pub async fn cors_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    // Only the token endpoint is for other origins; the audit API and the ops page
    // are same-origin, so an XSS on an app origin cannot read the audit log.
    let cross_origin_path = req.path() == "/v1/tokens";
    let allowed_origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|_| cross_origin_path)
        .and_then(|v| v.to_str().ok())
        .filter(|o| {
            req.app_data::<web::Data<AppState>>()
                .is_some_and(|s| s.origins.is_allowed(o))
        })
        .and_then(|o| HeaderValue::from_str(o).ok());
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
    Ok(res)
}

/// `OPTIONS /v1/tokens`. A refused preflight is audited by the vendor.
pub async fn preflight_tokens(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    super::rate_limit::admit_side(&req, &state).await?;
    let caller = caller(&req, &state.trusted_proxies);
    match caller.origin.as_deref() {
        Some(o) if state.origins.is_allowed(o) => Ok(HttpResponse::NoContent()
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
            .finish()),
        _ => {
            state.vendor.refuse_preflight(&caller).await;
            Err(Problem::origin_not_allowed("origin is not allowed").at(&req))
        }
    }
}
