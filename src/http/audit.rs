//! `GET /v1/audit/events`: ops read the audit log, newest first, page by page.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::audit::query::{AuditQuery, FilterParams, TimeSyntax};
use crate::catalog::{ProblemType, TRY_AGAIN_SOON};
use crate::vend::{Credentials, SESSION_KEYS_UNAVAILABLE};

use super::context::request_id;
use super::problem::Problem;
use super::rate_limit::admit_side;
use super::tokens::credentials;
use super::AppState;

/// Lists events for a session holding the audit reader role.
pub async fn list_events(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(refused) = admit_side(&req, &state).await {
        return refused;
    }
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
                ProblemType::SessionKeysUnavailable,
                SESSION_KEYS_UNAVAILABLE,
            )
            .respond(&request_id)
        }
        Err(_) => return unauthenticated(&request_id),
    };
    if !session.roles.iter().any(|r| r == &state.audit_reader_role) {
        tracing::warn!(subject = %session.subject, "audit read refused: reader role missing");
        return Problem::new(
            ProblemType::AuditReaderRoleRequired,
            "this session does not have the audit reader role",
        )
        .respond(&request_id);
    }
    let params: FilterParams = match serde_urlencoded::from_str(req.query_string()) {
        Ok(p) => p,
        Err(e) => {
            return Problem::new(
                ProblemType::InvalidFilter,
                format!(
                    "query parameters are subject, outcome, scope, token_fingerprint, client_ip, tenant, since, until, limit and cursor ({e})"
                ),
            )
            .respond(&request_id)
        }
    };
    let query = match AuditQuery::parse(&params, TimeSyntax::Rfc3339OrAgo) {
        Ok(q) => q,
        Err(e) => {
            return Problem::new(ProblemType::InvalidFilter, e.to_string()).respond(&request_id)
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
                ProblemType::AuditUnavailable,
                "the audit store cannot be read right now",
            )
            .with_retry_after(Some(TRY_AGAIN_SOON))
            .respond(&request_id)
        }
    }
}

fn unauthenticated(request_id: &str) -> HttpResponse {
    Problem::unauthenticated(
        "a valid session with the audit reader role is required (Authorization: Bearer)",
    )
    .respond(request_id)
}
