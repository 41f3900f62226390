//! Test rig for the audit log: a fresh database per test (a SQLite file in its own
//! directory, or a new PostgreSQL database created through `TEST_DATABASE_URL`), the
//! service on port 0 against the Corti auth stand-in, and the CLI binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sqlx::{AnyPool, Executor};
use token_vendor::audit::flood::FloodGuard;
use token_vendor::audit::Fingerprinter;
use token_vendor::config::{Settings, Sources};
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;
use token_vendor::startup::{Application, Options};

pub const READER_ROLE: &str = "token-vendor:audit-reader";
pub const USER_AGENT: &str = "audit-tests/1";

/// Runs an async test case once per backend: `both_backends!(case_fn);`.
#[macro_export]
macro_rules! both_backends {
    ($case:ident) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case($crate::helpers::Backend::Postgres).await
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

/// `TEST_DATABASE_URL`; a missing one fails under `CI=true` and skips otherwise.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("TEST_DATABASE_URL is not set, but CI=true: PostgreSQL tests must run in CI")
        }
        _ => {
            eprintln!("skipping the PostgreSQL case: TEST_DATABASE_URL is not set (run `eval \"$(scripts/services-up.sh)\"`)");
            None
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

/// The service under test.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub db_url: String,
    pub session_secret: String,
    pub audit_key: String,
    pub standin: AuthStandIn,
    pub auditor: token_vendor::audit::Auditor,
}

/// Knobs for [`TestApp::spawn_with`].
#[derive(Default)]
pub struct AppConfig {
    pub flood: Option<FloodGuard>,
    /// Replaces the Corti auth URL (e.g. an address that refuses connections).
    pub auth_url: Option<String>,
    pub env: Vec<(&'static str, String)>,
}

impl TestApp {
    pub async fn spawn(db: &TestDb) -> Self {
        Self::spawn_with(db, AppConfig::default()).await
    }

    pub async fn spawn_with(db: &TestDb, config: AppConfig) -> Self {
        let client_secret = format!("fake-client-secret-{}", random_hex(12));
        let session_secret = format!("fake-session-secret-{}", random_hex(24));
        let audit_key = audit_key().to_owned();
        let standin = AuthStandIn::start(StandInConfig {
            client_id: "test-client".into(),
            client_secret: client_secret.clone(),
            token_lifetime: Duration::from_secs(300),
        })
        .expect("stand-in starts");
        let mut env: Vec<(&str, String)> = vec![
            ("LISTEN_ADDR", "127.0.0.1:0".into()),
            ("CORTI_ENVIRONMENT", "eu".into()),
            (
                "CORTI_AUTH_URL",
                config
                    .auth_url
                    .clone()
                    .unwrap_or_else(|| standin.base_url().to_owned()),
            ),
            ("CORTI_CLIENT_ID", "test-client".into()),
            ("CORTI_CLIENT_SECRET", client_secret),
            ("SESSION_JWT_SECRET", session_secret.clone()),
            ("AUDIT_HMAC_KEY", audit_key.clone()),
            ("DATABASE_URL", db.url.clone()),
            ("UPSTREAM_TIMEOUT", "2s".into()),
            // Limits and reuse have tests of their own; here every vend goes upstream.
            ("RATE_LIMIT_PER_USER", "100000/second".into()),
            ("RATE_LIMIT_PER_IP", "100000/second".into()),
            ("UPSTREAM_RATE_LIMIT", "100000/second".into()),
            ("TOKEN_REUSE_MIN_TTL", "0".into()),
        ];
        for (k, v) in config.env {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        let settings = Settings::load(&Sources::from_pairs(env)).expect("valid test settings");
        let app = Application::build_with(
            settings,
            Options {
                audit_flood: config.flood,
                ..Options::default()
            },
        )
        .await
        .expect("app builds with the real audit store");
        let address = format!("http://127.0.0.1:{}", app.port());
        let auditor = app.state().auditor.clone();
        tokio::spawn(app.run_until_stopped());
        Self {
            address,
            http: reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .build()
                .expect("client"),
            db_url: db.url.clone(),
            session_secret,
            audit_key,
            standin,
            auditor,
        }
    }

    /// A session JWT for `sub` with `roles` and any extra claims.
    pub fn session(&self, sub: &str, roles: &[&str]) -> String {
        self.session_with(json!({"sub": sub, "sid": format!("sid-{sub}"), "roles": roles}))
    }

    pub fn session_with(&self, mut claims: Value) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        claims["exp"] = json!(now + 600);
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.session_secret.as_bytes()),
        )
        .expect("sign session")
    }

    pub fn reader(&self) -> String {
        self.session("auditor", &[READER_ROLE])
    }

    /// `POST /v1/tokens` with an optional bearer session, body and request id.
    pub async fn vend(
        &self,
        session: Option<&str>,
        body: &str,
        request_id: &str,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/v1/tokens", self.address))
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
            .vend(
                Some(&self.session(user, &[])),
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

    /// One page of events as a reader; panics unless 200.
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

    /// The events of the attempt with this request id.
    pub async fn events_for(&self, request_id: &str) -> Vec<Value> {
        self.all_events()
            .await
            .into_iter()
            .filter(|e| e["request_id"] == request_id)
            .collect()
    }

    pub fn fingerprint(&self, token: &str) -> String {
        Fingerprinter::new(self.audit_key.clone().into()).fingerprint(token)
    }

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
}

pub fn new_request_id() -> String {
    format!("req-{}", random_hex(8))
}

/// The `AUDIT_HMAC_KEY` of every service in this test process (fake, made per run):
/// `audit verify` needs the key the chains were written with.
pub fn audit_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| format!("fake-audit-key-{}", random_hex(16)))
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
