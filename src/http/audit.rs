//! `GET /v1/audit/events`: ops read the audit log, newest first, page by page.
//! `GET /v1/audit/trail`: what the service knows of its own trail (the last position
//! its background check verified, the last signed checkpoint, any finding or chain
//! conflict), from memory. Both only for an [`AuditReader`].

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::audit::query::{AuditQuery, FilterParams, TimeSyntax};
use crate::catalog::{ProblemType, TRY_AGAIN_SOON};

use super::extract::AuditReader;
use super::problem::Problem;
use super::AppState;

/// Lists events matching the query's filters.
pub async fn list_events(
    req: HttpRequest,
    _reader: AuditReader,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let invalid = |detail: String| Problem::new(ProblemType::InvalidFilter, detail).at(&req);
    let params: FilterParams = serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        invalid(format!(
            "query parameters are subject, outcome, scope, token_fingerprint, client_ip, tenant, since, until, limit and cursor ({e})"
        ))
    })?;
    let query =
        AuditQuery::parse(&params, TimeSyntax::Rfc3339OrAgo).map_err(|e| invalid(e.to_string()))?;
    tracing::info!("audit events read");
    let page = state.auditor.query(&query).await.map_err(|e| {
        tracing::error!(error = %e, "audit query failed");
        Problem::new(
            ProblemType::AuditUnavailable,
            "the audit store cannot be read right now",
        )
        .with_retry_after(Some(TRY_AGAIN_SOON))
        .at(&req)
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(page))
}

/// The trail's state, read from memory: it neither reads nor writes the store.
pub async fn trail(
    req: HttpRequest,
    _reader: AuditReader,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let trail = state.auditor.trail().ok_or_else(|| {
        Problem::new(
            ProblemType::AuditUnavailable,
            "this audit store keeps no chain to watch",
        )
        .at(&req)
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(trail))
}
