//! The HTTP edge: routes, request ids, CORS, and the one problem+json error shape.

pub mod assets;
pub mod audit;
pub mod context;
pub mod cors;
pub mod head_limit;
pub mod ops;
pub mod ops_page;
pub mod problem;
pub mod rate_limit;
pub mod tokens;

use std::sync::Arc;

use actix_web::web;
use ipnet::IpNet;

use crate::audit::Auditor;
use crate::browser::OriginPolicy;
use crate::vend::Vendor;

/// What every handler may need.
pub struct AppState {
    pub vendor: Arc<Vendor>,
    pub auditor: Auditor,
    pub origins: OriginPolicy,
    pub trusted_proxies: Vec<IpNet>,
    pub cookie_name: String,
    /// Role a session needs to read `GET /v1/audit/events`.
    pub audit_reader_role: String,
}

/// Registers the service's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/tokens")
            .route(web::post().to(tokens::post_tokens))
            .route(web::method(actix_web::http::Method::OPTIONS).to(cors::preflight_tokens))
            .default_service(web::to(problem::method_not_allowed("POST, OPTIONS"))),
    )
    .service(
        web::resource("/v1/audit/events")
            .route(web::get().to(audit::list_events))
            .default_service(web::to(problem::method_not_allowed("GET"))),
    )
    .service(get_only("/healthz", ops::healthz))
    .service(get_only("/readyz", ops::readyz))
    .service(get_only("/metrics", ops::metrics))
    .service(get_only("/openapi.yaml", ops::openapi))
    .configure(ops_page::routes);
}

/// A GET endpoint that answers 405 (with `Allow: GET`) to every other method.
fn get_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(problem::method_not_allowed("GET")))
}
