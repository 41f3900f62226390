//! Relay mode (`GET /v1/relay/transcribe`, `GET /v1/relay/streams/{interactionId}`):
//! the same checks as a vend before the upgrade, frames both ways to a local stand-in
//! of Corti's speech socket, close codes passed through, bounded buffers, the
//! operator's deny list and shutdown reaching live streams, and the audit trail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use token_vendor::audit::{AuditEvent, Outcome};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::*;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How the speech stand-in behaves.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers every data frame with the same frame.
    Echo,
    /// Accepts and then never reads: a Corti that stopped keeping up.
    NeverRead,
    /// Closes with this code and reason after the first data frame.
    CloseAfterFirst(u16, &'static str),
    /// Refuses the handshake with this HTTP status.
    Refuse(u16),
}

/// What the speech stand-in saw of one connection.
#[derive(Debug, Clone, Default)]
struct Seen {
    path: String,
    query: String,
    close: Option<(u16, String)>,
}

/// A local stand-in of Corti's speech WebSocket.
struct SpeechUpstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl SpeechUpstream {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move { serve(tcp, behaviour, record).await });
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// [`Self::seen`] once the first connection's close frame is recorded (or after 5 s):
    /// the relay can end its stream, and audit it, before this side has read the close
    /// it forwarded.
    async fn seen_after_close(&self) -> Vec<Seen> {
        for _ in 0..100 {
            if self.seen().first().is_some_and(|s| s.close.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.seen()
    }
}

// The handshake callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn serve(tcp: TcpStream, behaviour: Behaviour, record: Arc<Mutex<Vec<Seen>>>) {
    let index = {
        let mut seen = record.lock().unwrap();
        seen.push(Seen::default());
        seen.len() - 1
    };
    let rec = record.clone();
    let callback = move |req: &Request, res: Response| -> Result<Response, ErrorResponse> {
        let mut seen = rec.lock().unwrap();
        seen[index].path = req.uri().path().to_owned();
        seen[index].query = req.uri().query().unwrap_or("").to_owned();
        if let Behaviour::Refuse(status) = behaviour {
            let mut refused = ErrorResponse::new(Some("no".into()));
            *refused.status_mut() = StatusCode::from_u16(status).unwrap();
            return Err(refused);
        }
        Ok(res)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    if let Behaviour::NeverRead = behaviour {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(ws);
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(_) | Message::Text(_) => match behaviour {
                Behaviour::CloseAfterFirst(code, reason) => {
                    let _ = ws
                        .close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        }))
                        .await;
                }
                _ => {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                }
            },
            Message::Close(frame) => {
                record.lock().unwrap()[index].close =
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                let _ = ws.close(None).await;
                return;
            }
            _ => {}
        }
    }
}

/// The service with relay mode pointed at `upstream`.
async fn relay_app(upstream: &SpeechUpstream, extra: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder()
        .limits(Limits::Off)
        .allowed_origin(APP_ORIGIN)
        .env("CORTI_API_URL", upstream.url.clone());
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    builder.spawn().await
}

fn ws_url(app: &TestApp, path: &str) -> String {
    format!("{}{path}", app.address.replacen("http", "ws", 1))
}

/// How a client presents itself.
enum Auth {
    /// `@corti/sdk`'s proxy form: `["Authorization", "Bearer%20<jwt>"]`.
    Subprotocol(String),
    /// The session cookie, from the app's origin.
    Cookie(String),
    Header(String),
    Nothing,
}

async fn connect(
    app: &TestApp,
    path: &str,
    auth: Auth,
) -> Result<(Client, Option<String>), WsError> {
    let mut request = ws_url(app, path).into_client_request().unwrap();
    let headers = request.headers_mut();
    match auth {
        Auth::Subprotocol(jwt) => {
            headers.insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&format!("Authorization, Bearer%20{jwt}")).unwrap(),
            );
        }
        Auth::Cookie(jwt) => {
            headers.insert(
                "Cookie",
                HeaderValue::from_str(&format!("session={jwt}")).unwrap(),
            );
            headers.insert("Origin", HeaderValue::from_static(APP_ORIGIN));
        }
        Auth::Header(jwt) => {
            headers.insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {jwt}")).unwrap(),
            );
        }
        Auth::Nothing => {}
    }
    let (client, response) = tokio_tungstenite::connect_async(request).await?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((client, protocol))
}

