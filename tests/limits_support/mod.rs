//! Spawns the service on port 0 for the limits, reuse, upstream and Redis tests, with
//! an in-memory audit trail and either the dev stand-in or a wiremock upstream.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use serde_json::{json, Value};
use token_vendor::audit::{AuditError, AuditEvent, AuditStore};
use token_vendor::config::{ServeSettings, Sources};
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::{mint_session, random_hex};
use token_vendor::startup::{Application, Options};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const TOKEN_PATH: &str = "/realms/base/protocol/openid-connect/token";

/// Audit events kept in memory.
#[derive(Default)]
pub struct Events(Mutex<Vec<AuditEvent>>);

impl Events {
    pub fn all(&self) -> Vec<AuditEvent> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl AuditStore for Events {
    fn record<'a>(&'a self, event: &'a AuditEvent) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            self.0
                .lock()
                .map_err(|_| AuditError::Unavailable("poisoned".into()))?
                .push(event.clone());
            Ok(())
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// Where the service gets its Corti tokens.
pub enum Upstream {
    /// The dev stand-in, issuing tokens that live this long.
    StandIn(Duration),
    /// A wiremock server the test programs.
    Mock,
}

/// Secrets two instances must share to accept the same sessions.
#[derive(Clone)]
pub struct Secrets {
    pub session: String,
    pub client: String,
    pub audit: String,
}

impl Secrets {
    pub fn fresh() -> Self {
        Self {
            session: format!("fake-session-secret-{}", random_hex(24)),
            client: format!("fake-client-secret-{}", random_hex(12)),
            audit: format!("fake-audit-key-{}", random_hex(16)),
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub secrets: Secrets,
    pub events: Arc<Events>,
    pub standin: Option<AuthStandIn>,
    pub mock: Option<MockServer>,
}

/// Spawns an app with the given settings (as environment variables) on top of the
/// test defaults: generous limits, so a test tightens only the one it is about.
pub async fn spawn(upstream: Upstream, env: &[(&str, &str)]) -> TestApp {
    spawn_sharing(upstream, env, Secrets::fresh(), None).await
}

/// Like [`spawn`], with given secrets and, optionally, an existing upstream URL.
pub async fn spawn_sharing(
    upstream: Upstream,
    env: &[(&str, &str)],
    secrets: Secrets,
    upstream_url: Option<String>,
) -> TestApp {
    let (auth_url, standin, mock) = match (upstream, upstream_url) {
        (_, Some(url)) => (url, None, None),
        (Upstream::StandIn(lifetime), None) => {
            let standin = AuthStandIn::start(StandInConfig {
                client_id: "test-client".into(),
                client_secret: secrets.client.clone(),
                token_lifetime: lifetime,
            })
            .expect("stand-in starts");
            (standin.base_url().to_owned(), Some(standin), None)
        }
        (Upstream::Mock, None) => {
            let mock = MockServer::start().await;
            (mock.uri(), None, Some(mock))
        }
    };
    let mut pairs: Vec<(String, String)> = vec![
        ("LISTEN_ADDR".into(), "127.0.0.1:0".into()),
        ("CORTI_ENVIRONMENT".into(), "eu".into()),
        ("CORTI_AUTH_URL".into(), auth_url),
        ("CORTI_CLIENT_ID".into(), "test-client".into()),
        ("CORTI_CLIENT_SECRET".into(), secrets.client.clone()),
        ("SESSION_JWT_SECRET".into(), secrets.session.clone()),
        ("AUDIT_HMAC_KEY".into(), secrets.audit.clone()),
        ("UPSTREAM_TIMEOUT".into(), "2s".into()),
        ("RATE_LIMIT_PER_IP".into(), "100000/second".into()),
        ("RATE_LIMIT_PER_USER".into(), "100000/second".into()),
        ("UPSTREAM_RATE_LIMIT".into(), "100000/second".into()),
    ];
    for (k, v) in env {
        pairs.retain(|(key, _)| key != k);
        pairs.push(((*k).to_owned(), (*v).to_owned()));
    }
    let settings = ServeSettings::load(&Sources::from_pairs(pairs)).expect("settings load");
    let events = Arc::new(Events::default());
    let app = Application::build_with(
        settings,
        Options {
            audit_store: Some(events.clone()),
            ..Options::default()
        },
    )
    .await
    .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client"),
        secrets,
        events,
        standin,
        mock,
    }
}

impl TestApp {
    /// A valid session JWT for `subject`.
    pub fn session(&self, subject: &str) -> String {
        mint_session(
            &SecretString::from(self.secrets.session.clone()),
            subject,
            &[],
            Duration::from_secs(600),
        )
        .expect("session signs")
    }

    /// `POST /v1/tokens` for `transcribe` with a bearer session.
    pub async fn vend(&self, session: &str) -> reqwest::Response {
        self.vend_with(session, &[]).await
    }

    pub async fn vend_with(&self, session: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/tokens", self.address))
            .bearer_auth(session)
            .json(&json!({"scope": "transcribe"}));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.expect("request sent")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics body")
    }

    /// One metric's value (first sample whose line starts with `name`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Token requests the mock upstream received.
    pub async fn mock_token_calls(&self) -> usize {
        let mock = self.mock.as_ref().expect("mock upstream");
        mock.received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == TOKEN_PATH)
            .count()
    }
}

/// A Keycloak-like token response for `transcribe` with an opaque token.
pub fn token_response(lifetime: i64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": format!("opaque-{}", random_hex(16)),
        "expires_in": lifetime,
        "token_type": "Bearer",
        "scope": "openid transcribe",
    }))
}

/// Makes the mock answer every token request with `response`.
pub async fn answer_tokens(mock: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(response)
        .mount(mock)
        .await;
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

pub async fn json_body(response: reqwest::Response) -> Value {
    response.json().await.expect("json body")
}

/// A resource a test needs from the environment: fail under CI, else skip.
pub fn required_or_skip(what: &str, value: Option<String>) -> Option<String> {
    match value {
        Some(v) if !v.trim().is_empty() => Some(v),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{what} is required when CI=true")
        }
        _ => {
            eprintln!("skipping: {what} is not available (it is required under CI=true)");
            None
        }
    }
}

pub fn unique_user() -> String {
    format!("user-{}", random_hex(6))
}
