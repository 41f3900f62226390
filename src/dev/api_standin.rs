//! A development stand-in of Corti's speech WebSockets (`/audio-bridge/v2/transcribe`
//! and `/audio-bridge/v2/interactions/{id}/streams`), so the demo page can show a token
//! being used for what it is for. It checks the `token` query parameter the way the real
//! API must (signature by the auth stand-in, expiry, scope) and speaks the first steps
//! of the real protocol: a `config` message within 10 s, answered `CONFIG_ACCEPTED`,
//! then audio frames, answered with made-up transcripts. Like the auth stand-in, it only
//! ever binds loopback.
//!
//! A stream that is already open outlives its token, as with other streaming APIs: the
//! token is checked when the connection is opened.
//!
//! `POST /dev/drop-connections` (this stand-in only) closes every open stream with
//! 1012 (service restart), as a redeploy or a network drop would, so a client's
//! reconnect path can be seen and tested.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::auth_standin::AuthStandIn;

/// How long a client has to send its `config` message, as with the real API.
pub const CONFIG_DEADLINE: Duration = Duration::from_secs(10);

/// A transcript is sent back for every this many audio frames.
const FRAMES_PER_TRANSCRIPT: u64 = 4;

/// Phrases the stand-in "hears", in turn.
const PHRASES: [&str; 6] = [
    "Patient reports a mild headache since yesterday.",
    "No fever, no nausea.",
    "Blood pressure one twenty over eighty.",
    "Advised rest and fluids.",
    "Follow up in one week if symptoms persist.",
    "This transcript comes from the development stand-in.",
];

/// The two speech endpoints, which differ in scope and in message shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/audio-bridge/v2/transcribe`: dictation.
    Transcribe,
    /// `/audio-bridge/v2/interactions/{id}/streams`: ambient interaction streaming.
    Streams,
}

impl Endpoint {
    /// The scope a token must carry to open this endpoint.
    pub fn scope(self) -> &'static str {
        match self {
            Endpoint::Transcribe => "transcribe",
            Endpoint::Streams => "streams",
        }
    }

    /// What the real API answers when no `config` came in time.
    fn timeout_message(self) -> &'static str {
        match self {
            Endpoint::Transcribe => "CONFIG_TIMEOUT",
            Endpoint::Streams => "CONFIG_NOT_PROVIDED",
        }
    }
}

/// Why a connection was refused before the WebSocket handshake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the tenant-name query parameter is missing or names another tenant")]
    Tenant,
    #[error("the token query parameter is missing or is not `Bearer <token>`")]
    MissingToken,
    #[error("the token is not valid (signature, issuer or expiry)")]
    InvalidToken,
    #[error("the token's scope does not include {0}")]
    Scope(&'static str),
}

impl Refusal {
    fn status(&self) -> u16 {
        match self {
            Refusal::Tenant | Refusal::MissingToken | Refusal::InvalidToken => 401,
            Refusal::Scope(_) => 403,
        }
    }
}

struct Shared {
    auth: Arc<AuthStandIn>,
    tenant: String,
    /// Bumped by `POST /dev/drop-connections`; every open stream watches it.
    drops: watch::Sender<u64>,
}

/// A running stand-in of the speech API.
pub struct ApiStandIn {
    handle: ServerHandle,
    port: u16,
}

#[derive(Deserialize)]
struct ConnectQuery {
    #[serde(rename = "tenant-name")]
    tenant_name: Option<String>,
    token: Option<String>,
}

impl ApiStandIn {
    /// Starts on an ephemeral loopback port; tokens are checked with `auth`'s keys.
    pub fn start(auth: Arc<AuthStandIn>, tenant: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(Shared {
            auth,
            tenant,
            drops: watch::channel(0).0,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/audio-bridge/v2/transcribe", web::get().to(transcribe))
                .route(
                    "/audio-bridge/v2/interactions/{id}/streams",
                    web::get().to(streams),
                )
                .route("/dev/drop-connections", web::post().to(drop_connections))
        })
        .workers(1)
        .disable_signals()
        // Open demo streams must not hold up stopping `dev`.
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self { handle, port })
    }

    /// `ws://127.0.0.1:PORT`, the base to use instead of `wss://api.{env}.corti.app`.
    pub fn base_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// The checks the real API makes before it accepts a connection.