/// The HTTP status and request id of a refused upgrade.
async fn refused(app: &TestApp, path: &str, auth: Auth) -> (u16, String, Value) {
    match connect(app, path, auth).await {
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let id = response
                .headers()
                .get("x-request-id")
                .expect("request id")
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(
                response.headers().get("content-type").unwrap(),
                "application/problem+json"
            );
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}"))
                .expect("problem body");
            (status, id, body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade was accepted"),
    }
}

fn events_of(app: &TestApp, outcome: Outcome) -> Vec<AuditEvent> {
    app.audit
        .events()
        .into_iter()
        .filter(|e| e.outcome == outcome)
        .collect()
}

/// The `stream_ended` event once it is written, with its detail as JSON.
async fn stream_ended(app: &TestApp) -> (AuditEvent, Value) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            !events_of(app, Outcome::StreamEnded).is_empty()
        })
        .await,
        "a stream_ended event is written"
    );
    let event = events_of(app, Outcome::StreamEnded).remove(0);
    let detail = serde_json::from_str(event.detail.as_deref().unwrap()).expect("JSON detail");
    (event, detail)
}

/// The next close frame the client gets (data frames before it are skipped).
async fn close_of(client: &mut Client, within: Duration) -> Option<(u16, String)> {
    let until = tokio::time::timeout(within, async {
        while let Some(msg) = client.next().await {
            match msg {
                Ok(Message::Close(frame)) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    });
    until.await.expect("the stream is closed in time")
}

#[tokio::test]
async fn relay_carries_frames_both_ways_with_a_token_the_browser_never_sees() {
    let upstream = SpeechUpstream::start(Behaviour::Echo).await;
    let app = relay_app(&upstream, &[]).await;
    let session = app.session("alice");

    let (mut client, protocol) = connect(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(session.clone()),
    )
    .await
    .expect("upgrade accepted");
    assert_eq!(
        protocol.as_deref(),
        Some("Authorization"),
        "the name is echoed, the credential never"
    );
    client
        .send(Message::text(r#"{"type":"config"}"#))
        .await
        .unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::text(r#"{"type":"config"}"#)
    );
    let audio = vec![7u8; 3200];
    client.send(Message::binary(audio.clone())).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::binary(audio)
    );
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
    let (ended, detail) = stream_ended(&app).await;

    let seen = upstream.seen_after_close().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/audio-bridge/v2/transcribe");
    assert!(seen[0]
        .query
        .starts_with(&format!("tenant-name={TENANT}&token=Bearer%20")));
    let token = seen[0].query.split("Bearer%20").nth(1).unwrap().to_owned();
    assert_eq!(
        seen[0].close,
        Some((1000, "done".into())),
        "the client's close reaches Corti"
    );

    let opened = events_of(&app, Outcome::Issued);
    assert_eq!(opened.len(), 1, "the upgrade is one event like a vend");
    let opened = &opened[0];
    assert_eq!(opened.subject.as_deref(), Some("alice"));
    assert_eq!(opened.scope.as_deref(), Some("openid transcribe"));
    assert_eq!(
        opened.token_fingerprint.as_deref(),
        Some(app.fingerprint(&token).as_str()),
        "the event names the token used upstream"
    );
    assert_eq!(ended.request_id, opened.request_id);
    assert_eq!(ended.token_fingerprint, opened.token_fingerprint);
    assert_eq!(detail["ended_by"], "client", "{detail}");
    assert_eq!(detail["client_close"]["code"], 1000);
    assert_eq!(detail["bytes_up"], 3200 + 17);
    assert_eq!(detail["frames_up"], 2);
    assert_eq!(detail["frames_down"], 2);
    assert_eq!(app.metric("token_vendor_relay_open_streams").await, 0.0);
    assert_eq!(
        app.metric("token_vendor_relay_bytes_total{direction=\"down\"}")
            .await,
        3217.0
    );
}

#[tokio::test]
async fn the_streams_endpoint_and_the_cookie_session_reach_the_interaction_socket() {
    let upstream = SpeechUpstream::start(Behaviour::Echo).await;
    let app = relay_app(&upstream, &[]).await;
    let (mut client, protocol) = connect(
        &app,
        "/v1/relay/streams/6c2a4c0e-9f9e-4a8c-8d4e-1f2a3b4c5d6e",
        Auth::Cookie(app.session("bob")),
    )
    .await
    .expect("upgrade accepted");
    assert_eq!(protocol, None, "nothing offered, nothing echoed");
    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::text("hi"));
    let seen = upstream.seen();
    assert_eq!(
        seen[0].path,
        "/audio-bridge/v2/interactions/6c2a4c0e-9f9e-4a8c-8d4e-1f2a3b4c5d6e/streams"
    );
    let opened = events_of(&app, Outcome::Issued);
    assert_eq!(opened[0].scope.as_deref(), Some("openid streams"));
}

#[tokio::test]
async fn every_refusal_is_an_http_status_and_an_audit_event_before_the_upgrade() {
    let dir = std::env::temp_dir().join(format!("tv-relay-{}", token_vendor::dev::random_hex(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let deny = dir.join("deny");
    std::fs::write(&deny, "mallory\n").unwrap();
    let upstream = SpeechUpstream::start(Behaviour::Echo).await;
    let app = relay_app(
        &upstream,
        &[
            ("DENY_LIST_FILE", deny.to_str().unwrap()),
            ("RELAY_MAX_STREAMS_PER_USER", "1"),
        ],
    )
    .await;
    let t = "/v1/relay/transcribe";
    let cases: Vec<(&str, String, Auth, u16, Outcome)> = vec![
        (
            "no session",
            t.into(),
            Auth::Nothing,
            401,
            Outcome::Unauthenticated,
        ),
        (
            "bad session",
            t.into(),
            Auth::Subprotocol("not-a-jwt".into()),
            401,
            Outcome::Unauthenticated,
        ),
        (
            "denied",
            t.into(),
            Auth::Header(app.session("mallory")),
            403,
            Outcome::Forbidden,
        ),
        (
            // Like a tenant the user may not have, so tenants cannot be enumerated.
            "unknown tenant",
            format!("{t}?tenant=nope"),
            Auth::Header(app.session("a")),
            403,
            Outcome::Forbidden,
        ),
        (
            "bad interaction id",
            "/v1/relay/streams/a%2Fb".into(),
            Auth::Header(app.session("a")),
            400,
            Outcome::InvalidRequest,
        ),
    ];
    for (what, path, auth, status, outcome) in cases {
        let (got, request_id, body) = refused(&app, &path, auth).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_outcome(&app, &request_id, outcome, status);
    }
    assert!(
        upstream.seen().is_empty(),
        "no refused attempt reaches Corti"
    );

    // A cookie from an origin that is not allowed (cross-site WebSocket hijacking).
    let mut request = ws_url(&app, t).into_client_request().unwrap();
    request.headers_mut().insert(
        "Cookie",
        HeaderValue::from_str(&format!("session={}", app.session("a"))).unwrap(),
    );
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_static("https://evil.example"));
    let Err(WsError::Http(response)) = tokio_tungstenite::connect_async(request).await else {
        panic!("a foreign origin is refused");
    };
    assert_eq!(response.status().as_u16(), 403);

    // The per-user limit: a second stream of the same user is refused.
    let carol = app.session("carol");
    let (_open, _) = connect(&app, t, Auth::Subprotocol(carol.clone()))
        .await
        .expect("first");
    let (status, request_id, body) = refused(&app, t, Auth::Subprotocol(carol.clone())).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["type"], "urn:token-vendor:problem:too-many-streams");
    assert_outcome(&app, &request_id, Outcome::RateLimited, 429);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_upstream_that_refuses_is_a_502_before_the_upgrade_and_one_event() {
    let upstream = SpeechUpstream::start(Behaviour::Refuse(403)).await;
    let app = relay_app(&upstream, &[]).await;
    let (status, request_id, body) = refused(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("alice")),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body["type"],
        "urn:token-vendor:problem:speech-upstream-error"
    );
    let event = assert_outcome(&app, &request_id, Outcome::UpstreamError, 502);
    assert!(
        !format!("{event:?}").contains("Bearer"),
        "no token in the event: {event:?}"
    );
    assert_eq!(app.metric("token_vendor_relay_open_streams").await, 0.0);
}

#[tokio::test]
async fn corti_close_code_and_reason_reach_the_browser_as_sent() {
    let upstream = SpeechUpstream::start(Behaviour::CloseAfterFirst(4001, "bad config")).await;
    let app = relay_app(&upstream, &[]).await;
    let (mut client, _) = connect(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("alice")),
    )
    .await
    .unwrap();
    client.send(Message::text("{}")).await.unwrap();
    assert_eq!(
        close_of(&mut client, Duration::from_secs(5)).await,
        Some((4001, "bad config".into()))
    );
    let (_, detail) = stream_ended(&app).await;
    assert_eq!(detail["ended_by"], "upstream", "{detail}");
    assert_eq!(detail["upstream_close"]["code"], 4001);
}

#[tokio::test]
async fn a_denied_subject_has_its_live_stream_closed_within_2_s_and_the_event_says_so() {
    let dir = std::env::temp_dir().join(format!("tv-relay-{}", token_vendor::dev::random_hex(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let deny = dir.join("deny");
    std::fs::write(&deny, "# nobody\n").unwrap();
    let upstream = SpeechUpstream::start(Behaviour::Echo).await;
    let app = relay_app(&upstream, &[("DENY_LIST_FILE", deny.to_str().unwrap())]).await;
    let (mut alice, _) = connect(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("alice")),
    )
    .await
    .unwrap();
    let (mut bob, _) = connect(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("bob")),
    )
    .await
    .unwrap();
    alice.send(Message::binary(vec![1u8; 320])).await.unwrap();
    let _ = alice.next().await;

    let edited = Instant::now();
    let tmp = dir.join("deny.new");
    std::fs::write(&tmp, "alice\n").unwrap();
    std::fs::rename(&tmp, &deny).unwrap();
    let close = close_of(&mut alice, Duration::from_secs(5)).await;
    let took = edited.elapsed();
    println!("deny list edit to close frame: {took:?}");
    let (code, reason) = close.expect("a close frame");
    assert_eq!(
        code, 1000,
        "final for @corti/sdk, which reconnects on anything else"
    );
    assert!(reason.contains("deny"), "{reason}");
    // The list is polled every second; 2 s plus slack for a loaded machine.
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    let (ended, detail) = stream_ended(&app).await;
    assert_eq!(ended.subject.as_deref(), Some("alice"));
    assert_eq!(detail["ended_by"], "deny", "{detail}");
    assert_eq!(detail["client_close"]["code"], 1000);
    assert_eq!(detail["upstream_close"]["code"], 1000);

    bob.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        bob.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_corti_that_stops_reading_ends_the_stream_with_1013_not_with_growing_memory() {
    let upstream = SpeechUpstream::start(Behaviour::NeverRead).await;
    let app = relay_app(&upstream, &[]).await;
    let (client, _) = connect(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("alice")),
    )
    .await
    .unwrap();
    let (mut sink, mut stream) = client.split();
    // 100 ms frames of 16 kHz 16-bit PCM, far faster than real time.
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        while sink.send(Message::binary(vec![0u8; 3200])).await.is_ok() {
            sent += 3200;
            if sent > 64 << 20 {
                break;
            }
        }
        sent
    });
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = stream.next().await {
            if let Ok(Message::Close(frame)) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(close, Some(1013));
    sender.abort();
    let (_, detail) = stream_ended(&app).await;
    assert_eq!(detail["ended_by"], "limit", "{detail}");
    // What was accepted is bounded: the buffer and the sockets' kernel buffers, not
    // everything the client sent.
    let up = detail["bytes_up"].as_u64().unwrap();
    assert!(up < 16 << 20, "{up} bytes accepted");
}

#[tokio::test]
async fn an_idle_stream_is_closed_after_relay_idle_timeout() {
    let upstream = SpeechUpstream::start(Behaviour::Echo).await;
    let app = relay_app(&upstream, &[("RELAY_IDLE_TIMEOUT", "500ms")]).await;
    let (mut client, _) = connect(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("alice")),
    )
    .await
    .unwrap();
    let (code, reason) = close_of(&mut client, Duration::from_secs(5)).await.unwrap();
    assert_eq!(code, 1000);
    assert!(reason.contains("idle"), "{reason}");
    let (_, detail) = stream_ended(&app).await;
    assert_eq!(detail["ended_by"], "idle");
}

#[tokio::test]
async fn a_draining_replica_takes_no_new_streams_and_closes_open_ones_with_1012() {
    let upstream = SpeechUpstream::start(Behaviour::Echo).await;
    let app = relay_app(&upstream, &[("RELAY_MAX_STREAMS", "5")]).await;
    let (mut client, _) = connect(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("alice")),
    )
    .await
    .unwrap();
    app.relay.drain(Duration::from_millis(800));
    let (status, request_id, _) = refused(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("bob")),
    )
    .await;
    assert_eq!(status, 503);
    assert_outcome(&app, &request_id, Outcome::Unavailable, 503);
    // Still relaying during the grace.
    client.send(Message::text("a")).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::text("a"));
    let (code, _) = close_of(&mut client, Duration::from_secs(5)).await.unwrap();
    assert_eq!(code, 1012);
    let (_, detail) = stream_ended(&app).await;
    assert_eq!(detail["ended_by"], "shutdown");
}

