//! A real RFC 7662 introspection endpoint: `oidc-provider` from npm, run by
//! `tests/introspection/server.mjs` on a free loopback port and killed when dropped.
//! Its `/test/*` routes mint opaque access tokens for a user, count introspection calls
//! and slow them down; revocation goes through the provider's own RFC 7009 endpoint.
//!
//! Needs `node` on `PATH` and `npm ci` done in `tests/introspection` (done here once
//! when missing); without them a test is SKIPPED visibly, and fails under `CI=true`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use token_vendor::dev::random_hex;

use super::required_or_skip;

const INTROSPECTION_PATH: &str = "/token/introspection";
const APP_CLIENT_ID: &str = "demo-app";

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/introspection")
}

/// `node` runs and the folder's packages are installed (installing them once when not).
fn node_ready() -> Result<(), String> {
    static READY: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let node = Command::new("node").arg("--version").output();
            if !node.is_ok_and(|o| o.status.success()) {
                return Err("`node` on PATH".into());
            }
            if folder().join("node_modules/oidc-provider").is_dir() {
                return Ok(());
            }
            let npm = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(folder())
                .output();
            match npm {
                Ok(o) if o.status.success() => Ok(()),
                _ => Err("`npm ci` in tests/introspection (oidc-provider)".into()),
            }
        })
        .clone()
}

/// One running `oidc-provider`, with the client token-vendor introspects with.
pub struct IntrospectionServer {
    child: Option<Child>,
    port: u16,
    pub client_id: String,
    pub client_secret: String,
    app_secret: String,
    http: reqwest::Client,
}

impl IntrospectionServer {
    /// Starts one on a free port; `None` (after a visible SKIPPED line) without node.
    pub fn start() -> Option<Self> {
        if let Err(what) = node_ready() {
            required_or_skip(&what, None)?;
        }
        let mut server = Self {
            child: None,
            port: 0,
            client_id: "token-vendor".into(),
            // Characters RFC 6749 §2.3.1 makes the client encode before HTTP Basic.
            client_secret: format!("fake-introspection-secret+/: {}", random_hex(12)),
            app_secret: format!("fake-app-secret-{}", random_hex(12)),
            http: reqwest::Client::new(),
        };
        server.spawn(0);
        Some(server)
    }

    fn spawn(&mut self, port: u16) {
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(folder())
            .env("PORT", port.to_string())
            .env("INTROSPECTION_CLIENT_ID", &self.client_id)
            .env("INTROSPECTION_CLIENT_SECRET", &self.client_secret)
            .env("APP_CLIENT_ID", APP_CLIENT_ID)
            .env("APP_CLIENT_SECRET", &self.app_secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        // Both pipes are drained for the server's whole life, so it never blocks on them.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("LISTENING ") {
                    let _ = tx.send(port.trim().parse::<u16>().ok());
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(bound)) => {
                self.port = bound;
                self.child = Some(child);
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err_rx
                    .recv_timeout(Duration::from_secs(2))
                    .unwrap_or_default();
                panic!("the introspection server did not start:\n{stderr}");
            }
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The value for `SESSION_INTROSPECTION_URL`.
    pub fn introspection_url(&self) -> String {
        format!("{}{INTROSPECTION_PATH}", self.base())
    }

    /// The settings that make token-vendor introspect here (and not take JWTs).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SESSION_JWT_SECRET", String::new()),
            ("SESSION_INTROSPECTION_URL", self.introspection_url()),
            ("SESSION_INTROSPECTION_CLIENT_ID", self.client_id.clone()),
            // Sessions are the app's tokens (oidc-provider answers their `client_id`).
            ("SESSION_INTROSPECTION_AUDIENCE", APP_CLIENT_ID.to_owned()),
            (
                "SESSION_INTROSPECTION_CLIENT_SECRET",
                self.client_secret.clone(),
            ),
        ]
    }

    /// An opaque access token for `sub`, as the app's sign-in would get; `claims` go
    /// into its introspection answer (`roles`, `corti_scopes`).
    pub async fn token(&self, sub: Option<&str>, scope: &str, claims: Value) -> String {
        self.mint(json!({"sub": sub, "scope": scope, "claims": claims}))
            .await
    }

    /// An opaque access token for `sub` with `openid transcribe streams`.
    pub async fn session(&self, sub: &str) -> String {
        self.token(Some(sub), "openid transcribe streams", json!({}))
            .await
    }

    /// An opaque access token that expires after `seconds`.
    pub async fn session_expiring(&self, sub: &str, seconds: u64) -> String {
        self.mint(json!({"sub": sub, "scope": "openid transcribe", "expires_in": seconds}))
            .await
    }

    async fn mint(&self, body: Value) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/test/tokens", self.base()))
            .json(&body)
            .send()
            .await
            .expect("mint a token")
            .json()
            .await
            .expect("minted token");
        answer["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Revokes a token at the provider's RFC 7009 endpoint, as the app's sign-out would.
    pub async fn revoke(&self, token: &str) {
        let status = self
            .http
            .post(format!("{}/token/revocation", self.base()))
            .basic_auth(APP_CLIENT_ID, Some(&self.app_secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .expect("revoke")
            .status();
        assert!(status.is_success(), "revocation answered {status}");
    }

    /// Introspection requests received so far (by this process of the server).
    pub async fn introspections(&self) -> u64 {
        let answer: Value = self
            .http
            .get(format!("{}/test/introspections", self.base()))
            .send()
            .await
            .expect("count")
            .json()
            .await
            .expect("count body");
        answer["count"].as_u64().expect("count")
    }

    /// Holds every introspection answer back this long.
    pub async fn delay(&self, delay: Duration) {
        self.http
            .post(format!("{}/test/delay", self.base()))
            .json(&json!({"ms": delay.as_millis() as u64}))
            .send()
            .await
            .expect("set delay");
    }

    /// Kills the server (the port stays this server's to restart on).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty: tokens minted before are gone.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.spawn(port);
    }
}

impl Drop for IntrospectionServer {
    fn drop(&mut self) {
        self.stop();
    }
}
