//! `check-config --probe`: settings that parse can still be wrong (a database password,
//! a JWKS URL answering 404, a tenant's client secret). Each check here talks to the
//! real thing once and says, in one line, whether it works.
//!
//! Checks: `store`, `redis` (when set), `session keys` (a JWKS is fetched) or
//! `session introspection` (one call with a made-up token), and one `tenant` line each.

use std::time::Duration;

use crate::audit::db::{self, AuditDb, OpenMode, StoreError};
use crate::config::{redact_url_password, IntrospectionSettings, ServeSettings, SessionKeys};
use crate::corti::{ClientSecret, CortiClient, CortiClientConfig, UpstreamError};
use crate::scope::RequestedScope;
use crate::session::introspection::Introspector;
use crate::session::jwks::{JwksCache, JwksPolicy};

/// Longest one Redis or JWKS check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One check's verdict.
#[derive(Debug)]
pub struct Verdict {
    /// What was checked: `store`, `redis`, `session keys`, `tenant acme (eu)`.
    pub check: String,
    pub ok: bool,
    /// What was found, never a secret.
    pub detail: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.ok { "ok" } else { "FAILED" };
        write!(f, "probe {}: {verdict} ({})", self.check, self.detail)
    }
}

fn verdict(check: impl Into<String>, result: Result<String, String>) -> Verdict {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Verdict {
        check: check.into(),
        ok,
        detail,
    }
}

/// Runs every check against what `settings` name: the audit store, Redis (when set),
/// the session keys and one token call per tenant (the token is dropped unused).
pub async fn run(settings: &ServeSettings) -> Vec<Verdict> {
    let mut verdicts = vec![verdict("store", store(&settings.database_url).await)];
    if let Some(url) = &settings.rate_limit_redis_url {
        verdicts.push(verdict("redis", redis(url).await));
    }
    let sessions = match &settings.session.keys {
        SessionKeys::Introspection(i) => verdict("session introspection", introspection(i).await),
        _ => verdict("session keys", session_keys(settings).await),
    };
    verdicts.push(sessions);
    for t in &settings.tenants {
        let check = format!("tenant {} ({})", t.tenant, t.environment.as_str());
        verdicts.push(verdict(check, tenant(settings, t).await));
    }
    verdicts
}

async fn store(url: &str) -> Result<String, String> {
    let target = db::display_target(url);
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or_default())
    {
        let path = std::path::Path::new(path);
        if !path.exists() {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            return if dir.is_dir() {
                Ok(format!(
                    "{target}; the file does not exist yet, `serve` creates it"
                ))
            } else {
                Err(format!(
                    "{target}: the directory {} does not exist",
                    dir.display()
                ))
            };
        }
    } else {
        db::reach(url).await.map_err(|e| e.to_string())?;
    }
    let db = AuditDb::open(url, OpenMode::Existing)
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    match db.probe_read().await {
        Ok(()) => Ok(format!("{target}; audit tables present")),
        Err(StoreError::NotMigrated) => Ok(format!(
            "{target}; the audit tables do not exist yet, `serve` or `migrate` creates them"
        )),
        Err(e) => Err(format!("{target}: {e}")),
    }
}

async fn redis(url: &str) -> Result<String, String> {
    let target = redact_url_password(url);
    let ping = async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(format!("{target}; PING answered")),
        Ok(Err(e)) => Err(format!("{target}: {e}")),
        Err(_) => Err(format!(
            "{target}: no answer within {}s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

async fn session_keys(settings: &ServeSettings) -> Result<String, String> {
    match &settings.session.keys {
        SessionKeys::Secret(_) => Ok("SESSION_JWT_SECRET is a configured key".into()),
        SessionKeys::PublicKeyFile(path) => Ok(format!(
            "SESSION_JWT_PUBLIC_KEY_FILE {} holds a public key",
            path.display()
        )),
        SessionKeys::Introspection(i) => introspection(i).await,
        SessionKeys::Jwks(url) => {
            let http = reqwest::Client::builder()
                .timeout(CHECK_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?;
            let cache = JwksCache::new(url.clone(), http, JwksPolicy::default());
            match cache.refresh_now().await {
                Ok(n) => Ok(format!("{url}; {n} usable key(s)")),
                Err(e) => Err(format!("{url}: {e}")),
            }
        }
    }
}

/// One introspection call with a made-up token (see [`Introspector::probe`]).
async fn introspection(settings: &IntrospectionSettings) -> Result<String, String> {
    Introspector::new(settings)
        .map_err(|e| e.to_string())?
        .probe()
        .await
}

async fn tenant(
    settings: &ServeSettings,
    t: &crate::config::CortiSettings,
) -> Result<String, String> {
    let client = CortiClient::new(CortiClientConfig {
        auth_base_url: t.auth_url.clone(),
        tenant: t.tenant.clone(),
        environment: t.environment,
        client_id: t.client_id.clone(),
        client_secret: ClientSecret::fixed(t.client_secret.clone()),
        timeout: settings.upstream_timeout,
    })
    .map_err(|e| e.to_string())?;
    let scope = RequestedScope::parse("transcribe").map_err(|e| e.to_string())?;
    match client.request_token(&scope).await {
        Ok(token) => Ok(format!(
            "{}; a token for \"{}\" was granted and dropped",
            t.auth_url, token.scope
        )),
        Err(UpstreamError::Refused { status, code })
            if matches!(code.as_str(), "invalid_client" | "unauthorized_client") =>
        {
            Err(format!(
                "{}: the auth server refused the client credentials ({status} {code}): check {}",
                t.auth_url,
                credential_settings(t)
            ))
        }
        Err(e) => Err(format!("{}: {e}", t.auth_url)),
    }
}

/// Where a tenant's client id and secret are set, in the words of the settings.
fn credential_settings(t: &crate::config::CortiSettings) -> String {
    if t.client_secret_setting
        .starts_with(crate::config::TENANTS_KEY)
    {
        format!(
            "client_id and client_secret of {}[{}]",
            crate::config::TENANTS_KEY,
            t.tenant
        )
    } else {
        "CORTI_CLIENT_ID, CORTI_CLIENT_SECRET and CORTI_TENANT".into()
    }
}