#[tokio::test]
async fn the_replica_limit_refuses_with_503() {
    let upstream = SpeechUpstream::start(Behaviour::Echo).await;
    let app = relay_app(&upstream, &[("RELAY_MAX_STREAMS", "1")]).await;
    let _open = connect(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("alice")),
    )
    .await
    .unwrap();
    let (status, request_id, body) = refused(
        &app,
        "/v1/relay/transcribe",
        Auth::Subprotocol(app.session("bob")),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_outcome(&app, &request_id, Outcome::Unavailable, 503);
}

/// `token-vendor serve` as a process, relaying to `upstream`; its session secret.
fn serve_binary(
    upstream: &SpeechUpstream,
    extra: &[(&str, &str)],
) -> (
    crate::support::serve_process::ServeProcess,
    String,
    token_vendor::dev::auth_standin::AuthStandIn,
    std::path::PathBuf,
) {
    use crate::support::serve_process::ServeProcess;
    use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};

    let client_secret = format!("client-secret-{}", token_vendor::dev::random_hex(8));
    let session_secret = token_vendor::dev::random_hex(32);
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "test-client".into(),
        client_secret: client_secret.clone(),
        token_lifetime: Duration::from_secs(300),
    })
    .expect("stand-in starts");
    let dir = std::env::temp_dir().join(format!("tv-relay-{}", token_vendor::dev::random_hex(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let env: Vec<(&str, String)> = [
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_AUTH_URL", standin.base_url().to_owned()),
        ("CORTI_API_URL", upstream.url.clone()),
        ("CORTI_CLIENT_ID", "test-client".into()),
        ("CORTI_CLIENT_SECRET", client_secret),
        ("SESSION_JWT_SECRET", session_secret.clone()),
        ("AUDIT_HMAC_KEY", audit_key().to_owned()),
        ("AUDIT_ALLOW_UNSIGNED", "true".into()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("audit.db").display()),
        ),
    ]
    .into_iter()
    .chain(extra.iter().map(|(k, v)| (*k, v.to_string())))
    .collect();
    (ServeProcess::start(&env), session_secret, standin, dir)
}

/// A relay stream to the real binary, with a bearer session for `sub`.
async fn connect_binary(address: &str, session_secret: &str, sub: &str) -> Client {
    let session = SessionSigner::new(session_secret).session(sub);
    let url = format!("{}/v1/relay/transcribe", address.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {session}")).unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade accepted")
        .0
}

#[tokio::test]
async fn sigterm_drains_the_real_binary_open_streams_get_1012_and_a_stream_ended_event() {
    let upstream = SpeechUpstream::start(Behaviour::Echo).await;
    let (mut service, session_secret, _standin, dir) =
        serve_binary(&upstream, &[("SHUTDOWN_GRACE", "2s")]);
    let session = SessionSigner::new(&session_secret).session("alice");
    let url = format!(
        "{}/v1/relay/transcribe",
        service.address.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {session}")).unwrap(),
    );
    let (mut client, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade accepted");
    client.send(Message::text("a")).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::text("a"));

    let signalled = Instant::now();
    service.sigterm();
    let (code, _) = close_of(&mut client, Duration::from_secs(5))
        .await
        .expect("a close frame");
    assert_eq!(code, 1012, "service restart: clients reconnect elsewhere");
    let took = signalled.elapsed();
    // The stream keeps going through most of the grace, then is closed before the
    // server stops waiting for it (a little slack for a loaded machine).
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "closed near the end of SHUTDOWN_GRACE (2 s): {took:?}"
    );
    let exit = tokio::task::spawn_blocking(move || {
        let exit = service.wait_exit(Duration::from_secs(10));
        (exit, service)
    })
    .await
    .unwrap();
    let (status, service) = (exit.0.expect("the service stops").0, exit.1);
    assert!(status.success(), "{status:?}");
    assert!(
        service.log_has("\"stream_ended\""),
        "the stream's end is audited before the process exits"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn corti_not_reading_costs_no_memory_streams_end_with_1013_and_rss_stays_flat() {
    let upstream = SpeechUpstream::start(Behaviour::NeverRead).await;
    let (service, session_secret, _standin, dir) = serve_binary(
        &upstream,
        &[
            ("RELAY_MAX_STREAMS_PER_USER", "100"),
            ("RATE_LIMIT_PER_USER", "100000/second"),
            ("RATE_LIMIT_PER_IP", "100000/second"),
        ],
    );
    // One round of 20 streams blasting audio at a Corti that never reads.
    let round = || async {
        let mut closes = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let client = connect_binary(&service.address, &session_secret, "alice").await;
            tasks.push(tokio::spawn(async move {
                let (mut sink, mut stream) = client.split();
                let sender = tokio::spawn(async move {
                    while sink.send(Message::binary(vec![0u8; 16000])).await.is_ok() {}
                });
                let close = tokio::time::timeout(Duration::from_secs(30), async {
                    while let Some(msg) = stream.next().await {
                        if let Ok(Message::Close(frame)) = msg {
                            return frame.map(|f| u16::from(f.code));
                        }
                    }
                    None
                })
                .await
                .ok()
                .flatten();
                sender.abort();
                close
            }));
        }
        for t in tasks {
            closes.push(t.await.unwrap());
        }
        closes
    };
    let first = round().await;
    assert!(first.iter().all(|c| *c == Some(1013)), "{first:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_first = service.rss_bytes().expect("RSS");
    for _ in 0..3 {
        let closes = round().await;
        assert!(closes.iter().all(|c| *c == Some(1013)), "{closes:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_more = service.rss_bytes().expect("RSS");
    let grown = after_more.saturating_sub(after_first);
    println!("RSS after one round {after_first} B, after three more {after_more} B");
    // Memory is held per open stream (buffers, sockets), not per byte sent: three more
    // rounds of the same streams leave it where one round did.
    assert!(
        grown < 8 << 20,
        "RSS grew by {grown} B over three more rounds"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
