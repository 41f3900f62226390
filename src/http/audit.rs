//! `GET /v1/audit/events`: ops read the audit log, newest first, page by page.
//! `GET /v1/audit/trail`: what the service knows of its own trail (the last position
//! its background check verified, the last signed checkpoint, any finding or chain
//! conflict), from memory.

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
    let request_id = match reader(&req, &state).await {
        Ok(id) => id,
        Err(refused) => return refused,
    };
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
    tracing::info!("audit events read");
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

/// The trail's state for a session holding the audit reader role. Read from memory:
/// it neither reads nor writes the store.
pub async fn trail(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let request_id = match reader(&req, &state).await {
        Ok(id) => id,
        Err(refused) => return refused,
    };
    match state.auditor.trail() {
        Some(trail) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(trail),
        None => Problem::new(
            ProblemType::AuditUnavailable,
            "this audit store keeps no chain to watch",
        )
        .respond(&request_id),
    }
}

/// Admits a session holding the audit reader role; returns the request id, or the
/// refusal to answer.
async fn reader(req: &HttpRequest, state: &AppState) -> Result<String, HttpResponse> {
    admit_side(req, state).await?;
    let request_id = request_id(req);
    let tokens = match credentials(req, &state.cookie_name) {
        Credentials::Bearer(t) => vec![t],
        Credentials::Cookie(ts) => ts,
        Credentials::Malformed | Credentials::None => return Err(unauthenticated(&request_id)),
    };
    let session = match crate::vend::verify_first(&state.vendor.sessions, &tokens).await {
        Ok(s) => s,
        Err(crate::session::SessionError::KeysUnavailable) => {
            return Err(Problem::new(
                ProblemType::SessionKeysUnavailable,
                SESSION_KEYS_UNAVAILABLE,
            )
            .respond(&request_id))
        }
        Err(_) => return Err(unauthenticated(&request_id)),
    };
    if !session.roles.iter().any(|r| r == &state.audit_reader_role) {
        tracing::warn!(subject = %session.subject.escaped(), path = req.path(), "audit read refused: reader role missing");
        return Err(Problem::new(
            ProblemType::AuditReaderRoleRequired,
            "this session does not have the audit reader role",
        )
        .respond(&request_id));
    }
    tracing::info!(subject = %session.subject.escaped(), path = req.path(), "audit reader admitted");
    Ok(request_id)
}

fn unauthenticated(request_id: &str) -> HttpResponse {
    Problem::unauthenticated(
        "a valid session with the audit reader role is required (Authorization: Bearer)",
    )
    .respond(request_id)
}
