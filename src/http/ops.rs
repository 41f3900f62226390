//! Operations endpoints: liveness, readiness, metrics and the API description.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::catalog::ProblemType;

use super::context::request_id;
use super::problem::Problem;
use super::rate_limit::admit_side;
use super::AppState;

/// The OpenAPI description kept in the repository root.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(refused) = admit_side(&req, &state).await {
        return refused;
    }
    if state.auditor.ready().await {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        Problem::new(ProblemType::NotReady, "the audit store cannot be reached")
            .respond(&request_id(&req))
    }
}

/// Prometheus metrics (OpenMetrics text).
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(refused) = admit_side(&req, &state).await {
        return refused;
    }
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .insert_header(("Cache-Control", "no-store"))
        .body(state.vendor.metrics.render())
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml")
        .body(OPENAPI_YAML)
}
