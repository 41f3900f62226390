//! Spawns the service on port 0 with a fresh in-memory audit trail and a local
//! Keycloak-shaped upstream: the dev stand-in, or a wiremock server for misbehaviour.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::future::BoxFuture;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use token_vendor::audit::{AuditError, AuditEvent, AuditStore, Outcome};
use token_vendor::config::{ServeSettings, Sources};
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;
use token_vendor::startup::{Application, Options};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const TENANT: &str = "base";
pub const TOKEN_PATH: &str = "/realms/base/protocol/openid-connect/token";
pub const CERTS_PATH: &str = "/realms/base/protocol/openid-connect/certs";
pub const APP_ORIGIN: &str = "https://app.example.test";

/// Audit events kept in memory; can be switched to fail like a broken store.
#[derive(Default)]
pub struct RecordingStore {
    events: Mutex<Vec<AuditEvent>>,
    failing: Mutex<bool>,
}

impl RecordingStore {
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn set_failing(&self, failing: bool) {
        if let Ok(mut f) = self.failing.lock() {
            *f = failing;
        }
    }
}

impl AuditStore for RecordingStore {
    fn record<'a>(&'a self, event: &'a AuditEvent) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            if self.failing.lock().map(|f| *f).unwrap_or(true) {
                return Err(AuditError::Unavailable("test store switched off".into()));
            }
            self.events
                .lock()
                .map_err(|_| AuditError::Unavailable("poisoned".into()))?
                .push(event.clone());
            Ok(())
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { !self.failing.lock().map(|f| *f).unwrap_or(true) })
    }
}

/// An RSA key pair for signing test JWTs, with its JWK.
pub struct TestKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub public_pem: String,
    pub jwk: Value,
}

impl TestKey {
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa keygen");
        let pem = private.to_pkcs1_pem(LineEnding::LF).expect("pem");
        let public = private.to_public_key();
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .expect("public pem");
        let kid = random_hex(8);
        let jwk = json!({
            "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        Self {
            kid,
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key"),
            public_pem,
            jwk,
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.encoding).expect("sign")
    }
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims of a Keycloak client-credentials token with the given scope.
pub fn keycloak_claims(scope: &str, lifetime: i64) -> Value {
    json!({
        "exp": now() + lifetime, "iat": now(), "jti": random_hex(8),
        "iss": "http://upstream/realms/base", "aud": "account", "sub": random_hex(8),
        "typ": "Bearer", "azp": "test-client", "scope": scope,
        "preferred_username": "service-account-test-client", "client_id": "test-client",
    })
}

/// Which upstream the app talks to.
pub enum UpstreamKind {
    StandIn,
    Mock,
}

/// Knobs for one test app.
pub struct TestConfig {
    pub upstream: UpstreamKind,
    /// Extra settings as environment variables (override the defaults below).
    pub env: Vec<(String, String)>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            upstream: UpstreamKind::StandIn,
            env: Vec::new(),
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub session_secret: String,
    pub client_secret: String,
    pub audit: Arc<RecordingStore>,
    pub standin: Option<AuthStandIn>,
    pub mock: Option<MockServer>,
    /// Key the mock upstream signs its tokens with (published at its certs path).
    pub upstream_key: Arc<TestKey>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestConfig::default()).await
}

