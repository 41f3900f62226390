//! Every error the API sends, as one RFC 9457 `application/problem+json` shape.
//! Details are written for the caller; causes go to the log and the audit event.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use crate::catalog::ProblemType;
use crate::vend::VendError;

use super::context::request_id;

/// One problem response: a catalog entry and what this occurrence adds to it.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemType,
    pub detail: String,
    pub retry_after: Option<Duration>,
    /// `Allow`, for a 405.
    allow: Option<&'static str>,
    /// The request it answers (see [`Problem::at`]), for the body's `request_id`.
    request_id: Option<String>,
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
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            retry_after: None,
            allow: None,
            request_id: None,
        }
    }

    /// The problem as the answer to `req`, so a handler or extractor can return it as
    /// its error (`Result<_, Problem>`): its body then names the request's id.
    pub fn at(mut self, req: &HttpRequest) -> Self {
        self.request_id = Some(request_id(req));
        self
    }

    /// 404 for any path the service does not have.
    pub fn not_found() -> Self {
        Self::new(ProblemType::NotFound, "no such endpoint")
    }

    /// 405 for a known path with the wrong method; `allow` lists the right ones.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                ProblemType::MethodNotAllowed,
                format!("this endpoint accepts only {allow}"),
            )
        }
    }

    /// A session that is missing or invalid; `detail` says what is needed.
    pub fn unauthenticated(detail: &'static str) -> Self {
        Self::new(ProblemType::Unauthenticated, detail)
    }

    /// A cross-origin request from an origin that is not allowed.
    pub fn origin_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::OriginNotAllowed, detail)
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The response, with `Retry-After` and `WWW-Authenticate` where they belong.
    pub fn respond(&self, request_id: &str) -> HttpResponse {
        let status =
            StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Body {
            kind: format!("urn:token-vendor:problem:{}", self.kind.slug()),
            title: self.kind.title(),
            status: status.as_u16(),
            detail: &self.detail,
            request_id,
        };
        let mut builder = HttpResponse::build(status);
        builder
            .content_type("application/problem+json")
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("Pragma", "no-cache"));
        if let Some(after) = self.retry_after {
            builder.insert_header(("Retry-After", retry_after_secs(after).to_string()));
        }
        if let Some(allow) = self.allow {
            builder.insert_header((header::ALLOW, allow));
        }
        if status == StatusCode::UNAUTHORIZED {
            builder.insert_header((
                "WWW-Authenticate",
                "Bearer realm=\"token-vendor\", error=\"invalid_token\"",
            ));
        }
        builder.json(body)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.slug(), self.detail)
    }
}

/// A handler's or extractor's `Err(Problem)` becomes the same problem+json answer as
/// [`Problem::respond`], through the catalog.
impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        match &self.request_id {
            Some(id) => self.respond(id),
            // Built without `at`: a fresh id, as `request_id` gives a request without one.
            None => self.respond(&uuid::Uuid::new_v4().to_string()),
        }
    }
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whole seconds, rounded up, so a client that waits exactly this long is not early.
pub fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

impl From<&VendError> for Problem {
    fn from(e: &VendError) -> Self {
        let class = e.class();
        Problem::new(class.problem, class.detail).with_retry_after(class.retry_after)
    }
}

/// 404 for any path the service does not have.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    Problem::not_found().respond(&request_id(&req))
}

/// The 405 handler for a resource whose methods are `allow`.
pub fn method_not_allowed(
    allow: &'static str,
) -> impl Fn(HttpRequest) -> std::future::Ready<HttpResponse> + Clone + 'static {
    move |req: HttpRequest| {
        std::future::ready(Problem::method_not_allowed(allow).respond(&request_id(&req)))
    }
}
