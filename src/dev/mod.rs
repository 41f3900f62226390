//! `token-vendor dev`: everything a newcomer needs on loopback, with nothing to set.

pub mod api_standin;
pub mod audit_keys;
pub mod auth_standin;
pub mod demo;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::config::{ConfigError, RelaySettings, Settings, DEV_TOKEN_LIFETIME, LISTEN_ADDR};
use crate::corti::Environment;
use crate::startup::{Application, Options, StartupError};

use api_standin::ApiStandIn;
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
    mint_session_with_scopes(secret, subject, roles, None, lifetime)
}

/// [`mint_session`] with a `corti_scopes` claim, for a user the app narrows.
pub fn mint_session_with_scopes(
    secret: &SecretString,
    subject: &str,
    roles: &[&str],
    corti_scopes: Option<&[&str]>,
    lifetime: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = json!({
        "sub": subject,
        "sid": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "exp": now + lifetime.as_secs() as i64,
        "roles": roles,
    });
    if let Some(scopes) = corti_scopes {
        claims["corti_scopes"] = json!(scopes);
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
}

/// How long before expiry the demo page's JS client fetches a fresh token.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// The stand-in's token lifetime (`DEV_TOKEN_LIFETIME`, Corti's own 300 s by default).
/// It must exceed the demo's refresh margin, or every call would refetch.
pub fn token_lifetime(settings: &Settings) -> Result<Duration, ConfigError> {
    let lifetime = settings.dev_token_lifetime;
    let min = REFRESH_MARGIN + Duration::from_secs(5);
    if lifetime >= min && lifetime <= Duration::from_secs(3600) {
        Ok(Duration::from_secs(lifetime.as_secs()))
    } else {
        Err(DEV_TOKEN_LIFETIME.error(format!("must be between {}s and 3600s", min.as_secs())))
    }
}

/// Runs the demo until stopped. Only `LISTEN_ADDR`, `DATABASE_URL`, `ALLOWED_ORIGINS`
/// (added to the demo's own origins, for an app page on another origin) and
/// `TOKEN_REUSE_MIN_TTL`, `RATE_LIMIT_PER_USER`/`RATE_LIMIT_PER_IP` (the contract test
/// raises them) are taken from the loaded settings, with `DEV_TOKEN_LIFETIME`; everything
/// else is generated, and the real Corti is never used.
pub async fn run(loaded: Settings) -> Result<(), StartupError> {
    if !loaded.server.listen_addr.ip().is_loopback() {
        return Err(LISTEN_ADDR
            .error("dev binds only loopback addresses")
            .into());
    }
    let token_lifetime = token_lifetime(&loaded)?;
    let bind_error = |addr: &str| {
        let addr = addr.to_owned();
        move |source| StartupError::Bind { addr, source }
    };
    // Bound first, so a port of 0 is known before the demo's own origins are listed.
    let listener = std::net::TcpListener::bind(loaded.server.listen_addr)
        .map_err(bind_error(&loaded.server.listen_addr.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(bind_error(&loaded.server.listen_addr.to_string()))?
        .port();
    let client_secret = random_hex(24);
    let standin = Arc::new(
        AuthStandIn::start(StandInConfig {
            client_id: "token-vendor-dev".into(),
            client_secret: client_secret.clone(),
            token_lifetime,
        })
        .map_err(bind_error("127.0.0.1:0 (auth stand-in)"))?,
    );
    let session_secret = SecretString::from(random_hex(32));
    let mut allowed_origins = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    for origin in &loaded.server.allowed_origins {
        if !allowed_origins.contains(origin) {
            allowed_origins.push(origin.clone());
        }
    }
    let audit_keys = audit_keys::DevAuditKeys::load_or_create(&loaded.audit.database_url)?;
    // The speech stand-in first: relay mode's upstream is its address.
    let dev_tenant = Settings::default().corti.tenant;
    let api = ApiStandIn::start(standin.clone(), dev_tenant.as_str().to_owned())
        .map_err(bind_error("127.0.0.1:0 (speech API stand-in)"))?;
    let mut settings = Settings::default();
    settings.server.listen_addr = loaded.server.listen_addr;
    settings.server.allowed_origins = allowed_origins;
    settings.corti.tenant = dev_tenant;
    settings.corti.environment = Some(Environment::Eu);
    settings.corti.auth_url = Some(standin.base_url().to_owned());
    settings.corti.client_id = Some("token-vendor-dev".into());
    settings.corti.client_secret = Some(SecretString::from(client_secret));
    settings.relay = RelaySettings {
        api_url: Some(api.base_url()),
        ..loaded.relay.clone()
    };
    settings.session.jwt_secret = Some(session_secret.clone());
    settings.audit.database_url = loaded.audit.database_url.clone();
    settings.audit.hmac_key = Some(audit_keys.hmac.clone());
    settings.audit.signing_key = Some(audit_keys.signing.clone());
    settings.limits.token_reuse_min_ttl = loaded.limits.token_reuse_min_ttl;
    settings.limits.per_user = loaded.limits.per_user;
    settings.limits.per_ip = loaded.limits.per_ip;
    let settings = settings.for_serve()?;
    let demo = demo::Demo {
        session_secret: session_secret.clone(),
        reader_role: settings.audit_reader_role.clone(),
        cookie_name: settings.session.cookie_name.clone(),
        api_base_url: api.base_url(),
        tenant: settings.corti().tenant.as_str().to_owned(),
        environment: Environment::Eu.as_str().to_owned(),
        token_lifetime,
        refresh_margin_secs: REFRESH_MARGIN.as_secs(),
    };
    let app = Application::build_with(
        settings.clone(),
        Options {
            extra_routes: Some(demo::routes(demo)),
            listener: Some(listener),
            ..Options::default()
        },
    )
    .await?;
    let base = format!("http://127.0.0.1:{port}");
    let session = mint_session(
        &session_secret,
        "demo-user",
        &[settings.audit_reader_role.as_str()],
        demo::SESSION_LIFETIME,
    )
    .map_err(|e| StartupError::Audit(format!("cannot sign the demo session: {e}")))?;
    let auth = standin.base_url();
    let api_url = api.base_url();
    let relay = base.replacen("http", "ws", 1);
    let lifetime = token_lifetime.as_secs();
    let reuse = settings.token_reuse_min_ttl.as_secs();
    let lifetime_setting = DEV_TOKEN_LIFETIME.name;
    let origins = settings.allowed_origins.join(", ");
    let database = &settings.database_url;
    let keys = audit_keys.path.display();
    let verify = audit_keys.verify_command();
    let banner = format!(
        "token-vendor dev: a local demo. It NEVER talks to the real Corti.
  service:          {base}
  demo page:        {base}/
  ops audit page:   {base}/ops/audit
  Corti auth:       {auth} (DEVELOPMENT STAND-IN, loopback only)
  Corti speech API: {api_url} (DEVELOPMENT STAND-IN, loopback only)
  relay mode:       {relay}/v1/relay/transcribe (the browser never holds a Corti token)
  token lifetime:   {lifetime}s ({lifetime_setting})
  token reuse:      while at least {reuse}s are left (TOKEN_REUSE_MIN_TTL)
  allowed origins:  {origins}
  audit store:      {database}
  audit keys:       {keys} (kept for this database)
  verify the audit log (after stopping, or while it runs):
    {verify}
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
    api.stop().await;
    standin.stop().await;
    result.map_err(|e| StartupError::Bind {
        addr: base,
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    fn lifetime(raw: &str) -> Result<Duration, ConfigError> {
        let settings = Settings::load(&Sources::from_pairs([("DEV_TOKEN_LIFETIME", raw)]))?;
        token_lifetime(&settings)
    }

    #[test]
    fn token_lifetime_defaults_to_cortis_and_takes_seconds_or_durations() {
        assert_eq!(
            token_lifetime(&Settings::default()).unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(lifetime("").unwrap(), Duration::from_secs(300));
        assert_eq!(lifetime("40").unwrap(), Duration::from_secs(40));
        assert_eq!(lifetime("2m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn token_lifetime_must_exceed_the_refresh_margin_and_be_a_duration() {
        for bad in ["10", "30s", "2h", "soon", "-5"] {
            let err = lifetime(bad).unwrap_err();
            assert_eq!(err.setting, "DEV_TOKEN_LIFETIME", "{bad}: {err}");
        }
    }
}