pub async fn spawn_app_with(config: TestConfig) -> TestApp {
    let client_secret = format!("fake-client-secret-{}", random_hex(12));
    let session_secret = format!("fake-session-secret-{}", random_hex(24));
    let upstream_key = Arc::new(TestKey::generate());
    let (auth_url, standin, mock) = match config.upstream {
        UpstreamKind::StandIn => {
            let standin = AuthStandIn::start(StandInConfig {
                client_id: "test-client".into(),
                client_secret: client_secret.clone(),
                token_lifetime: Duration::from_secs(300),
            })
            .expect("stand-in starts");
            (standin.base_url().to_owned(), Some(standin), None)
        }
        UpstreamKind::Mock => {
            let mock = MockServer::start().await;
            Mock::given(method("GET"))
                .and(path(CERTS_PATH))
                .respond_with(
                    ResponseTemplate::new(200).set_body_json(json!({"keys": [upstream_key.jwk]})),
                )
                .mount(&mock)
                .await;
            (mock.uri(), None, Some(mock))
        }
    };
    let mut env: Vec<(String, String)> = vec![
        ("LISTEN_ADDR".into(), "127.0.0.1:0".into()),
        ("CORTI_ENVIRONMENT".into(), "eu".into()),
        ("CORTI_TENANT".into(), TENANT.into()),
        ("CORTI_AUTH_URL".into(), auth_url),
        ("CORTI_CLIENT_ID".into(), "test-client".into()),
        ("CORTI_CLIENT_SECRET".into(), client_secret.clone()),
        ("SESSION_JWT_SECRET".into(), session_secret.clone()),
        (
            "AUDIT_HMAC_KEY".into(),
            format!("fake-audit-key-{}", random_hex(16)),
        ),
        ("ALLOWED_ORIGINS".into(), APP_ORIGIN.into()),
        ("UPSTREAM_TIMEOUT".into(), "2s".into()),
    ];
    for (k, v) in config.env {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    let settings = ServeSettings::load(&Sources::from_pairs(env)).expect("test settings are valid");
    let audit = Arc::new(RecordingStore::default());
    let app = Application::build_with(
        settings,
        Options {
            audit_store: Some(audit.clone()),
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
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        session_secret,
        client_secret,
        audit,
        standin,
        mock,
        upstream_key,
    }
}

impl TestApp {
    /// A valid HS256 session for `sub`, plus any extra claims.
    pub fn session(&self, sub: &str) -> String {
        self.session_with(json!({"sub": sub, "sid": "sid-1", "exp": now() + 600}))
    }

    pub fn session_with(&self, claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.session_secret.as_bytes()),
        )
        .expect("sign session")
    }

    /// `POST /v1/tokens` with a bearer session and a JSON body.
    pub async fn vend(&self, session: &str, body: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/tokens", self.address))
            .bearer_auth(session)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent")
    }

    pub fn post_tokens(&self) -> reqwest::RequestBuilder {
        self.http.post(format!("{}/v1/tokens", self.address))
    }

    pub fn mock(&self) -> &MockServer {
        self.mock
            .as_ref()
            .expect("this test app uses the mock upstream")
    }

    /// Token requests the upstream received.
    pub async fn upstream_token_calls(&self) -> usize {
        if let Some(s) = &self.standin {
            return s.token_calls();
        }
        self.mock()
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == TOKEN_PATH)
            .count()
    }

    /// Makes the mock upstream answer token requests with `response`.
    pub async fn upstream_answers(&self, response: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(response)
            .mount(self.mock())
            .await;
    }

    /// A well-formed Keycloak 200 with a token signed by the realm key.
    pub fn keycloak_ok(&self, field_scope: Option<&str>, claim_scope: &str) -> ResponseTemplate {
        let token = self.upstream_key.sign(&keycloak_claims(claim_scope, 300));
        let mut body = json!({
            "access_token": token, "expires_in": 300, "refresh_expires_in": 0,
            "token_type": "Bearer", "not-before-policy": 0,
        });
        if let Some(s) = field_scope {
            body["scope"] = json!(s);
        }
        ResponseTemplate::new(200).set_body_json(body)
    }

    /// The single audit event of the attempt with this request id.
    pub fn event_for(&self, request_id: &str) -> AuditEvent {
        let events: Vec<_> = self
            .audit
            .events()
            .into_iter()
            .filter(|e| e.request_id == request_id)
            .collect();
        assert_eq!(
            events.len(),
            1,
            "exactly one audit event per attempt: {events:?}"
        );
        events.into_iter().next().expect("one event")
    }
}

/// Reads a response as problem+json, checking the shape every error must have.
pub async fn problem(response: reqwest::Response, status: u16) -> (Value, String) {
    assert_eq!(response.status().as_u16(), status);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("problem body");
    for field in ["type", "title", "status", "detail", "request_id"] {
        assert!(body.get(field).is_some(), "problem lacks {field}: {body}");
    }
    assert_eq!(body["status"], status);
    assert_eq!(body["request_id"], request_id.as_str());
    (body, request_id)
}

pub fn request_id_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned()
}

pub fn assert_outcome(
    app: &TestApp,
    request_id: &str,
    outcome: Outcome,
    status: u16,
) -> AuditEvent {
    let event = app.event_for(request_id);
    assert_eq!(event.outcome, outcome, "{event:?}");
    assert_eq!(event.status, status);
    event
}
