//! The one test support: spawns the service on port 0 through [`TestApp::builder`],
//! signs sessions, keeps audit events in memory or in a real database of the test's
//! own, and says when a test needs a real PostgreSQL or Redis.
//!
//! The builder starts from the service's own defaults (limits and reuse on, in-memory
//! audit store, the dev stand-in as upstream, no browser origin); a test states what it
//! changes: `.limits(Limits::Off)`, `.reuse(Reuse::Off)`, `.store(Store::db(&db))`, …
//! The only test-wide choices are fresh fake secrets, tenant `base` and a 2 s upstream
//! timeout.

#![allow(dead_code)]

pub mod blackbox;
pub mod introspection;
pub mod own_redis;
pub mod serve_process;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Output;
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
use sqlx::{AnyPool, Executor};
use token_vendor::audit::flood::FloodGuard;
use token_vendor::audit::{AuditError, AuditEvent, AuditStore, Fingerprinter, Outcome};
use token_vendor::config::{ServeSettings, Sources};
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;
use token_vendor::lifecycle::Draining;
use token_vendor::startup::{Application, Options};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const TENANT: &str = "base";
pub const TOKEN_PATH: &str = "/realms/base/protocol/openid-connect/token";
pub const CERTS_PATH: &str = "/realms/base/protocol/openid-connect/certs";
pub const APP_ORIGIN: &str = "https://app.example.test";
pub const READER_ROLE: &str = "token-vendor:audit-reader";
pub const USER_AGENT: &str = "token-vendor-tests/1";

// ---------------------------------------------------------------------------
// Real services
// ---------------------------------------------------------------------------

/// Something a test needs from the machine (a real PostgreSQL or Redis, a program on
/// `PATH`): `None`, with a visible message, outside CI; a failure under `CI=true`.
pub fn required_or_skip(what: &str, value: Option<String>) -> Option<String> {
    match value {
        Some(v) if !v.trim().is_empty() => Some(v),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{what} is required when CI=true")
        }
        _ => {
            // Straight to stderr: libtest captures `eprintln!` of passing tests, and a
            // skip must never read as a pass.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED ({}): {what} is not available; it is required under CI=true \
                 (run `eval \"$(scripts/services-up.sh)\"` for PostgreSQL and Redis)",
                std::thread::current().name().unwrap_or("a test")
            );
            None
        }
    }
}

/// A real service named by the environment variable holding its URL. When the variable
/// is unset but the server's binaries are on this machine, a throwaway server is
/// started (once per test binary; the scripts reuse one that already runs).
pub fn real_service(var: &str) -> Option<String> {
    let set = std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    let value = set.or_else(|| started_services().get(var).cloned());
    required_or_skip(var, value)
}

/// The throwaway PostgreSQL and Redis this process started with `scripts/`, by the
/// variable `scripts/services-up.sh` would have set.
fn started_services() -> &'static std::collections::HashMap<String, String> {
    static STARTED: std::sync::OnceLock<std::collections::HashMap<String, String>> =
        std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
        let mut started = std::collections::HashMap::new();
        let postgres_here =
            std::path::Path::new("/usr/lib/postgresql").is_dir() || on_path("pg_ctl");
        let wanted = [
            ("TEST_DATABASE_URL", "pg-start.sh", postgres_here),
            ("TEST_REDIS_URL", "redis-start.sh", on_path("redis-server")),
        ];
        for (var, script, available) in wanted {
            if !available || std::env::var(var).is_ok_and(|v| !v.trim().is_empty()) {
                continue;
            }
            let out = std::process::Command::new(format!("{scripts}/{script}"))
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    let url = String::from_utf8_lossy(&o.stdout);
                    if let Some(url) = url.lines().last().filter(|l| l.contains("://")) {
                        let _ = writeln!(
                            std::io::stderr(),
                            "started a throwaway server for {var} with scripts/{script}"
                        );
                        started.insert(var.to_owned(), url.trim().to_owned());
                    }
                }
                _ => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "could not start a throwaway server with scripts/{script}"
                    );
                }
            }
        }
        started
    })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// `TEST_DATABASE_URL`, the PostgreSQL the audit cases run against.
pub fn postgres_admin_url() -> Option<String> {
    real_service("TEST_DATABASE_URL")
}

/// `TEST_REDIS_URL`, the Redis shared limits run against.
pub fn redis_url() -> Option<String> {
    real_service("TEST_REDIS_URL")
}

// ---------------------------------------------------------------------------
// Audit stores
// ---------------------------------------------------------------------------

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

