//! The HTTP edge: routes, request ids, CORS, and the one problem+json error shape.

pub mod assets;
pub mod audit;
pub mod body_gate;
pub mod connection;
pub mod context;
pub mod cors;
pub mod extract;
pub mod head_limit;
pub mod ops;
pub mod ops_page;
pub mod problem;
pub mod rate_limit;
pub mod relay;
pub mod tokens;

use std::sync::Arc;

use actix_web::web;
use ipnet::IpNet;

use crate::audit::Auditor;
use crate::browser::OriginPolicy;
use crate::lifecycle::Draining;
use crate::reload::Reloader;
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
    /// Set on SIGTERM: readiness fails from then on.
    pub draining: Draining,
    /// Files re-read on change and on SIGHUP (deny list, `_FILE` secrets).
    pub reloader: Reloader,
    /// Relay mode's live streams and limits.
    pub relay: Arc<crate::relay::Relay>,
}

/// Every resource is named by its path; the names are the `route` label of the
/// request metrics (anything else is `other`, or `unmatched` when no route matched).
pub const ROUTES: &[&str] = &[
    "/v1/tokens",
    "/v1/audit/events",
    "/v1/audit/trail",
    "/v1/relay/transcribe",
    "/v1/relay/streams/{interactionId}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.yaml",
    ops_page::PAGE,
    ops_page::SCRIPT,
    ops_page::STYLE,
];

/// The `route` label of an answered request, without allocating.
pub fn route_label(req: &actix_web::HttpRequest) -> &'static str {
    match req.match_name() {
        Some(name) => ROUTES
            .iter()
            .find(|r| **r == name)
            .copied()
            .unwrap_or("other"),
        // Unnamed routes (the `dev` demo's) are rare; only they pay for the lookup.
        None if req.match_pattern().is_some() => "other",
        None => "unmatched",
    }
}

/// A resource named by its path, so the request metrics can label it.
fn named(path: &'static str) -> actix_web::Resource {
    web::resource(path).name(path)
}

/// Registers the service's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        named("/v1/tokens")
            .route(web::post().to(tokens::post_tokens))
            .route(web::method(actix_web::http::Method::OPTIONS).to(cors::preflight_tokens))
            .default_service(web::to(problem::method_not_allowed("POST, OPTIONS"))),
    )
    .service(
        named("/v1/audit/events")
            .route(web::get().to(audit::list_events))
            .default_service(web::to(problem::method_not_allowed("GET"))),
    )
    .service(get_only("/v1/audit/trail", audit::trail))
    .service(get_only("/v1/relay/transcribe", relay::transcribe))
    .service(get_only(
        "/v1/relay/streams/{interactionId}",
        relay::streams,
    ))
    .service(get_only("/healthz", ops::healthz))
    .service(get_only("/readyz", ops::readyz))
    .service(get_only("/metrics", ops::metrics))
    .service(get_only("/openapi.yaml", ops::openapi))
    .configure(ops_page::routes);
}

/// A GET endpoint that answers 405 (with `Allow: GET`) to every other method.
fn get_only<F, Args>(path: &'static str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    named(path)
        .route(web::get().to(handler))
        .default_service(web::to(problem::method_not_allowed("GET")))
}
