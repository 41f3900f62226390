//! `GET /v1/relay/transcribe` and `GET /v1/relay/streams/{interactionId}`: the
//! WebSocket upgrades. Every check happens before the upgrade, so a refusal is an HTTP
//! status (problem+json) and an audit event, which clients tell apart from a drop.
//!
//! Browsers cannot set headers on a WebSocket: the session comes from the cookie (with
//! an allowed `Origin`) or as subprotocols, `@corti/sdk`'s way of passing headers
//! through a proxy: `["Authorization", "Bearer%20<session JWT>"]`. The credential is
//! never echoed nor logged; the first offered protocol that is not a credential is
//! echoed, since Chromium fails a handshake that offered protocols and got none back.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use time::OffsetDateTime;
use tracing::Instrument;

use super::context::caller;
use super::problem::Problem;
use super::rate_limit::add_headers;
use super::tokens::credentials;
use super::AppState;
use crate::audit::{AuditEvent, Outcome};
use crate::vend::{Ask, Attempt, Credentials, RelayAsk, VendError};

use crate::relay::pump::{self, Report};
use crate::relay::registry::Full;
use crate::relay::upstream::{self, valid_interaction_id, Target};
use crate::relay::MAX_FRAME_BYTES;

/// `GET /v1/relay/transcribe`
pub async fn transcribe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    open(req, payload, state, Ok(Target::Transcribe)).await
}

/// `GET /v1/relay/streams/{interactionId}`
pub async fn streams(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let id = req.match_info().get("interactionId").unwrap_or_default();
    let target = if valid_interaction_id(id) {
        Ok(Target::Streams {
            interaction_id: id.to_owned(),
        })
    } else {
        Err(
            "interactionId must be an interaction's id (letters, digits, - and _; at most 64)"
                .to_owned(),
        )
    };
    open(req, payload, state, target).await
}

async fn open(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    target: Result<Target, String>,
) -> HttpResponse {
    let caller = caller(&req, &state.trusted_proxies);
    let request_id = caller.request_id.clone();
    let offered = offered_protocols(&req);
    let protocols = Protocols::read(&offered);
    let credentials = match (credentials(&req, &state.cookie_name), protocols.bearer) {
        // A header (non-browser clients) wins; then the subprotocol; then the cookie.
        (c @ (Credentials::Bearer(_) | Credentials::Malformed), _) => c,
        (_, Some(token)) => Credentials::Bearer(token),
        (c, None) => c,
    };
    let relay = state.relay.clone();
    let ask = target.clone().and_then(|target| {
        if actix_http::ws::verify_handshake(req.head()).is_err() {
            return Err("not a WebSocket upgrade request (GET with Upgrade: websocket)".into());
        }
        Ok(RelayAsk {
            scope: target.scope(),
            tenant: tenant_query(req.query_string())?,
        })
    });
    let attempt = Attempt {
        caller,
        credentials,
        ask: Ask::Relay(ask),
    };
    let draining = state.draining.clone();
    let (mut prepared, result) = state
        .vendor
        .prepare(attempt, |session, tenant| {
            if draining.is_draining() || relay.is_draining() {
                return Err(VendError::ShuttingDown);
            }
            let api_url = relay
                .api_urls
                .get(tenant.as_str())
                .cloned()
                .ok_or_else(|| VendError::UnknownTenant(tenant.clone()))?;
            let slot = relay
                .registry
                .reserve(session.subject.as_str())
                .map_err(|full| VendError::TooManyStreams {
                    per_user: full == Full::User,
                })?;
            Ok((slot, api_url, tenant.as_str().to_owned()))
        })
        .await;
    let target = target.unwrap_or(Target::Transcribe);
    prepared.note(format!("relay upgrade: {}", target.path()));
    let (result, open) = match result {
        Ok((vended, (slot, api_url, tenant))) => {
            let token = secrecy::ExposeSecret::expose_secret(&vended.token.access_token);
            match upstream::connect(&api_url, &target, &tenant, token, relay.connect_timeout).await
            {
                Ok(socket) => (Ok(vended), Some((slot, socket))),
                Err(e) => (Err(e), None),
            }
        }
        Err(e) => (Err(e), None),
    };
    let handled = state.vendor.conclude(prepared, result).await;
    let (Ok(_), Some((slot, socket))) = (&handled.result, open) else {
        let mut response = match &handled.result {
            Err(e) => Problem::from(e).respond(&request_id),
            // Unreachable: a token without a socket is an error above.
            Ok(_) => Problem::new(crate::catalog::ProblemType::NotReady, "relay not opened")
                .respond(&request_id),
        };
        add_headers(&handled.rate_limits, &mut response);
        return response;
    };
    let echo: Vec<&str> = protocols.echo.as_deref().into_iter().collect();
    let (response, session, stream) = match actix_ws::handle_with_protocols(&req, payload, &echo) {
        Ok(upgrade) => upgrade,
        Err(_) => {
            // The handshake was verified before the vend; this cannot be reached by
            // a request, but is answered, never a panic.
            return Problem::new(
                crate::catalog::ProblemType::InvalidRequest,
                "not a WebSocket upgrade request",
            )
            .respond(&request_id);
        }
    };
    let stream = stream
        .max_frame_size(MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME_BYTES);
    let opened = handled.event;
    let auditor = state.auditor.clone();
    let limits = relay.limits;
    let metrics = relay.metrics.clone();
    let span = tracing::info_span!(
        "relay_stream",
        request_id = %request_id,
        endpoint = target.scope(),
        tenant = %opened.tenant,
        ended_by = tracing::field::Empty,
    );
    metrics.opened();
    actix_web::rt::spawn(
        async move {
            let report = pump::run(session, stream, socket, slot, limits, metrics).await;
            tracing::Span::current().record("ended_by", report.ended_by.as_str());
            let event = stream_ended(&opened, &report);
            if auditor.record(&event).await.is_err() {
                auditor.log_unstored(&event);
            }
        }
        .instrument(span),
    );
    response
}