/// Runs an async test case once per backend: `both_backends!(case_fn);`.
#[macro_export]
macro_rules! both_backends {
    ($case:ident) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case($crate::support::Backend::Postgres).await
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database used by one test only.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    dir: Option<PathBuf>,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// A fresh, empty database, or `None` when PostgreSQL is not configured outside CI.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("tv-audit-test-{}", random_hex(8)));
                std::fs::create_dir_all(&dir).expect("temp dir");
                Some(Self {
                    backend,
                    url: format!("sqlite://{}", dir.join("audit.db").display()),
                    dir: Some(dir),
                    pg: None,
                })
            }
            Backend::Postgres => {
                let admin = postgres_admin_url()?;
                let name = format!("tv_audit_{}", random_hex(8));
                let pool = any_pool(&admin).await;
                // Concurrent CREATE DATABASE can collide on the template; retry.
                let mut attempt = 0;
                loop {
                    match pool
                        .execute(format!("CREATE DATABASE {name}").as_str())
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if attempt < 10 => {
                            attempt += 1;
                            eprintln!("CREATE DATABASE retry {attempt}: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => {
                            panic!("create a scratch database (the role needs CREATEDB): {e}")
                        }
                    }
                }
                pool.close().await;
                let url = with_database(&admin, &name);
                Some(Self {
                    backend,
                    url,
                    dir: None,
                    pg: Some((admin, name)),
                })
            }
        }
    }

    /// A direct connection, for tampering with rows as an attacker would.
    pub async fn raw(&self) -> AnyPool {
        any_pool(&self.url).await
    }

    /// Removes the database; call at the end of a test.
    pub async fn cleanup(self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin, name)) = &self.pg {
            if let Ok(pool) = AnyPool::connect(admin).await {
                let _ = pool
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
                pool.close().await;
            }
        }
    }
}

pub async fn any_pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to the test database: {e}"))
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let slash = base.rfind('/').expect("database URL has a path");
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

// ---------------------------------------------------------------------------
// Keys and sessions
// ---------------------------------------------------------------------------

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

/// Signs the app's HS256 session JWTs, as its sign-in would.
#[derive(Clone)]
pub struct SessionSigner {
    secret: String,
}

impl SessionSigner {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
        }
    }

    /// Exactly these claims (nothing added: a test may leave out `exp`).
    pub fn sign(&self, claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("sign session")
    }

    /// A valid session for `sub` (session id `sid-1`, ten minutes left).
    pub fn session(&self, sub: &str) -> String {
        self.sign(&json!({"sub": sub, "sid": "sid-1", "exp": now() + 600}))
    }

    /// A valid session for `sub` with these `roles` (session id `sid-{sub}`).
    pub fn session_with_roles(&self, sub: &str, roles: &[&str]) -> String {
        self.sign(&json!({
            "sub": sub, "sid": format!("sid-{sub}"), "roles": roles, "exp": now() + 600,
        }))
    }
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
            audit: audit_key().to_owned(),
        }
    }
}

/// The `AUDIT_HMAC_KEY` of every service in this test process (fake, made per run):
/// the audit chains are keyed with it, and `audit verify` needs the key they were
/// written with.
pub fn audit_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| format!("fake-audit-key-{}", random_hex(16)))
}

// ---------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------

/// Where the service gets its Corti tokens.
pub enum Upstream {
    /// The dev stand-in, issuing tokens that live this long.
    StandIn(Duration),
    /// A wiremock server the test programs (it publishes the realm key at its certs path).
    Mock,
    /// An upstream somebody else runs (another instance's, or an address that refuses).
    Url(String),
}

impl Upstream {
    /// The stand-in with Corti's own token lifetime.
    pub fn stand_in() -> Self {
        Upstream::StandIn(Duration::from_secs(300))
    }
}

/// The rate limits the service runs with.
pub enum Limits {
    /// The service's defaults (or what the test sets with `.env`).
    Service,
    /// So generous that no test traffic meets them.
    Off,
}

/// Live-token reuse.
pub enum Reuse {
    /// The service's default `TOKEN_REUSE_MIN_TTL`: a live token is handed again.
    Service,
    /// Every vend goes upstream.
    Off,
}

/// Where audit events go.
pub enum Store {
    /// [`RecordingStore`], read through `app.audit`.
    Memory,
    /// The real SQL store on this database, read through the HTTP API or the CLI.
    Db(String),
}

impl Store {
    pub fn db(db: &TestDb) -> Self {
        Store::Db(db.url.clone())
    }
}

