//! CORS for the allowed origins: preflights and the headers on actual responses.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::audit::{AuditEvent, Outcome};

use super::context::{client_ip, request_id};
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

/// `OPTIONS /v1/tokens`. A refused preflight is audited: it is the only trace of a
/// page on a disallowed origin, since the browser then never sends the `POST`.
pub async fn preflight_tokens(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    preflight(&req, &state, "POST, OPTIONS", true).await
}

pub async fn preflight(
    req: &HttpRequest,
    state: &AppState,
    methods: &'static str,
    audit: bool,
) -> HttpResponse {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    match origin {
        Some(o) if state.origins.is_allowed(o) => HttpResponse::NoContent()
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
            .finish(),
        _ => {
            let id = request_id(req);
            if audit {
                let corti = &state.vendor.corti;
                let mut event =
                    AuditEvent::begin(&id, corti.tenant().as_str(), corti.environment().as_str());
                event.outcome = Outcome::Forbidden;
                event.status = 403;
                event.client_ip = client_ip(req, &state.trusted_proxies).map(|ip| ip.to_string());
                event.origin = origin.map(|o| o.chars().take(256).collect());
                event.user_agent = req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.chars().take(256).collect());
                event.detail = Some("CORS preflight from an origin that is not allowed".into());
                // A refusal needs no fail-closed handling: nothing leaves the service.
                let _ = state.auditor.record(&event).await;
            }
            Problem::origin_not_allowed("origin is not allowed").respond(&id)
        }
    }
}
