//! `GET /v1/audit/events`: ops read the audit log, newest first, page by page.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::audit::query::{AuditQuery, FilterParams, TimeSyntax};
use crate::vend::Credentials;

use super::context::request_id;
use super::problem::Problem;
use super::tokens::credentials;
use super::AppState;

/// Lists events for a session holding the audit reader role.
pub async fn list_events(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let request_id = request_id(&req);
    let tokens = match credentials(&req, &state.cookie_name) {
        Credentials::Bearer(t) => vec![t],
        Credentials::Cookie(ts) => ts,
        Credentials::Malformed | Credentials::None => return unauthenticated(&request_id),
    };
    let session = match crate::vend::verify_first(&state.vendor.sessions, &tokens).await {
        Ok(s) => s,
        Err(crate::session::SessionError::KeysUnavailable) => {
            return Problem::new(
                503,
                "session-keys-unavailable",
                "Service unavailable",
                "session keys cannot be loaded right now; try again shortly",
            )
            .respond(&request_id)
        }
        Err(_) => return unauthenticated(&request_id),
    };
    if !session.roles.iter().any(|r| r == &state.audit_reader_role) {
        tracing::warn!(subject = %session.subject, "audit read refused: reader role missing");
        return Problem::new(
            403,
            "audit-reader-role-required",
            "Not allowed to read the audit log",
            "this session does not have the audit reader role",
        )
        .respond(&request_id);
    }
    let params: FilterParams = match serde_urlencoded::from_str(req.query_string()) {
        Ok(p) => p,
        Err(e) => {
            return Problem::new(
                400,
                "invalid-filter",
                "Invalid filter",
                format!(
                    "query parameters are subject, outcome, scope, token_fingerprint, client_ip, since, until, limit and cursor ({e})"
                ),
            )
            .respond(&request_id)
        }
    };
    let query = match AuditQuery::parse(&params, TimeSyntax::Rfc3339) {
        Ok(q) => q,
        Err(e) => {
            return Problem::new(400, "invalid-filter", "Invalid filter", e.to_string())
                .respond(&request_id)
        }
    };
    tracing::info!(subject = %session.subject, "audit events read");
    match state.auditor.query(&query).await {
        Ok(page) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(page),
        Err(e) => {
            tracing::error!(error = %e, "audit query failed");
            Problem::new(
                503,
                "audit-unavailable",
                "Audit store unavailable",
                "the audit store cannot be read right now",
            )
            .with_retry_after(Some(std::time::Duration::from_secs(5)))
            .respond(&request_id)
        }
    }
}

fn unauthenticated(request_id: &str) -> HttpResponse {
    Problem::new(
        401,
        "unauthenticated",
        "Not signed in",
        "a valid session with the audit reader role is required (Authorization: Bearer)",
    )
    .respond(request_id)
}

/// 405 for anything but GET.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let mut res = Problem::new(
        405,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint accepts only GET",
    )
    .respond(&request_id(&req));
    res.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    res
}