fn authorize(
    auth: &AuthStandIn,
    tenant: &str,
    endpoint: Endpoint,
    query: &ConnectQuery,
) -> Result<(), Refusal> {
    if query.tenant_name.as_deref() != Some(tenant) {
        return Err(Refusal::Tenant);
    }
    let token = query
        .token
        .as_deref()
        .and_then(|t| t.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::MissingToken)?;
    let claims = auth.verify(token).ok_or(Refusal::InvalidToken)?;
    if !claims.iss.ends_with(&format!("/realms/{tenant}")) {
        return Err(Refusal::InvalidToken);
    }
    if !claims
        .scope
        .split_ascii_whitespace()
        .any(|s| s == endpoint.scope())
    {
        return Err(Refusal::Scope(endpoint.scope()));
    }
    Ok(())
}

/// Closes every open stream abnormally; answers how many there were.
async fn drop_connections(shared: web::Data<Shared>) -> HttpResponse {
    let open = shared.drops.receiver_count();
    shared.drops.send_modify(|n| *n += 1);
    tracing::info!(
        target: "token_vendor::dev::api_standin",
        open,
        "speech stand-in dropped its connections"
    );
    HttpResponse::Ok().json(json!({"dropped": open}))
}

async fn transcribe(
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<ConnectQuery>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    connect(Endpoint::Transcribe, req, body, query, shared).await
}

async fn streams(
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<ConnectQuery>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    connect(Endpoint::Streams, req, body, query, shared).await
}

async fn connect(
    endpoint: Endpoint,
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<ConnectQuery>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Err(refusal) = authorize(&shared.auth, &shared.tenant, endpoint, &query) {
        tracing::info!(
            target: "token_vendor::dev::api_standin",
            endpoint = endpoint.scope(),
            reason = %refusal,
            "speech stand-in refused a connection"
        );
        return HttpResponse::build(
            actix_web::http::StatusCode::from_u16(refusal.status())
                .unwrap_or(actix_web::http::StatusCode::UNAUTHORIZED),
        )
        .json(json!({"error": refusal.to_string()}));
    }
    match actix_ws::handle(&req, body) {
        Ok((response, session, messages)) => {
            tracing::info!(
                target: "token_vendor::dev::api_standin",
                endpoint = endpoint.scope(),
                "speech stand-in accepted a connection"
            );
            let drops = shared.drops.subscribe();
            actix_web::rt::spawn(converse(endpoint, session, messages, drops));
            response
        }
        Err(e) => e.error_response(),
    }
}

/// Checks a `config` message the way the real API does, in outline: the language is
/// required (and, for streams, the mode). `Err` carries the reason sent back.
pub fn check_config(endpoint: Endpoint, message: &Value) -> Result<(), String> {
    if message.get("type").and_then(Value::as_str) != Some("config") {
        return Err("the first message must have type \"config\"".into());
    }
    let Some(config) = message.get("configuration").filter(|c| c.is_object()) else {
        return Err("configuration must be an object".into());
    };
    let language = match endpoint {
        Endpoint::Transcribe => config.get("primaryLanguage"),
        Endpoint::Streams => config
            .get("transcription")
            .and_then(|t| t.get("primaryLanguage")),
    };
    if !language.is_some_and(Value::is_string) {
        return Err(match endpoint {
            Endpoint::Transcribe => "configuration.primaryLanguage is required".into(),
            Endpoint::Streams => "configuration.transcription.primaryLanguage is required".into(),
        });
    }
    if endpoint == Endpoint::Streams
        && !config
            .get("mode")
            .and_then(|m| m.get("type"))
            .is_some_and(Value::is_string)
    {
        return Err("configuration.mode.type is required".into());
    }
    Ok(())
}

/// A made-up transcript in the shape of the endpoint's `transcript` message.
pub fn transcript(endpoint: Endpoint, index: u64, start_ms: u64, end_ms: u64) -> Value {
    let text = PHRASES[(index % PHRASES.len() as u64) as usize];
    match endpoint {
        Endpoint::Transcribe => json!({
            "type": "transcript",
            "data": {"text": text, "rawTranscriptText": text, "start": start_ms, "end": end_ms, "isFinal": true},
        }),
        Endpoint::Streams => json!({
            "type": "transcript",
            "data": [{
                "id": uuid::Uuid::new_v4().to_string(),
                "transcript": text,
                "isFinal": true,
                "participant": {"channel": 0, "role": "multiple"},
                "time": {"start": start_ms, "end": end_ms},
            }],
        }),
    }
}

async fn send_json(session: &mut Session, value: &Value) -> bool {
    session.text(value.to_string()).await.is_ok()
}

