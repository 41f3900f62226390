//! `token-vendor dev`: everything a newcomer needs on loopback, with nothing to set.

pub mod auth_standin;

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::config::{ConfigError, Environment, Settings};
use crate::startup::{Application, Options, StartupError};

use auth_standin::{AuthStandIn, StandInConfig};

/// A random hex string; every dev secret is made fresh on each start.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Signs a session JWT the way the app's own sign-in would.
pub fn mint_session(
    secret: &SecretString,
    subject: &str,
    roles: &[&str],
    lifetime: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "sub": subject,
        "sid": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "exp": now + lifetime.as_secs() as i64,
        "roles": roles,
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
}

/// Runs the demo until stopped. Only `LISTEN_ADDR` and `DATABASE_URL` are taken from
/// the loaded settings; everything else is generated, and the real Corti is never used.
pub async fn run(loaded: Settings) -> Result<(), StartupError> {
    if !loaded.listen_addr.ip().is_loopback() {
        return Err(ConfigError::new("LISTEN_ADDR", "dev binds only loopback addresses").into());
    }
    let client_secret = random_hex(24);
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "token-vendor-dev".into(),
        client_secret: client_secret.clone(),
        token_lifetime: Duration::from_secs(300),
    })
    .map_err(|e| StartupError::Bind {
        addr: "127.0.0.1:0 (auth stand-in)".into(),
        source: e,
    })?;
    let session_secret = SecretString::from(random_hex(32));
    let port = loaded.listen_addr.port();
    let mut settings = Settings {
        listen_addr: loaded.listen_addr,
        database_url: loaded.database_url.clone(),
        corti_environment: Some(Environment::Eu),
        corti_auth_url: Some(standin.base_url().to_owned()),
        corti_client_id: Some("token-vendor-dev".into()),
        corti_client_secret: Some(SecretString::from(client_secret)),
        session_jwt_secret: Some(session_secret.clone()),
        audit_hmac_key: Some(SecretString::from(random_hex(32))),
        ..Settings::default()
    };
    settings.allowed_origins = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    let app = Application::build_with(settings.clone(), Options::default()).await?;
    let port = app.port();
    let base = format!("http://127.0.0.1:{port}");
    let session = mint_session(
        &session_secret,
        "demo-user",
        &[settings.audit_reader_role.as_str()],
        Duration::from_secs(8 * 3600),
    )
    .map_err(|e| StartupError::Audit(format!("cannot sign the demo session: {e}")))?;
    let auth = standin.base_url();
    let database = &settings.database_url;
    let banner = format!(
        "token-vendor dev: a local demo. It NEVER talks to the real Corti.
  service:          {base}
  Corti auth:       {auth} (DEVELOPMENT STAND-IN, loopback only)
  audit store:      {database}
  session token (user demo-user, valid 8h):
    {session}
  vend a token:
    curl -s -X POST {base}/v1/tokens -H 'Authorization: Bearer {session}' -H 'Content-Type: application/json' -d '{{\"scope\":\"transcribe\"}}'
  stop with Ctrl-C
"
    );
    // Written once and errors ignored: a closed stdout must not stop the service.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }
    let result = app.run_until_stopped().await;
    standin.stop().await;
    result.map_err(|e| StartupError::Bind {
        addr: base,
        source: e,
    })
}