pub struct TestAppBuilder {
    store: Store,
    limits: Limits,
    reuse: Reuse,
    upstream: Upstream,
    origins: Vec<String>,
    secrets: Option<Secrets>,
    flood: Option<FloodGuard>,
    env: Vec<(String, String)>,
    toml: Option<String>,
    env_tenant: bool,
}

impl TestAppBuilder {
    /// A `--config` TOML text (e.g. `[[tenants]]` tables); the environment wins over it.
    pub fn toml(mut self, text: impl Into<String>) -> Self {
        self.toml = Some(text.into());
        self
    }

    /// No `CORTI_*` settings: the tenants come from [`TestAppBuilder::toml`] only.
    pub fn without_env_tenant(mut self) -> Self {
        self.env_tenant = false;
        self
    }

    pub fn store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn reuse(mut self, reuse: Reuse) -> Self {
        self.reuse = reuse;
        self
    }

    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstream = upstream;
        self
    }

    /// A browser origin allowed to call the API (`ALLOWED_ORIGINS`).
    pub fn allowed_origin(mut self, origin: &str) -> Self {
        self.origins.push(origin.to_owned());
        self
    }

    /// Secrets shared with another instance (default: fresh ones).
    pub fn secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// How repeated refusals are aggregated (default: the service's).
    pub fn flood(mut self, flood: FloodGuard) -> Self {
        self.flood = Some(flood);
        self
    }

    /// One setting, as an environment variable; it wins over everything above.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Several settings, as [`TestAppBuilder::env`].
    pub fn envs<I, K, V>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(pairs.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    pub async fn spawn(self) -> TestApp {
        let secrets = self.secrets.unwrap_or_else(Secrets::fresh);
        let upstream_key = Arc::new(TestKey::generate());
        let (auth_url, standin, mock) = match self.upstream {
            Upstream::Url(url) => (url, None, None),
            Upstream::StandIn(lifetime) => {
                let standin = AuthStandIn::start(StandInConfig {
                    client_id: "test-client".into(),
                    client_secret: secrets.client.clone(),
                    token_lifetime: lifetime,
                })
                .expect("stand-in starts");
                (standin.base_url().to_owned(), Some(standin), None)
            }
            Upstream::Mock => {
                let mock = MockServer::start().await;
                Mock::given(method("GET"))
                    .and(path(CERTS_PATH))
                    .respond_with(
                        ResponseTemplate::new(200)
                            .set_body_json(json!({"keys": [upstream_key.jwk]})),
                    )
                    .mount(&mock)
                    .await;
                (mock.uri(), None, Some(mock))
            }
        };
        let mut env: Vec<(String, String)> = [
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("CORTI_ENVIRONMENT", "eu".to_owned()),
            ("CORTI_TENANT", TENANT.to_owned()),
            ("CORTI_AUTH_URL", auth_url),
            ("CORTI_CLIENT_ID", "test-client".to_owned()),
            ("CORTI_CLIENT_SECRET", secrets.client.clone()),
            ("SESSION_JWT_SECRET", secrets.session.clone()),
            ("AUDIT_HMAC_KEY", secrets.audit.clone()),
            ("UPSTREAM_TIMEOUT", "2s".to_owned()),
            ("ALLOWED_ORIGINS", self.origins.join(",")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Limits::Off = self.limits {
            for name in [
                "RATE_LIMIT_PER_IP",
                "RATE_LIMIT_PER_USER",
                "UPSTREAM_RATE_LIMIT",
            ] {
                env.push((name.into(), "100000/second".into()));
            }
        }
        if let Reuse::Off = self.reuse {
            env.push(("TOKEN_REUSE_MIN_TTL".into(), "0".into()));
        }
        let audit = Arc::new(RecordingStore::default());
        let (audit_store, db_url): (Option<Arc<dyn AuditStore>>, _) = match self.store {
            Store::Memory => (Some(audit.clone()), None),
            Store::Db(url) => {
                env.push(("DATABASE_URL".into(), url.clone()));
                (None, Some(url))
            }
        };
        if !self.env_tenant {
            env.retain(|(k, _)| !k.starts_with("CORTI_"));
        }
        for (k, v) in self.env {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        let sources = match &self.toml {
            Some(text) => Sources::from_pairs_and_toml(env, text).expect("test TOML is valid"),
            None => Sources::from_pairs(env),
        };
        let settings = ServeSettings::load(&sources).expect("test settings are valid");
        let app = Application::build_with(
            settings,
            Options {
                audit_store,
                audit_flood: self.flood,
                ..Options::default()
            },
        )
        .await
        .expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let draining = app.state().draining.clone();
        let reloader = app.state().reloader.clone();
        let auditor = app.state().auditor.clone();
        let relay = app.state().relay.clone();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(64)
                .user_agent(USER_AGENT)
                .build()
                .expect("client"),
            signer: SessionSigner::new(&secrets.session),
            secrets,
            audit,
            db_url,
            standin,
            mock,
            upstream_key,
            draining,
            auditor,
            reloader,
            relay,
        }
    }
}

/// The service under test.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub secrets: Secrets,
    pub signer: SessionSigner,
    /// The in-memory audit store (empty unless the app was built with [`Store::Memory`]).
    pub audit: Arc<RecordingStore>,
    /// The database of a [`Store::Db`] app.
    pub db_url: Option<String>,
    pub standin: Option<AuthStandIn>,
    pub mock: Option<MockServer>,
    /// Key the mock upstream signs its tokens with (published at its certs path).
    pub upstream_key: Arc<TestKey>,
    /// What SIGTERM sets first; a test sets it to see the service as it drains.
    pub draining: Draining,
    /// The service's auditor, e.g. to write a checkpoint now.
    pub auditor: token_vendor::audit::Auditor,
    /// What SIGHUP runs: `reloader.reload_all()` re-reads every `_FILE` secret.
    pub reloader: token_vendor::reload::Reloader,
    /// Relay mode's streams; what SIGTERM drains.
    pub relay: Arc<token_vendor::relay::Relay>,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            store: Store::Memory,
            limits: Limits::Service,
            reuse: Reuse::Service,
            upstream: Upstream::stand_in(),
            origins: Vec::new(),
            secrets: None,
            flood: None,
            env: Vec::new(),
            toml: None,
            env_tenant: true,
        }
    }

    // -- sessions ----------------------------------------------------------

    /// A valid session for `sub`.
    pub fn session(&self, sub: &str) -> String {
        self.signer.session(sub)
    }

    /// A session JWT with exactly these claims.
    pub fn session_with(&self, claims: Value) -> String {
        self.signer.sign(&claims)
    }

    pub fn session_with_roles(&self, sub: &str, roles: &[&str]) -> String {
        self.signer.session_with_roles(sub, roles)
    }

    /// A session that may read the audit log.
    pub fn reader(&self) -> String {
        self.session_with_roles("auditor", &[READER_ROLE])
    }

    // -- POST /v1/tokens ---------------------------------------------------

    pub fn post_tokens(&self) -> reqwest::RequestBuilder {
        self.http.post(format!("{}/v1/tokens", self.address))
    }

    /// `POST /v1/tokens` with a bearer session and a JSON body.
    pub async fn vend(&self, session: &str, body: &str) -> reqwest::Response {
        self.post_tokens()
            .bearer_auth(session)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request sent")
    }

    /// `POST /v1/tokens` for `transcribe` with a bearer session.
    pub async fn vend_transcribe(&self, session: &str) -> reqwest::Response {
        self.vend_transcribe_with(session, &[]).await
    }

    pub async fn vend_transcribe_with(
        &self,
        session: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .post_tokens()
            .bearer_auth(session)
            .json(&json!({"scope": "transcribe"}));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.expect("request sent")
    }

    /// `POST /v1/tokens` with an optional bearer session, body and request id.
    pub async fn vend_request(
        &self,
        session: Option<&str>,
        body: &str,
        request_id: &str,
    ) -> reqwest::Response {
        let mut req = self
            .post_tokens()
            .header("Content-Type", "application/json")
            .header("X-Request-Id", request_id)
            .body(body.to_owned());
        if let Some(s) = session {
            req = req.bearer_auth(s);
        }
        req.send().await.expect("vend request")
    }

    /// A vend that must succeed; returns the access token.
    pub async fn vend_token(&self, user: &str) -> String {
        let response = self
            .vend_request(
                Some(&self.session_with_roles(user, &[])),
                r#"{"scope":"transcribe"}"#,
                &new_request_id(),
            )
            .await;
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.expect("token body");
        body["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_owned()
    }

    // -- the upstream ------------------------------------------------------

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
        answer_tokens(self.mock(), response).await;
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

    // -- the audit trail ---------------------------------------------------

    /// The single in-memory audit event of the attempt with this request id.
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

    /// `GET /v1/audit/events?{query}` with `session`.
    pub async fn get_events(&self, session: Option<&str>, query: &str) -> reqwest::Response {
        let mut req = self
            .http
            .get(format!("{}/v1/audit/events?{query}", self.address));
        if let Some(s) = session {
            req = req.bearer_auth(s);
        }
        req.send().await.expect("audit request")
    }

    /// One page of stored events as a reader; panics unless 200.
    pub async fn events(&self, query: &str) -> (Vec<Value>, Option<String>) {
        let response = self.get_events(Some(&self.reader()), query).await;
        assert_eq!(response.status().as_u16(), 200, "audit query {query:?}");
        let body: Value = response.json().await.expect("json");
        let events = body["events"].as_array().expect("events array").clone();
        let next = body["next_cursor"].as_str().map(str::to_owned);
        (events, next)
    }

    /// Every stored event, following cursors.
    pub async fn all_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("limit=1000&cursor={c}"),
                None => "limit=1000".into(),
            };
            let (events, next) = self.events(&q).await;
            out.extend(events);
            match next {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    }

    /// The stored events of the attempt with this request id.
    pub async fn events_for(&self, request_id: &str) -> Vec<Value> {
        self.all_events()
            .await
            .into_iter()
            .filter(|e| e["request_id"] == request_id)
            .collect()
    }

    pub fn fingerprint(&self, token: &str) -> String {
        Fingerprinter::new(self.secrets.audit.clone().into()).fingerprint(token)
    }

    // -- operations --------------------------------------------------------

    /// `GET /readyz` status.
    pub async fn readyz(&self) -> u16 {
        self.http
            .get(format!("{}/readyz", self.address))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16()
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
}

