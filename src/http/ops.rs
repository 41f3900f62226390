//! Operations endpoints: liveness, readiness, metrics and the API description.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::catalog::ProblemType;
use crate::metrics::Format;

use super::problem::Problem;
use super::rate_limit::admit_side;
use super::AppState;

/// The OpenAPI description kept in the repository root.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    admit_side(&req, &state).await?;
    let not_ready = |detail: &str| Err(Problem::new(ProblemType::NotReady, detail).at(&req));
    if state.draining.is_draining() {
        not_ready("the service is shutting down")
    } else if !session_keys_loaded(&state).await {
        not_ready("no session key has been loaded yet from SESSION_JWKS_URL")
    } else if state.auditor.ready().await {
        Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
    } else {
        not_ready("the audit store cannot be reached")
    }
}

/// Whether session JWTs can be checked at all: false while a JWKS has never given a
/// usable key (a wrong URL answering 404 would otherwise look ready and refuse every
/// vend). Asking fetches the set again (at most every few seconds), so readiness comes
/// back with the identity provider. Keys loaded once and kept through an outage stay
/// usable for their grace period, so they do not make the service unready.
async fn session_keys_loaded(state: &AppState) -> bool {
    match state.vendor.sessions.jwks() {
        None => true,
        Some(cache) => cache.ever_loaded() || cache.ensure_keys().await.is_ok(),
    }
}

/// Prometheus metrics: OpenMetrics text, or the Prometheus text format 0.0.4 when the
/// `Accept` header prefers it.
pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    admit_side(&req, &state).await?;
    let accept = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Vary", "Accept"))
        .body(state.vendor.metrics.render_as(format)))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml")
        .body(OPENAPI_YAML)
}
