//! Every error the API sends, as one RFC 9457 `application/problem+json` shape.
//! Details are written for the caller; causes go to the log and the audit event.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;

use crate::corti::UpstreamError;
use crate::session::SessionError;
use crate::vend::VendError;

use super::context::request_id;

/// One problem response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    request_id: &'a str,
}

impl Problem {
    pub fn new(
        status: u16,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            slug,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The response, with `Retry-After` and `WWW-Authenticate` where they belong.
    pub fn respond(&self, request_id: &str) -> HttpResponse {
        let body = Body {
            kind: format!("urn:token-vendor:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            request_id,
        };
        let mut builder = HttpResponse::build(self.status);
        builder
            .content_type("application/problem+json")
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("Pragma", "no-cache"));
        if let Some(after) = self.retry_after {
            builder.insert_header(("Retry-After", retry_after_secs(after).to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            builder.insert_header((
                "WWW-Authenticate",
                "Bearer realm=\"token-vendor\", error=\"invalid_token\"",
            ));
        }
        builder.json(body)
    }
}

/// Whole seconds, rounded up, so a client that waits exactly this long is not early.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl From<&VendError> for Problem {
    fn from(e: &VendError) -> Self {
        // The status comes from the one mapping in `VendError::status`.
        let problem = |slug, title, detail: &str| Problem::new(e.status(), slug, title, detail);
        let p = match e {
            VendError::InvalidRequest(detail) => problem("invalid-request", "Invalid request", detail),
            VendError::PayloadTooLarge => problem("payload-too-large", "Request body too large", &e.to_string()),
            VendError::UnsupportedMediaType => problem("unsupported-media-type", "Unsupported media type", &e.to_string()),
            VendError::Unauthenticated(SessionError::KeysUnavailable) => problem(
                "session-keys-unavailable",
                "Service unavailable",
                "session keys cannot be loaded right now; try again shortly",
            ),
            VendError::Unauthenticated(_) => problem(
                "unauthenticated",
                "Not signed in",
                "a valid session is required (Authorization: Bearer or the session cookie)",
            ),
            VendError::Origin(o) => problem("origin-not-allowed", "Origin not allowed", &o.to_string()),
            VendError::ScopeNotAllowed(_) => problem("scope-not-allowed", "Scope not allowed", &e.to_string()),
            VendError::RateLimited { .. } => problem("rate-limited", "Too many requests", &e.to_string()),
            VendError::Upstream(UpstreamError::Timeout) => problem(
                "upstream-timeout",
                "Corti auth timed out",
                "the Corti auth server did not answer in time",
            ),
            VendError::Upstream(UpstreamError::Unreachable(_) | UpstreamError::KeysUnavailable | UpstreamError::RateLimited { .. } | UpstreamError::CircuitOpen { .. }) => {
                problem("upstream-unavailable", "Corti auth unavailable", "the Corti auth server cannot be reached right now")
            }
            VendError::Upstream(_) => problem(
                "upstream-error",
                "Corti auth error",
                "the Corti auth server refused the request or answered in a way that cannot be used",
            ),
            VendError::AuditUnavailable => problem(
                "audit-unavailable",
                "Audit store unavailable",
                "no token is issued while the audit store cannot record it",
            ),
        };
        p.with_retry_after(e.retry_after())
    }
}

/// 404 for any path the service does not have.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    Problem::new(404, "not-found", "Not found", "no such endpoint").respond(&request_id(&req))
}

/// 405 for a known path with the wrong method.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let mut res = Problem::new(
        405,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not accept that method",
    )
    .respond(&request_id(&req));
    res.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static("POST, OPTIONS"),
    );
    res
}
