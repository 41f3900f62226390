//! SIGTERM to the real binary while vends are in flight: readiness goes first, the
//! listener closes (new connections are refused, never reset), every vend already
//! accepted finishes within `SHUTDOWN_GRACE` with its audit event committed, and the
//! process exits 0. A vend that outlasts the grace is cut, and the exit is still 0.
//! At start, a variable that looks like a setting but is none is logged as a warning.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::serve_process::ServeProcess;
use crate::support::{keycloak_claims, SessionSigner, TestKey, CERTS_PATH, TOKEN_PATH};
use serde_json::{json, Value};
use sqlx::Row;
use token_vendor::audit::Fingerprinter;
use token_vendor::dev::random_hex;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// A Keycloak stand-in that answers every token request with a fresh signed token,
/// after `delay`: long enough for a SIGTERM to find vends in flight.
struct SlowKeycloak {
    key: Arc<TestKey>,
    delay: Duration,
}

impl Respond for SlowKeycloak {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let token = self.key.sign(&keycloak_claims("openid transcribe", 300));
        ResponseTemplate::new(200)
            .set_body_json(json!({
                "access_token": token, "expires_in": 300, "token_type": "Bearer",
                "scope": "openid transcribe",
            }))
            .set_delay(self.delay)
    }
}

async fn slow_upstream(delay: Duration) -> MockServer {
    let key = Arc::new(TestKey::generate());
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(CERTS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [key.jwk]})))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(SlowKeycloak { key, delay })
        .mount(&mock)
        .await;
    mock
}