/// One connection: config first (within [`CONFIG_DEADLINE`]), then audio in and
/// transcripts out until the client ends or closes.
async fn converse(
    endpoint: Endpoint,
    mut session: Session,
    mut messages: MessageStream,
    mut drops: watch::Receiver<u64>,
) {
    let configured = tokio::time::timeout(CONFIG_DEADLINE, async {
        loop {
            match messages.recv().await {
                Some(Ok(Message::Text(text))) => {
                    let parsed = serde_json::from_str::<Value>(&text)
                        .map_err(|_| "the message is not JSON".to_owned());
                    return Some(parsed.and_then(|v| check_config(endpoint, &v)));
                }
                Some(Ok(Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        return None;
                    }
                }
                // Audio before the configuration is dropped, as the real API warns.
                Some(Ok(Message::Binary(_) | Message::Pong(_) | Message::Continuation(_))) => {}
                Some(Ok(Message::Nop)) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            }
        }
    })
    .await;
    let reason = match configured {
        Err(_elapsed) => {
            send_json(&mut session, &json!({"type": endpoint.timeout_message()})).await;
            Some(CloseReason::from((
                CloseCode::Policy,
                endpoint.timeout_message(),
            )))
        }
        Ok(None) => None,
        Ok(Some(Err(why))) => {
            send_json(
                &mut session,
                &json!({"type": "CONFIG_DENIED", "reason": why}),
            )
            .await;
            Some(CloseReason::from((CloseCode::Policy, "CONFIG_DENIED")))
        }
        Ok(Some(Ok(()))) => {
            if send_json(&mut session, &json!({"type": "CONFIG_ACCEPTED"})).await {
                tokio::select! {
                    reason = stream(endpoint, &mut session, &mut messages) => reason,
                    () = dropped(&mut drops) => Some(CloseReason {
                        code: CloseCode::Restart,
                        description: Some("dropped by the development stand-in".into()),
                    }),
                }
            } else {
                None
            }
        }
    };
    let _ = session.close(reason).await;
}

/// Resolves when `POST /dev/drop-connections` is called (never once the server is gone).
async fn dropped(drops: &mut watch::Receiver<u64>) {
    if drops.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn stream(
    endpoint: Endpoint,
    session: &mut Session,
    messages: &mut MessageStream,
) -> Option<CloseReason> {
    let mut frames: u64 = 0;
    let mut sent: u64 = 0;
    let mut since_ms: u64 = 0;
    let started = std::time::Instant::now();
    while let Some(message) = messages.recv().await {
        match message {
            Ok(Message::Binary(_)) => {
                frames += 1;
                if frames.is_multiple_of(FRAMES_PER_TRANSCRIPT) {
                    let now_ms = started.elapsed().as_millis() as u64;
                    if !send_json(session, &transcript(endpoint, sent, since_ms, now_ms)).await {
                        return None;
                    }
                    sent += 1;
                    since_ms = now_ms;
                }
            }
            Ok(Message::Text(text)) => {
                let kind = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
                match kind.as_deref() {
                    Some("end") => {
                        send_json(session, &json!({"type": "ENDED"})).await;
                        return Some(CloseReason::from(CloseCode::Normal));
                    }
                    Some("flush") if !send_json(session, &json!({"type": "flushed"})).await => {
                        return None;
                    }
                    _ => {}
                }
            }
            Ok(Message::Ping(bytes)) => {
                if session.pong(&bytes).await.is_err() {
                    return None;
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcribe_config_needs_a_primary_language() {
        let ok = json!({"type": "config", "configuration": {"primaryLanguage": "en"}});
        assert_eq!(check_config(Endpoint::Transcribe, &ok), Ok(()));
        let missing = json!({"type": "config", "configuration": {}});
        assert!(check_config(Endpoint::Transcribe, &missing).is_err());
        let wrong_type = json!({"type": "audio", "configuration": {"primaryLanguage": "en"}});
        assert!(check_config(Endpoint::Transcribe, &wrong_type).is_err());
    }

    #[test]
    fn streams_config_needs_transcription_language_and_mode() {
        let ok = json!({"type": "config", "configuration": {
            "transcription": {"primaryLanguage": "en"}, "mode": {"type": "facts", "outputLocale": "en"}}});
        assert_eq!(check_config(Endpoint::Streams, &ok), Ok(()));
        let no_mode = json!({"type": "config", "configuration": {
            "transcription": {"primaryLanguage": "en"}}});
        assert!(check_config(Endpoint::Streams, &no_mode).is_err());
    }

    #[test]
    fn transcripts_have_the_shape_of_each_endpoint() {
        let t = transcript(Endpoint::Transcribe, 0, 0, 1000);
        assert_eq!(t["type"], "transcript");
        assert!(t["data"]["text"].is_string());
        let s = transcript(Endpoint::Streams, 1, 0, 1000);
        assert!(s["data"][0]["transcript"].is_string());
        assert_eq!(s["data"][0]["time"]["end"], 1000);
    }
}
