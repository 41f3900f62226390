//! Per-request facts: the request id and the client's address.

use std::net::IpAddr;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use ipnet::IpNet;
use tracing::Instrument;

use super::AppState;
use crate::vend::Caller;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The trace id of a valid W3C `traceparent` (`version-traceid-parentid-flags`, lower-case
/// hex, ids not all zero); `None` for anything else, which is then ignored.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().splitn(5, '-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let valid = hex(version, 2)
        && version != "ff"
        // Version 00 has exactly four fields; later versions may append more.
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2);
    valid.then_some(trace)
}

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
    // The connection layer tells its parser's refusals from requests the service saw.
    if let Some(accepted) = req.conn_data::<super::connection::Accepted>() {
        accepted.count();
    }
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        trace_id = tracing::field::Empty,
        method = %req.method(),
        path = %req.path(),
        // Recorded only while traces are exported (see `crate::telemetry::otlp`).
        otel.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let traced = crate::telemetry::otlp::enabled();
    if traced {
        // The kind is fixed when the exported span starts, at its first entry.
        span.record("otel.kind", "server");
    }
    // A caller's W3C trace context: its trace id goes on every log line of the request,
    // and its span is the parent of the exported request span.
    if let Some(trace) = req
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id)
    {
        span.record("trace_id", trace);
        if traced {
            crate::telemetry::otlp::set_remote_parent(&span, req.headers());
        }
    } else if traced {
        // A new trace: its id goes on the log lines, so logs and trace still meet.
        if let Some(trace) = crate::telemetry::otlp::trace_id(&span) {
            span.record("trace_id", trace);
        }
    }
    async move {
        let started = std::time::Instant::now();
        let mut res = next.call(req).await?;
        if let Ok(value) = HeaderValue::from_str(&id) {
            res.headers_mut()
                .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
        }
        let (status, took) = (res.status().as_u16(), started.elapsed());
        if traced {
            let route = super::route_label(res.request());
            let span = tracing::Span::current();
            crate::telemetry::otlp::rename(&span, format!("{} {route}", res.request().method()));
            span.record("http.route", route);
            span.record("http.response.status_code", status);
            if status >= 500 {
                span.record("otel.status_code", "ERROR");
            }
        }
        if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
            state
                .vendor
                .metrics
                .http_request(super::route_label(res.request()), status, took);
        }
        tracing::info!(
            status,
            duration_ms = took.as_millis() as u64,
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

#[cfg(test)]
mod tests {
    use super::trace_id;

    #[test]
    fn reads_the_trace_id_of_a_valid_traceparent_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        assert_eq!(
            trace_id(&format!("01-{id}-00f067aa0ba902b7-00-extra")),
            Some(id)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }
}
