//! The demo page `token-vendor dev` serves at `/`: sign in as a demo user, fetch a token
//! through the JS client, open the speech stand-in's WebSocket with it, and watch the
//! token count down and refresh. Plain files compiled into the binary; no build step.

use std::sync::Arc;
use std::time::Duration;

use actix_web::cookie::{time as cookie_time, Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use crate::catalog::ProblemType;
use crate::http::assets::{asset, html_page};
use crate::http::context::request_id;
use crate::http::problem::Problem;
use crate::http::AppState;
use crate::startup::ExtraRoutes;

const DEMO_HTML: &str = include_str!("assets/demo.html");
const DEMO_JS: &str = include_str!("assets/demo.js");
const DEMO_CSS: &str = include_str!("assets/demo.css");
/// The JS client from `clients/js/`, served as-is so the demo uses exactly what apps use.
pub const CLIENT_JS: &str = include_str!("../../clients/js/index.js");

/// How long a demo sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// A user the demo can sign in as.
pub struct DemoUser {
    pub subject: &'static str,
    pub label: &'static str,
    /// Whether the user gets `AUDIT_READER_ROLE` (and so the ops page).
    pub audit_reader: bool,
    /// The `corti_scopes` claim, when the app narrows what this user may have.
    pub corti_scopes: Option<&'static [&'static str]>,
}

/// The demo users: one may have every limited scope and read the audit log, the other
/// only dictation, so asking for `streams` shows a refusal.
pub const USERS: [DemoUser; 2] = [
    DemoUser {
        subject: "demo-user",
        label: "demo-user (transcribe + streams, audit reader)",
        audit_reader: true,
        corti_scopes: None,
    },
    DemoUser {
        subject: "dictation-user",
        label: "dictation-user (transcribe only)",
        audit_reader: false,
        corti_scopes: Some(&["transcribe"]),
    },
];

/// What the demo routes need from `dev`.
pub struct Demo {
    /// The session key `dev` generated; sign-in signs with it.
    pub session_secret: SecretString,
    pub reader_role: String,
    pub cookie_name: String,
    /// `ws://127.0.0.1:PORT` of the speech stand-in.
    pub api_base_url: String,
    pub tenant: String,
    pub environment: String,
    pub token_lifetime: Duration,
    pub refresh_margin_secs: u64,
}

/// The demo's routes, to mount with `Options.extra_routes`.
pub fn routes(demo: Demo) -> ExtraRoutes {
    let demo = web::Data::new(demo);
    Arc::new(move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(demo.clone())
            .route("/", web::get().to(page))
            .route("/demo/demo.js", web::get().to(script))
            .route("/demo/demo.css", web::get().to(style))
            .route("/client/token-vendor.js", web::get().to(client))
            .route("/dev/demo-config", web::get().to(config))
            .route("/dev/session", web::get().to(whoami))
            .route("/dev/sign-in", web::post().to(sign_in))
            .route("/dev/sign-out", web::post().to(sign_out));
    })
}

async fn page(req: HttpRequest, demo: web::Data<Demo>) -> HttpResponse {
    // Everything is same-origin but the speech stand-in: its WebSocket, and its
    // `POST /dev/drop-connections` behind the demo's "Drop the connection" button.
    // The relay's socket is this origin's, named as ws:// for browsers whose 'self'
    // does not cover it.
    let ws = &demo.api_base_url;
    let http = ws.replacen("ws://", "http://", 1);
    let host: String = req
        .connection_info()
        .host()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
        .collect();
    let own_ws = format!("ws://{host}");
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {own_ws} {ws} {http}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    html_page(DEMO_HTML, &csp)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", DEMO_JS)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", DEMO_CSS)
}

async fn client() -> HttpResponse {
    asset("text/javascript; charset=utf-8", CLIENT_JS)
}

async fn config(demo: web::Data<Demo>) -> HttpResponse {
    let users: Vec<_> = USERS
        .iter()
        .map(|u| json!({"subject": u.subject, "label": u.label}))
        .collect();
    HttpResponse::Ok().json(json!({
        "tokenUrl": "/v1/tokens",
        "apiBaseUrl": demo.api_base_url,
        "tenantName": demo.tenant,
        "environment": demo.environment,
        "tokenLifetimeSeconds": demo.token_lifetime.as_secs(),
        "refreshMarginSeconds": demo.refresh_margin_secs,
        "users": users,
    }))
}

/// Who the session cookie names, so the page can show it after a reload (the cookie
/// itself is HttpOnly).
async fn whoami(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Some(cookie) = req.cookie(&state.cookie_name) else {
        return HttpResponse::Ok().json(json!({"signedIn": false}));
    };
    match state.vendor.sessions.verify(cookie.value()).await {
        Ok(session) => HttpResponse::Ok().json(json!({
            "signedIn": true,
            "subject": session.subject.as_str(),
            "roles": session.roles,
            "cortiScopes": session.allowed_scopes,
        })),
        Err(_) => HttpResponse::Ok().json(json!({"signedIn": false})),
    }
}

#[derive(Deserialize)]
struct SignIn {
    subject: String,
}

/// `Some(refusal)` unless the request is JSON from an allowed origin (or has no Origin).
fn refuse_cross_origin(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let json_body = crate::vend::is_json(
        req.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    // A JSON body cannot be sent cross-origin without a preflight, which these routes
    // do not answer; the Origin check is the second lock on the door.
    if json_body && origin.is_none_or(|o| state.origins.is_allowed(o)) {
        return None;
    }
    Some(
        Problem::origin_not_allowed("demo sign-in takes JSON from the demo's own origin only")
            .respond(&request_id(req)),
    )
}

async fn sign_in(
    req: HttpRequest,
    body: web::Bytes,
    demo: web::Data<Demo>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_origin(&req, &state) {
        return refused;
    }
    let asked = serde_json::from_slice::<SignIn>(&body).ok();
    let Some(user) = asked.and_then(|a| USERS.iter().find(|u| u.subject == a.subject)) else {
        return Problem::new(ProblemType::UnknownDemoUser, "no such demo user")
            .respond(&request_id(&req));
    };
    let roles: Vec<&str> = if user.audit_reader {
        vec![demo.reader_role.as_str()]
    } else {
        Vec::new()
    };
    let token = match super::mint_session_with_scopes(
        &demo.session_secret,
        user.subject,
        &roles,
        user.corti_scopes,
        SESSION_LIFETIME,
    ) {
        Ok(token) => token,
        Err(_) => {
            return Problem::new(
                ProblemType::SignInFailed,
                "the demo session could not be signed",
            )
            .respond(&request_id(&req))
        }
    };
    let cookie = Cookie::build(demo.cookie_name.clone(), token)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie_time::Duration::seconds(
            SESSION_LIFETIME.as_secs() as i64
        ))
        .finish();
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(cookie)
        .json(json!({
            "signedIn": true,
            "subject": user.subject,
            "roles": roles,
            "cortiScopes": user.corti_scopes,
        }))
}

async fn sign_out(
    req: HttpRequest,
    demo: web::Data<Demo>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Some(refused) = refuse_cross_origin(&req, &state) {
        return refused;
    }
    let mut cookie = Cookie::build(demo.cookie_name.clone(), "")
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .finish();
    cookie.make_removal();
    HttpResponse::Ok()
        .cookie(cookie)
        .json(json!({"signedIn": false}))
}