/// A Corti tenant of its own for multi-tenant tests: a Keycloak-shaped stand-in (its
/// token and certs URLs are per realm, and its tokens name the realm in `iss`) that
/// knows only this tenant's client id and secret.
pub struct TenantUpstream {
    pub name: String,
    pub environment: &'static str,
    pub client_id: String,
    pub secret: String,
    pub standin: AuthStandIn,
}

impl TenantUpstream {
    /// Needs a Tokio runtime (the stand-in serves on it).
    pub fn start(name: &str, environment: &'static str) -> Self {
        let client_id = format!("{name}-client-{}", random_hex(4));
        let secret = format!("fake-{name}-secret-{}", random_hex(12));
        let standin = AuthStandIn::start(StandInConfig {
            client_id: client_id.clone(),
            client_secret: secret.clone(),
            token_lifetime: Duration::from_secs(300),
        })
        .expect("stand-in starts");
        Self {
            name: name.to_owned(),
            environment,
            client_id,
            secret,
            standin,
        }
    }

    /// Its `[[tenants]]` table with the secret inline.
    pub fn toml(&self) -> String {
        self.toml_with(&format!("client_secret = \"{}\"", self.secret))
    }

    /// Its `[[tenants]]` table with the secret read from `path`.
    pub fn toml_with_secret_file(&self, path: &std::path::Path) -> String {
        self.toml_with(&format!("client_secret_file = \"{}\"", path.display()))
    }

