//! Per-request facts: the request id and the client's address.

use std::net::IpAddr;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest};
use ipnet::IpNet;
use tracing::Instrument;

use crate::vend::Caller;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of this request: the caller's when it is a sane token, else a fresh UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn is_valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The request id stored by [`request_id_middleware`].
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Assigns the request id, runs the request inside a span carrying it, and echoes it
/// in `X-Request-Id` on every response.
pub async fn request_id_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
    );
    async move {
        let started = std::time::Instant::now();
        let mut res = next.call(req).await?;
        if let Ok(value) = HeaderValue::from_str(&id) {
            res.headers_mut()
                .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
        }
        tracing::info!(
            status = res.status().as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "request finished"
        );
        Ok(res)
    }
    .instrument(span)
    .await
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the
/// client its `X-Forwarded-For` chain names (see [`crate::address::forwarded_client`]).
pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let values: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        // A value that is not text is a hop that cannot be read: the walk stops there.
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .collect();
    Some(crate::address::forwarded_client(peer, values, is_trusted))
}

/// Who is asking: the request id, the client's address, its `User-Agent` and `Origin`.
pub fn caller(req: &HttpRequest, trusted: &[IpNet]) -> Caller {
    Caller {
        request_id: request_id(req),
        client_ip: client_ip(req, trusted),
        user_agent: header_text(req, header::USER_AGENT),
        origin: origin(req),
    }
}

/// Every `Origin` header, joined: two of them never match an allowed origin.
fn origin(req: &HttpRequest) -> Option<String> {
    let values: Vec<&str> = req
        .headers()
        .get_all(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// A header's value, when it is text.
pub fn header_text(req: &HttpRequest, name: HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