/// The `stream_ended` event: the upgrade's caller, scope, tenant and token fingerprint,
/// with how the stream went in `detail` (JSON).
pub fn stream_ended(opened: &AuditEvent, report: &Report) -> AuditEvent {
    let close = |c: &Option<pump::Close>| {
        c.as_ref()
            .map(|c| json!({"code": c.code, "reason": c.reason}))
    };
    let detail = json!({
        "ended_by": report.ended_by.as_str(),
        "client_close": close(&report.client_close),
        "upstream_close": close(&report.upstream_close),
        "bytes_up": report.bytes_up,
        "frames_up": report.frames_up,
        "bytes_down": report.bytes_down,
        "frames_down": report.frames_down,
    });
    AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        time: OffsetDateTime::now_utc(),
        outcome: Outcome::StreamEnded,
        status: 101,
        upstream_ms: None,
        duration_ms: report.duration.as_millis() as u64,
        detail: Some(detail.to_string()),
        count: 1,
        ..opened.clone()
    }
}

/// The optional `tenant` query parameter; other parameters are ignored.
fn tenant_query(query: &str) -> Result<Option<String>, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| "the query string cannot be read".to_owned())?;
    let mut tenants = pairs.into_iter().filter(|(k, _)| k == "tenant");
    match (tenants.next(), tenants.next()) {
        (Some(_), Some(_)) => Err("tenant is given more than once".into()),
        (Some((_, t)), None) => Ok(Some(t)),
        (None, _) => Ok(None),
    }
}

/// Every subprotocol offered, in order.
fn offered_protocols(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What the offered subprotocols carry.
#[derive(Debug, Default, PartialEq, Eq)]
struct Protocols {
    /// The session JWT, from `Bearer%20<jwt>` (alone or after `Authorization`).
    bearer: Option<String>,
    /// The protocol to echo: the first offered that is not a credential.
    echo: Option<String>,
}

impl Protocols {
    fn read(offered: &[String]) -> Self {
        let mut out = Protocols::default();
        for p in offered {
            match bearer_of(p) {
                Some(token) => {
                    out.bearer.get_or_insert(token);
                }
                None => {
                    out.echo.get_or_insert_with(|| p.clone());
                }
            }
        }
        out
    }
}

/// The token of a `Bearer <token>` subprotocol (percent-encoded, as the SDK sends it).
fn bearer_of(protocol: &str) -> Option<String> {
    let decoded = percent_decode(protocol)?;
    let (scheme, token) = decoded.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(offered: &[&str]) -> Protocols {
        Protocols::read(&offered.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_sdk_header_pair_gives_the_bearer_and_echoes_the_name_only() {
        let p = read(&["Authorization", "Bearer%20eyJ.a.b"]);
        assert_eq!(p.bearer.as_deref(), Some("eyJ.a.b"));
        assert_eq!(p.echo.as_deref(), Some("Authorization"));
    }

    #[test]
    fn a_lone_credential_is_never_echoed() {
        let p = read(&["Bearer%20eyJ.a.b"]);
        assert_eq!(p.bearer.as_deref(), Some("eyJ.a.b"));
        assert_eq!(p.echo, None);
        assert_eq!(read(&[]), Protocols::default());
        let q = read(&["token-vendor", "bearer%20x"]);
        assert_eq!(q.echo.as_deref(), Some("token-vendor"));
    }

    #[test]
    fn tenant_query_reads_one_tenant() {
        assert_eq!(tenant_query(""), Ok(None));
        assert_eq!(tenant_query("tenant=acme&x=1"), Ok(Some("acme".into())));
        assert!(tenant_query("tenant=a&tenant=b").is_err());
    }
}
