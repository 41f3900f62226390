//! `GET /ops/audit`: a page for ops to read the audit log in a browser — recent events
//! with filters, outcomes per minute, and a token-fingerprint search. Plain files
//! compiled into the binary. The page holds no data itself: everything it shows comes
//! from `GET /v1/audit/events` and `GET /v1/audit/trail`, which check the session and
//! the reader role.

use actix_web::{web, HttpResponse};

use super::assets::{asset, html_page};

const PAGE_HTML: &str = include_str!("assets/ops-audit.html");
const PAGE_JS: &str = include_str!("assets/ops-audit.js");
const PAGE_CSS: &str = include_str!("assets/ops-audit.css");

/// Only same-origin scripts, styles and API calls; the page may not be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Registers the page and its two assets.
pub const PAGE: &str = "/ops/audit";
pub const SCRIPT: &str = "/ops/audit.js";
pub const STYLE: &str = "/ops/audit.css";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(PAGE).name(PAGE).route(web::get().to(page)))
        .service(
            web::resource(SCRIPT)
                .name(SCRIPT)
                .route(web::get().to(script)),
        )
        .service(web::resource(STYLE).name(STYLE).route(web::get().to(style)));
}

async fn page() -> HttpResponse {
    html_page(PAGE_HTML, CSP)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", PAGE_CSS)
}
