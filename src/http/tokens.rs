//! `POST /v1/tokens`: turn the HTTP request into an [`Attempt`] and the result into
//! the SDK-shaped body or a problem.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::vend::{Attempt, BodyError, Credentials, MAX_BODY_BYTES};

use super::context::{caller, header_text};
use super::problem::Problem;
use super::rate_limit::add_headers;
use super::AppState;

pub async fn post_tokens(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let caller = caller(&req, &state.trusted_proxies);
    let request_id = caller.request_id.clone();
    let attempt = Attempt {
        caller,
        credentials: credentials(&req, &state.cookie_name),
        content_type: header_text(&req, header::CONTENT_TYPE),
        body: read_body(&req, payload).await,
    };
    let handled = state.vendor.handle(attempt).await;
    let mut response = match handled.result {
        Ok(body) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"))
            .json(body),
        Err(e) => Problem::from(&e).respond(&request_id),
    };
    add_headers(&handled.rate_limits, &mut response);
    response
}

/// `Authorization: Bearer` wins over the cookie; a non-Bearer header is an error,
/// not a reason to fall back to the cookie.
pub(super) fn credentials(req: &HttpRequest, cookie_name: &str) -> Credentials {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let Ok(text) = value.to_str() else {
            return Credentials::Malformed;
        };
        return match text.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                Credentials::Bearer(token.trim().to_owned())
            }
            _ => Credentials::Malformed,
        };
    }
    match req.cookie(cookie_name) {
        Some(c) if !c.value().is_empty() => Credentials::Cookie(c.value().to_owned()),
        _ => Credentials::None,
    }
}

async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(64));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