    fn toml_with(&self, secret_line: &str) -> String {
        format!(
            "[[tenants]]\nname = \"{}\"\nenvironment = \"{}\"\nclient_id = \"{}\"\n{secret_line}\nauth_url = \"{}\"\n\n",
            self.name,
            self.environment,
            self.client_id,
            self.standin.base_url()
        )
    }

    /// Whether `token` was issued by this tenant's realm to this tenant's client.
    pub fn issued(&self, token: &str) -> bool {
        self.standin.verify(token).is_some_and(|claims| {
            claims.iss.ends_with(&format!("/realms/{}", self.name)) && claims.azp == self.client_id
        })
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

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

/// Reads a response as problem+json, checking the shape every error must have.
pub async fn problem(response: reqwest::Response, status: u16) -> (Value, String) {
    assert_eq!(response.status().as_u16(), status);
    let request_id = request_id_of(&response);
    assert_eq!(
        header(&response, "content-type"),
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
    header(response, "x-request-id")
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

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

pub async fn json_body(response: reqwest::Response) -> Value {
    response.json().await.expect("json body")
}

pub fn unique_user() -> String {
    format!("user-{}", random_hex(6))
}

pub fn new_request_id() -> String {
    format!("req-{}", random_hex(8))
}

/// Runs the CLI with only `DATABASE_URL` and `AUDIT_HMAC_KEY` (and `extra`) set.
pub fn cli(db_url: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_token-vendor"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("AUDIT_HMAC_KEY", audit_key());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("run token-vendor")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `check` every 100 ms until it is true or `within` has passed.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
