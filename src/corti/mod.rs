//! Corti's side: the auth (Keycloak) client with its client-credentials exchange and
//! the check that a granted token is no wider than what was asked (this file); the
//! configured tenants and their credentials ([`tenants`]); the resilient upstream
//! around the exchange: timeouts, retries, breaker and budget ([`upstream`]).

pub mod environment;
pub mod tenants;
pub mod upstream;

pub use environment::Environment;
pub use environment::Tenant;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::config::read_secret_file;
use crate::scope::{GrantError, RequestedScope};
use crate::session::jwks::{JwksCache, JwksPolicy};
use crate::session::jwt::{self, JwtError, Keys, Rules};

/// Largest upstream body read; a Keycloak token response is a few KiB.
const MAX_BODY: usize = 64 * 1024;
/// Longest upstream `Retry-After` honoured.
const MAX_RETRY_AFTER_SECS: u64 = 3600;
/// Largest access token passed on.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A limited-scope token as granted and checked.
#[derive(Clone)]
pub struct GrantedToken {
    pub access_token: SecretString,
    pub expires_at: OffsetDateTime,
    /// The requested scope string (`openid …`), which is what the token was checked to carry.
    pub scope: String,
}

impl std::fmt::Debug for GrantedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantedToken")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What went wrong talking to Corti auth. Never carries the upstream body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("auth server unreachable: {0}")]
    Unreachable(String),
    #[error("auth server timed out")]
    Timeout,
    #[error("auth server refused the request with {status} ({code})")]
    Refused { status: u16, code: String },
    #[error("auth server is rate limiting us")]
    RateLimited { retry_after: Option<Duration> },
    #[error("auth server failed with {status}")]
    ServerError { status: u16 },
    #[error("auth server answered badly: {0}")]
    BadResponse(&'static str),
    #[error("granted token refused: {0}")]
    Scope(#[from] GrantError),
    #[error("auth server signing keys unavailable")]
    KeysUnavailable,
    /// The circuit breaker is open: the auth server kept failing, calls are paused.
    #[error("auth server is failing; calls are paused")]
    CircuitOpen { retry_after: Duration },
}

impl UpstreamError {
    /// Whether a retry might succeed (connection problems and 5xx). Unavailable realm
    /// keys are not retried here: a retry would mint another token for nothing.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            UpstreamError::Unreachable(_) | UpstreamError::ServerError { .. }
        )
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

#[derive(Deserialize)]
struct AccessClaims {
    #[serde(default)]
    scope: Option<String>,
    exp: i64,
}

/// The client secret as it is now: re-read from its file on change and on SIGHUP
/// (see [`crate::reload`]). A vend copies the current value out; no lock is held
/// across an await.
pub struct ClientSecret {
    value: RwLock<SecretString>,
    file: Option<PathBuf>,
    /// The setting naming the file, for log lines.
    setting: String,
}

impl ClientSecret {
    pub fn new(
        value: SecretString,
        file: Option<PathBuf>,
        setting: impl Into<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            value: RwLock::new(value),
            file,
            setting: setting.into(),
        })
    }

    /// A secret that is never re-read.
    pub fn fixed(value: SecretString) -> Arc<Self> {
        Self::new(value, None, "client secret")
    }

    pub fn current(&self) -> SecretString {
        match self.value.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The file it is read from, when it is re-read at all.
    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }
}

impl crate::reload::Reloadable for ClientSecret {
    fn name(&self) -> String {
        self.setting.clone()
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.file.iter().cloned().collect()
    }

    /// An unreadable or empty file keeps the old secret.
    fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let fresh = read_secret_file(path)?;
        let mut value = match self.value.write() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        *value = SecretString::from(fresh);
        Ok(())
    }
}

/// Settings the client needs.
pub struct CortiClientConfig {
    pub auth_base_url: String,
    pub tenant: Tenant,
    pub environment: Environment,
    pub client_id: String,
    pub client_secret: Arc<ClientSecret>,
    pub timeout: Duration,
}

/// One typed client for Corti auth around one `reqwest::Client`.
pub struct CortiClient {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Arc<ClientSecret>,
    tenant: Tenant,
    environment: Environment,
    timeout: Duration,
    /// The realm's keys, for checking granted tokens.
    certs: Keys,
}