struct Setup {
    signer: SessionSigner,
    audit_key: String,
    db_url: String,
    _dir: TempDir,
    _upstream: MockServer,
    env: Vec<(&'static str, String)>,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup(upstream_delay: Duration, grace: &str) -> Setup {
    let session_secret = format!("fake-session-secret-{}", random_hex(24));
    let client_secret = format!("fake-client-secret-{}", random_hex(12));
    let audit_key = format!("fake-audit-key-{}", random_hex(16));
    let dir = std::env::temp_dir().join(format!("tv-lifecycle-{}", random_hex(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db_url = format!("sqlite://{}", dir.join("audit.db").display());
    let upstream = slow_upstream(upstream_delay).await;
    let env = vec![
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_AUTH_URL", upstream.uri()),
        ("CORTI_CLIENT_ID", "test-client".into()),
        ("CORTI_CLIENT_SECRET", client_secret),
        ("SESSION_JWT_SECRET", session_secret.clone()),
        ("AUDIT_HMAC_KEY", audit_key.clone()),
        ("DATABASE_URL", db_url.clone()),
        ("RATE_LIMIT_PER_USER", "100000/second".into()),
        ("RATE_LIMIT_PER_IP", "100000/second".into()),
        ("UPSTREAM_RATE_LIMIT", "100000/second".into()),
        ("TOKEN_REUSE_MIN_TTL", "0".into()),
        ("UPSTREAM_TIMEOUT", "20s".into()),
        ("SHUTDOWN_GRACE", grace.into()),
    ];
    Setup {
        signer: SessionSigner::new(&session_secret),
        audit_key,
        db_url,
        _dir: TempDir(dir),
        _upstream: upstream,
        env,
    }
}

/// How one vend attempt ended.
#[derive(Debug)]
enum Ending {
    Answered {
        request_id: String,
        status: u16,
        token: Option<String>,
    },
    /// No connection could be made: the listener is closed.
    Refused,
    /// Anything else: a reset, a connection closed before the answer, a timeout.
    Broken(String),
}

struct Attempt {
    started_ms: u64,
    ending: Ending,
}

async fn vend(http: &reqwest::Client, address: &str, session: &str) -> Ending {
    let request_id = format!("req-{}", random_hex(8));
    let sent = http
        .post(format!("{address}/v1/tokens"))
        .header("Content-Type", "application/json")
        .header("X-Request-Id", &request_id)
        .bearer_auth(session)
        .body(r#"{"scope":"transcribe"}"#)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Ending::Refused,
        Err(e) => return Ending::Broken(format!("{e:?}")),
    };
    let status = response.status().as_u16();
    match response.json::<Value>().await {
        Ok(body) => Ending::Answered {
            request_id,
            status,
            token: body["accessToken"].as_str().map(str::to_owned),
        },
        Err(e) => Ending::Broken(format!("status {status}, body cut: {e:?}")),
    }
}

/// `clients` callers vending without pause (keep-alive connections, as a browser's
/// fetch would use) until the service refuses their connection.
fn load(
    setup: &Setup,
    address: &str,
    clients: usize,
    clock: Instant,
) -> Vec<tokio::task::JoinHandle<Vec<Attempt>>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    (0..clients)
        .map(|c| {
            let (http, address) = (http.clone(), address.to_owned());
            let session = setup.signer.session(&format!("user-{c}"));
            tokio::spawn(async move {
                let mut attempts = Vec::new();
                loop {
                    let started_ms = clock.elapsed().as_millis() as u64;
                    let ending = vend(&http, &address, &session).await;
                    let last = !matches!(ending, Ending::Answered { .. });
                    attempts.push(Attempt { started_ms, ending });
                    if last {
                        return attempts;
                    }
                }
            })
        })
        .collect()
}

/// request_id → (outcome, token_fingerprint) of every stored event.
async fn stored_events(
    db_url: &str,
) -> std::collections::HashMap<String, (String, Option<String>)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db_url).await.expect("open audit db");
    let rows = sqlx::query("SELECT request_id, outcome, token_fingerprint FROM audit_events")
        .fetch_all(&pool)
        .await
        .expect("read events");
    pool.close().await;
    rows.iter()
        .map(|r| {
            (
                r.get::<String, _>("request_id"),
                (
                    r.get::<String, _>("outcome"),
                    r.get::<Option<String>, _>("token_fingerprint"),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_in_flight_vends_loses_no_audited_token_and_exits_0() {
    let _turn = crate::alone().await;
    // Arrange: Corti auth takes 1.5 s, so a SIGTERM finds every client mid-vend.
    let setup = setup(Duration::from_millis(1500), "10s").await;
    let mut service = ServeProcess::start(&setup.env);
    let clock = Instant::now();
    let clients = load(&setup, &service.address, 12, clock);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Act
    let sigterm_ms = clock.elapsed().as_millis() as u64;
    service.sigterm();
    let exit = tokio::task::block_in_place(|| service.wait_exit(Duration::from_secs(20)));

    // Assert: a clean exit well within the grace, after the in-flight vends finished.
    let (status, took) = exit.expect("the service exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(
        took < Duration::from_secs(10),
        "drained within SHUTDOWN_GRACE: {took:?}"
    );
    assert!(
        service.log_has("stop signal") && service.log_has("token-vendor stopped"),
        "the drain is logged"
    );
    let mut attempts = Vec::new();
    for c in clients {
        let mine = c.await.expect("client task");
        // Every client ends refused: new connections stop, cleanly.
        assert!(
            matches!(mine.last().map(|a| &a.ending), Some(Ending::Refused)),
            "a client's last attempt: {:?}",
            mine.last().map(|a| &a.ending)
        );
        attempts.extend(mine);
    }
    let broken: Vec<_> = attempts
        .iter()
        .filter_map(|a| match &a.ending {
            Ending::Broken(e) => Some((a.started_ms, e)),
            _ => None,
        })
        .collect();
    assert!(
        broken.is_empty(),
        "requests cut or reset (SIGTERM at {sigterm_ms} ms): {broken:?}"
    );
    let in_flight: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started_ms < sigterm_ms && !matches!(a.ending, Ending::Refused))
        .collect();
    let answered_ok = |a: &&Attempt| matches!(a.ending, Ending::Answered { status: 200, .. });
    assert!(
        in_flight.iter().all(answered_ok),
        "every vend accepted before SIGTERM got its token"
    );
    let issued: Vec<(&String, &String)> = attempts
        .iter()
        .filter_map(|a| match &a.ending {
            Ending::Answered {
                request_id,
                status: 200,
                token: Some(token),
            } => Some((request_id, token)),
            _ => None,
        })
        .collect();
    assert!(
        issued.len() >= 24,
        "two rounds of 12 vends at least: {}",
        issued.len()
    );
    let stored = stored_events(&setup.db_url).await;
    let fingerprints = Fingerprinter::new(setup.audit_key.clone().into());
    let missing: Vec<_> = issued
        .iter()
        .filter(|(id, token)| {
            let want = fingerprints.fingerprint(token);
            !matches!(stored.get(*id), Some((o, Some(fp))) if o == "issued" && *fp == want)
        })
        .map(|(id, _)| id)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} handed-out tokens have no committed event: {missing:?}",
        missing.len(),
        issued.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_vend_that_outlasts_shutdown_grace_and_still_exits_0() {
    let _turn = crate::shared_turn().await;
    // Arrange: Corti auth takes 6 s; the grace is 1 s.
    let setup = setup(Duration::from_secs(6), "1s").await;
    let mut service = ServeProcess::start(&setup.env);
    let clients = load(&setup, &service.address, 1, Instant::now());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Act
    service.sigterm();
    let exit = tokio::task::block_in_place(|| service.wait_exit(Duration::from_secs(10)));

    // Assert: out after the grace, not after the upstream; the cut vend got no token.
    let (status, took) = exit.expect("the service exits after SIGTERM");
    assert!(status.success(), "exit status: {status:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stopped after about SHUTDOWN_GRACE: {took:?}"
    );
    let attempts = clients
        .into_iter()
        .next()
        .expect("one client")
        .await
        .expect("client");
    assert!(
        attempts
            .iter()
            .all(|a| !matches!(a.ending, Ending::Answered { status: 200, .. })),
        "no token from a vend cut at shutdown"
    );
    let stored = stored_events(&setup.db_url).await;
    assert!(
        stored.values().all(|(outcome, _)| outcome != "issued"),
        "nothing issued: {stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_a_warning_naming_the_setting_a_mistyped_variable_is_closest_to() {
    let _turn = crate::shared_turn().await;
    // Arrange: a complete configuration plus a mistyped relay limit.
    let dir = std::env::temp_dir().join(format!("tv-start-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = [
        ("CORTI_ENVIRONMENT", "eu".to_owned()),
        ("CORTI_CLIENT_ID", "client".to_owned()),
        ("CORTI_CLIENT_SECRET", format!("fake-{}", random_hex(8))),
        ("SESSION_JWT_SECRET", random_hex(32)),
        ("AUDIT_HMAC_KEY", random_hex(16)),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("audit.db").display()),
        ),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("RELAY_MAX_STREAM", "3".to_owned()),
    ];

    // Act
    let service = ServeProcess::start(&env);

    // Assert: it runs, and says what it ignored.
    assert!(
        service.log_has("unknown variable RELAY_MAX_STREAM; did you mean RELAY_MAX_STREAMS?"),
        "no warning in the start-up log"
    );
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
}
