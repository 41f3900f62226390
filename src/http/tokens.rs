//! `POST /v1/tokens`: turn the HTTP request into an [`Attempt`] and the result into
//! the SDK-shaped body or a problem.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{FutureExt, StreamExt};

use crate::vend::{Ask, Attempt, BodyError, Credentials, MAX_BODY_BYTES};

use super::body_gate::{BodyGate, BODY_DEADLINE};
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
    let gate = req.app_data::<web::Data<BodyGate>>().cloned();
    let body = tokio::time::timeout(
        BODY_DEADLINE,
        read_body(
            &req,
            payload,
            gate.as_ref().map(|g| g.get_ref()),
            caller.client_ip,
        ),
    )
    .await
    .unwrap_or(Err(BodyError::TimedOut));
    let attempt = Attempt {
        caller,
        credentials: credentials(&req, &state.cookie_name),
        ask: Ask::Body {
            content_type: content_type(&req),
            body,
        },
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

/// The content type, unless the body is content-encoded: the service reads bodies as
/// they come, so a compressed one is an unsupported media type, not JSON.
fn content_type(req: &HttpRequest) -> Option<String> {
    let encoded = req.headers().get_all(header::CONTENT_ENCODING).any(|v| {
        v.to_str()
            .map(|e| !e.trim().eq_ignore_ascii_case("identity"))
            .unwrap_or(true)
    });
    if encoded {
        return None;
    }
    header_text(req, header::CONTENT_TYPE)
}

/// `Authorization: Bearer` wins over the cookie; a non-Bearer header, or more than
/// one `Authorization` header, is an error, not a reason to fall back to the cookie.
/// Every session cookie of the configured name is a candidate: a cookie set by a
/// sibling subdomain or for a narrower path is sent first and must not lock the user out.
pub(crate) fn credentials(req: &HttpRequest, cookie_name: &str) -> Credentials {
    let mut authorization = req.headers().get_all(header::AUTHORIZATION);
    if let Some(value) = authorization.next() {
        if authorization.next().is_some() {
            return Credentials::Malformed;
        }
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
    let headers = req
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok());
    let candidates = cookie_values(headers, cookie_name);
    if candidates.is_empty() {
        Credentials::None
    } else {
        Credentials::Cookie(candidates)
    }
}

/// Most session cookies of one name that are tried.
pub const MAX_SESSION_COOKIES: usize = 4;

/// The non-empty values of every cookie called `name` in these `Cookie` headers, in
/// the order sent, at most [`MAX_SESSION_COOKIES`].
pub fn cookie_values<'a>(headers: impl IntoIterator<Item = &'a str>, name: &str) -> Vec<String> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .take(MAX_SESSION_COOKIES)
        .collect()
}

/// Reads the body. What has already arrived with the headers is taken at once; only a
/// body still on its way holds one of its address's places in the [`BodyGate`] while it
/// is awaited (none left: refused unread, and actix then closes the connection).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    gate: Option<&BodyGate>,
    client_ip: Option<std::net::IpAddr>,
) -> Result<Vec<u8>, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(64));
    let mut permit = None;
    loop {
        let next = match payload.next().now_or_never() {
            Some(next) => next,
            None => {
                if permit.is_none() {
                    if let (Some(gate), Some(ip)) = (gate, client_ip) {
                        permit = Some(gate.enter(ip).ok_or(BodyError::TooManyUnread)?);
                    }
                }
                payload.next().await
            }
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    drop(permit);
    Ok(body)
}