impl CortiClient {
    pub fn new(config: CortiClientConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(3)))
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("token-vendor/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let realm = format!(
            "{}/realms/{}/protocol/openid-connect",
            config.auth_base_url.trim_end_matches('/'),
            config.tenant
        );
        let certs = Keys::Jwks(JwksCache::new(
            format!("{realm}/certs"),
            http.clone(),
            JwksPolicy::default(),
        ));
        Ok(Self {
            http,
            token_url: format!("{realm}/token"),
            client_id: config.client_id,
            client_secret: config.client_secret,
            tenant: config.tenant,
            environment: config.environment,
            timeout: config.timeout,
            certs,
        })
    }

    /// The realm's keys, which granted tokens are checked against.
    pub fn keys(&self) -> &Keys {
        &self.certs
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// Exchanges the client credentials for a token limited to `scope`, and checks it.
    #[tracing::instrument(
        name = "corti.token",
        skip_all,
        fields(scope = %scope, otel.kind = "client", http.response.status_code = tracing::field::Empty)
    )]
    pub async fn request_token(
        &self,
        scope: &RequestedScope,
    ) -> Result<GrantedToken, UpstreamError> {
        // One deadline covers the token call and, if needed, fetching the realm's keys.
        match tokio::time::timeout(self.timeout, self.exchange(scope)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn exchange(&self, scope: &RequestedScope) -> Result<GrantedToken, UpstreamError> {
        // A granted token cannot be checked without the realm's keys: mint none then,
        // rather than one that would be thrown away.
        self.certs
            .ready()
            .await
            .map_err(|_| UpstreamError::KeysUnavailable)?;
        let scope_string = scope.to_oauth_string();
        let secret = self.client_secret.current();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("scope", scope_string.as_str()),
        ];
        let response = self
            .http
            .post(&self.token_url)
            .header("Tenant-Name", self.tenant.as_str())
            .header("Accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            // A hostile or broken value must not overflow deadlines computed from it.
            .map(|secs| Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECS)));
        let body = read_capped(response).await?;

        if status.as_u16() == 429 {
            return Err(UpstreamError::RateLimited { retry_after });
        }
        if status.is_server_error() {
            return Err(UpstreamError::ServerError {
                status: status.as_u16(),
            });
        }
        if status.is_client_error() {
            let code = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|e| sanitize_code(&e.error))
                .unwrap_or_else(|_| "unparseable".into());
            if matches!(code.as_str(), "invalid_client" | "unauthorized_client") {
                tracing::error!(
                    status = status.as_u16(),
                    error = %code,
                    tenant = %self.tenant,
                    "Corti auth rejected the client credentials: check CORTI_CLIENT_ID, CORTI_CLIENT_SECRET and CORTI_TENANT (or the tenant's [[tenants]] entry)"
                );
            } else {
                tracing::error!(status = status.as_u16(), error = %code, tenant = %self.tenant, "Corti auth refused the token request");
            }
            return Err(UpstreamError::Refused {
                status: status.as_u16(),
                code,
            });
        }
        if !status.is_success() {
            return Err(UpstreamError::BadResponse("unexpected status"));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| UpstreamError::BadResponse("body is not a token response"))?;
        self.check(scope, parsed).await
    }

    async fn check(
        &self,
        scope: &RequestedScope,
        parsed: TokenResponse,
    ) -> Result<GrantedToken, UpstreamError> {
        let token = parsed.access_token;
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(UpstreamError::BadResponse(
                "access_token is empty or malformed",
            ));
        }
        if let Some(kind) = &parsed.token_type {
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(UpstreamError::BadResponse("token_type is not Bearer"));
            }
        }
        if parsed.expires_in <= 0 || parsed.expires_in > 86_400 {
            return Err(UpstreamError::BadResponse("expires_in out of range"));
        }
        let now = OffsetDateTime::now_utc();
        let mut expires_at = now + time::Duration::seconds(parsed.expires_in);

        let is_jwt = token.split('.').count() == 3;
        match (&parsed.scope, is_jwt) {
            (Some(granted), _) => scope.check_granted(granted)?,
            // Without either a scope field or a readable token we cannot prove the scope.
            (None, false) => return Err(UpstreamError::BadResponse("no scope to verify")),
            (None, true) => {}
        }
        if is_jwt {
            let claims = self.verify_jwt(&token).await?;
            let granted = claims
                .scope
                .ok_or(UpstreamError::Scope(GrantError::Missing(
                    "scope claim".into(),
                )))?;
            scope.check_granted(&granted)?;
            let exp = OffsetDateTime::from_unix_timestamp(claims.exp)
                .map_err(|_| UpstreamError::BadResponse("exp out of range"))?;
            expires_at = expires_at.min(exp);
        }
        if expires_at <= now {
            return Err(UpstreamError::BadResponse("token already expired"));
        }
        Ok(GrantedToken {
            access_token: SecretString::from(token),
            expires_at,
            scope: scope.to_oauth_string(),
        })
    }

    async fn verify_jwt(&self, token: &str) -> Result<AccessClaims, UpstreamError> {
        jwt::verify(token, &self.certs, &Rules::default())
            .await
            .map_err(|e| match e {
                JwtError::Malformed => {
                    UpstreamError::BadResponse("access_token is not a valid JWT")
                }
                JwtError::UnknownKey => {
                    UpstreamError::BadResponse("access_token signed with an unknown key")
                }
                JwtError::KeysUnavailable => UpstreamError::KeysUnavailable,
                JwtError::AlgorithmNotAllowed => {
                    UpstreamError::BadResponse("access_token algorithm does not match its key")
                }
                JwtError::Rejected(_) => {
                    UpstreamError::BadResponse("access_token signature or claims invalid")
                }
            })
    }
}

fn classify(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Unreachable(e.without_url().to_string())
    } else {
        UpstreamError::Unreachable("request failed".into())
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(UpstreamError::BadResponse("body too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Keeps an OAuth error code printable and short before it reaches a log line.
fn sanitize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}
