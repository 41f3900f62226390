//! Settings: embedded defaults, then a TOML file, then the environment (which wins).
//! Every secret may also come from `NAME_FILE`, as Docker/Kubernetes mount them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

/// A setting that is missing or malformed; shown to operators as one line.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Corti region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Eu,
    Us,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Eu => "eu",
            Environment::Us => "us",
        }
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "eu" => Ok(Environment::Eu),
            "us" => Ok(Environment::Us),
            other => Err(format!("must be \"eu\" or \"us\", not {other:?}")),
        }
    }
}

/// A Corti tenant (Keycloak realm) name; it goes into a URL path, so it is kept plain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(String);

impl Tenant {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.starts_with('.');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be 1-64 characters of letters, digits, '-', '_' or '.'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A rate such as `20/minute`: `count` requests per `period`, with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    pub const fn new(count: NonZeroU32, period: Duration) -> Self {
        Self { count, period }
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("must look like \"20/minute\" (N/second, N/minute or N/hour), not {s:?}");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let count = NonZeroU32::new(count).ok_or_else(|| "N must be at least 1".to_string())?;
        let period = match unit.trim() {
            "second" | "s" | "sec" => Duration::from_secs(1),
            "minute" | "m" | "min" => Duration::from_secs(60),
            "hour" | "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            _ => "hour",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

/// All settings of the service. Fields that `serve` requires are `Option` here and
/// checked by [`Settings::require_for_serve`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen_addr: SocketAddr,
    pub corti_environment: Option<Environment>,
    pub corti_tenant: Tenant,
    pub corti_client_id: Option<String>,
    pub corti_client_secret: Option<SecretString>,
    pub corti_auth_url: Option<String>,
    pub session_jwt_secret: Option<SecretString>,
    pub session_jwt_public_key_file: Option<PathBuf>,
    pub session_jwks_url: Option<String>,
    pub session_jwt_issuer: Option<String>,
    pub session_jwt_audience: Option<String>,
    pub session_cookie_name: String,
    pub database_url: String,
    pub allowed_origins: Vec<String>,
    pub rate_limit_per_user: Rate,
    pub rate_limit_per_ip: Rate,
    pub upstream_rate_limit: Rate,
    pub rate_limit_redis_url: Option<String>,
    pub token_reuse_min_ttl: Duration,
    pub upstream_timeout: Duration,
    pub audit_hmac_key: Option<SecretString>,
    /// Ed25519 key that signs audit chain checkpoints (`token-vendor audit keygen`).
    pub audit_signing_key: Option<SecretString>,
    pub audit_reader_role: String,
    pub trusted_proxies: Vec<IpNet>,
}

/// Default `TOKEN_REUSE_MIN_TTL`. The Corti JS SDK counts a token as expired 120 s
/// before its `expiresIn` runs out and then asks for another before every request; a
/// reused token must therefore have more than 120 s left, or each SDK request would
/// fetch the same token again. 150 s leaves 30 s for the round trip and for the page
/// using the token, and still reuses a 300-s Corti token for half its life.
pub const DEFAULT_TOKEN_REUSE_MIN_TTL: Duration = Duration::from_secs(150);

const fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(v) => v,
        None => panic!("zero rate"),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            corti_environment: None,
            corti_tenant: Tenant("base".into()),
            corti_client_id: None,
            corti_client_secret: None,
            corti_auth_url: None,
            session_jwt_secret: None,
            session_jwt_public_key_file: None,
            session_jwks_url: None,
            session_jwt_issuer: None,
            session_jwt_audience: None,
            session_cookie_name: "session".into(),
            database_url: "sqlite://token-vendor.db".into(),
            allowed_origins: Vec::new(),
            rate_limit_per_user: Rate::new(nz(30), Duration::from_secs(60)),
            rate_limit_per_ip: Rate::new(nz(120), Duration::from_secs(60)),
            upstream_rate_limit: Rate::new(nz(50), Duration::from_secs(1)),
            rate_limit_redis_url: None,
            token_reuse_min_ttl: DEFAULT_TOKEN_REUSE_MIN_TTL,
            upstream_timeout: Duration::from_secs(5),
            audit_hmac_key: None,
            audit_signing_key: None,
            audit_reader_role: "token-vendor:audit-reader".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Where raw setting values come from: the environment over a TOML file.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    env: HashMap<String, String>,
    file: HashMap<String, String>,
}

impl Sources {
    /// The process environment plus the optional `--config` file.
    pub fn from_process(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match config_file {
            Some(path) => read_toml(path)?,
            None => HashMap::new(),
        };
        Ok(Self {
            env: std::env::vars().collect(),
            file,
        })
    }

    /// Explicit values (tests, `dev`), keyed by environment-variable name.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            env: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            file: HashMap::new(),
        }
    }

    fn raw(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .or_else(|| self.file.get(&name.to_ascii_lowercase()))
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }

    fn value(&self, name: &str) -> Option<String> {
        self.raw(name).map(|v| v.trim().to_owned())
    }

    /// A secret: `NAME` or the contents of the file named by `NAME_FILE`.
    fn secret(&self, name: &str) -> Result<Option<SecretString>, ConfigError> {
        let file_key = format!("{name}_FILE");
        // Environment wins over the TOML file, whichever of the two forms it uses.
        let direct_env = self.env.get(name).filter(|v| !v.is_empty());
        let file_env = self.env.get(&file_key).filter(|v| !v.is_empty());
        let chosen = match (direct_env, file_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    name,
                    format!("set either {name} or {file_key}, not both"),
                ))
            }
            (Some(v), None) => Some((false, v.clone())),
            (None, Some(p)) => Some((true, p.clone())),
            (None, None) => {
                let lower = name.to_ascii_lowercase();
                let lower_file = file_key.to_ascii_lowercase();
                let direct = self.file.get(&lower).filter(|v| !v.is_empty());
                let file = self.file.get(&lower_file).filter(|v| !v.is_empty());
                match (direct, file) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::new(
                            name,
                            format!("set either {lower} or {lower_file}, not both"),
                        ))
                    }
                    (Some(v), None) => Some((false, v.clone())),
                    (None, Some(p)) => Some((true, p.clone())),
                    (None, None) => None,
                }
            }
        };
        match chosen {
            None => Ok(None),
            Some((false, v)) => Ok(Some(SecretString::from(v))),
            Some((true, path)) => {
                let content = std::fs::read_to_string(path.trim()).map_err(|e| {
                    ConfigError::new(&file_key, format!("cannot read {}: {e}", path.trim()))
                })?;
                let content = content.trim_end_matches(['\n', '\r']).to_owned();
                if content.is_empty() {
                    return Err(ConfigError::new(&file_key, "the file is empty"));
                }
                Ok(Some(SecretString::from(content)))
            }
        }
    }

    fn parsed<T: FromStr>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.value(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| ConfigError::new(name, e.to_string())),
        }
    }
}

fn read_toml(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        ConfigError::new("--config", format!("{}: {}", path.display(), e.message()))
    })?;
    let mut out = HashMap::new();
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => {
                return Err(ConfigError::new(
                    &key,
                    format!("{}: unsupported value type", path.display()),
                ))
            }
        };
        out.insert(key.to_ascii_lowercase(), text);
    }
    Ok(out)
}

fn parse_duration(name: &str, raw: &str) -> Result<Duration, ConfigError> {
    // A bare number means seconds, as operators write `TOKEN_REUSE_MIN_TTL=60`.
    if let Ok(secs) = raw.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(raw)
        .map_err(|e| ConfigError::new(name, format!("must be a duration like 5s or 800ms ({e})")))
}

fn parse_url(name: &str, raw: &str, schemes: &[&str]) -> Result<String, ConfigError> {
    let url =
        reqwest::Url::parse(raw).map_err(|e| ConfigError::new(name, format!("not a URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::new(
            name,
            format!("scheme must be one of {}", schemes.join(", ")),
        ));
    }
    // Plain HTTP would carry the client secret in clear and let anyone on the path
    // swap signing keys; it is accepted only on this machine (tests, dev stand-ins).
    if url.scheme() == "http" && !is_loopback_host(&url) {
        return Err(ConfigError::new(
            name,
            "must use https (http is accepted only for loopback hosts)",
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Normalises a configured origin to `scheme://host[:port]` and refuses anything else.
pub fn parse_origin(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("{raw:?} is not an origin: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?} must be an http(s) origin"));
    }
    if url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
    {
        return Err(format!("{raw:?} must be only scheme://host[:port]"));
    }
    Ok(url.origin().ascii_serialization())
}

impl Settings {
    /// Reads every setting; fails on the first malformed one.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let d = Settings::default();
        let tenant = match sources.value("CORTI_TENANT") {
            Some(v) => Tenant::parse(&v).map_err(|e| ConfigError::new("CORTI_TENANT", e))?,
            None => d.corti_tenant,
        };
        let allowed_origins = match sources.value("ALLOWED_ORIGINS") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|o| parse_origin(o).map_err(|e| ConfigError::new("ALLOWED_ORIGINS", e)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let trusted_proxies = match sources.value("TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|c| {
                    c.parse::<IpNet>()
                        .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            ConfigError::new("TRUSTED_PROXIES", format!("{c:?} is not a CIDR"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let corti_auth_url = sources
            .value("CORTI_AUTH_URL")
            .map(|v| parse_url("CORTI_AUTH_URL", &v, &["https", "http"]))
            .transpose()?;
        let session_jwks_url = sources
            .value("SESSION_JWKS_URL")
            .map(|v| parse_url("SESSION_JWKS_URL", &v, &["https", "http"]))
            .transpose()?;
        let rate_limit_redis_url = sources
            .value("RATE_LIMIT_REDIS_URL")
            .map(|v| parse_url("RATE_LIMIT_REDIS_URL", &v, &["redis", "rediss"]))
            .transpose()?;
        let database_url = sources.value("DATABASE_URL").unwrap_or(d.database_url);
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "must start with sqlite:// or postgres://",
            ));
        }
        Ok(Settings {
            listen_addr: sources
                .parsed::<SocketAddr>("LISTEN_ADDR")?
                .unwrap_or(d.listen_addr),
            corti_environment: sources.parsed("CORTI_ENVIRONMENT")?,
            corti_tenant: tenant,
            corti_client_id: sources.value("CORTI_CLIENT_ID"),
            corti_client_secret: sources.secret("CORTI_CLIENT_SECRET")?,
            corti_auth_url,
            session_jwt_secret: sources.secret("SESSION_JWT_SECRET")?,
            session_jwt_public_key_file: sources
                .value("SESSION_JWT_PUBLIC_KEY_FILE")
                .map(PathBuf::from),
            session_jwks_url,
            session_jwt_issuer: sources.value("SESSION_JWT_ISSUER"),
            session_jwt_audience: sources.value("SESSION_JWT_AUDIENCE"),
            session_cookie_name: sources
                .value("SESSION_COOKIE_NAME")
                .unwrap_or(d.session_cookie_name),
            database_url,
            allowed_origins,
            rate_limit_per_user: sources
                .parsed("RATE_LIMIT_PER_USER")?
                .unwrap_or(d.rate_limit_per_user),
            rate_limit_per_ip: sources
                .parsed("RATE_LIMIT_PER_IP")?
                .unwrap_or(d.rate_limit_per_ip),
            upstream_rate_limit: sources
                .parsed("UPSTREAM_RATE_LIMIT")?
                .unwrap_or(d.upstream_rate_limit),
            rate_limit_redis_url,
            token_reuse_min_ttl: match sources.value("TOKEN_REUSE_MIN_TTL") {
                Some(v) => parse_duration("TOKEN_REUSE_MIN_TTL", &v)?,
                None => d.token_reuse_min_ttl,
            },
            upstream_timeout: match sources.value("UPSTREAM_TIMEOUT") {
                Some(v) => {
                    let t = parse_duration("UPSTREAM_TIMEOUT", &v)?;
                    if t.is_zero() {
                        return Err(ConfigError::new("UPSTREAM_TIMEOUT", "must be more than 0"));
                    }
                    t
                }
                None => d.upstream_timeout,
            },
            audit_hmac_key: sources.secret("AUDIT_HMAC_KEY")?,
            audit_signing_key: sources.secret("AUDIT_SIGNING_KEY")?,
            audit_reader_role: sources
                .value("AUDIT_READER_ROLE")
                .unwrap_or(d.audit_reader_role),
            trusted_proxies,
        })
    }

    /// Checks what `serve` cannot run without.
    pub fn require_for_serve(&self) -> Result<(), ConfigError> {
        if self.corti_environment.is_none() {
            return Err(ConfigError::new(
                "CORTI_ENVIRONMENT",
                "is required (eu or us)",
            ));
        }
        if self.corti_client_id.is_none() {
            return Err(ConfigError::new("CORTI_CLIENT_ID", "is required"));
        }
        if self.corti_client_secret.is_none() {
            return Err(ConfigError::new(
                "CORTI_CLIENT_SECRET",
                "is required (or CORTI_CLIENT_SECRET_FILE)",
            ));
        }
        let key_sources = [
            self.session_jwt_secret.is_some(),
            self.session_jwt_public_key_file.is_some(),
            self.session_jwks_url.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if key_sources != 1 {
            return Err(ConfigError::new(
                "SESSION_JWT_SECRET",
                format!(
                    "exactly one of SESSION_JWT_SECRET, SESSION_JWT_PUBLIC_KEY_FILE or SESSION_JWKS_URL is required ({key_sources} set)"
                ),
            ));
        }
        if let Some(secret) = &self.session_jwt_secret {
            if secret.expose_secret().len() < 32 {
                return Err(ConfigError::new(
                    "SESSION_JWT_SECRET",
                    "must be at least 32 bytes for HMAC",
                ));
            }
        }
        match &self.audit_hmac_key {
            None => {
                return Err(ConfigError::new(
                    "AUDIT_HMAC_KEY",
                    "is required (or AUDIT_HMAC_KEY_FILE)",
                ))
            }
            Some(k) if k.expose_secret().len() < 16 => {
                return Err(ConfigError::new(
                    "AUDIT_HMAC_KEY",
                    "must be at least 16 bytes",
                ))
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The auth server base: the configured one or Corti's for the environment.
    pub fn auth_base_url(&self) -> Option<String> {
        self.corti_auth_url.clone().or_else(|| {
            self.corti_environment
                .map(|env| format!("https://auth.{}.corti.app", env.as_str()))
        })
    }

    /// The effective settings as `KEY=value` lines, every secret redacted.
    pub fn redacted_lines(&self) -> Vec<String> {
        fn opt(v: &Option<String>) -> String {
            v.clone().unwrap_or_else(|| "(unset)".into())
        }
        fn secret(v: &Option<SecretString>) -> String {
            match v {
                Some(_) => "(set, redacted)".into(),
                None => "(unset)".into(),
            }
        }
        vec![
            format!("LISTEN_ADDR={}", self.listen_addr),
            format!(
                "CORTI_ENVIRONMENT={}",
                self.corti_environment
                    .map(|e| e.as_str())
                    .unwrap_or("(unset)")
            ),
            format!("CORTI_TENANT={}", self.corti_tenant),
            format!("CORTI_CLIENT_ID={}", opt(&self.corti_client_id)),
            format!("CORTI_CLIENT_SECRET={}", secret(&self.corti_client_secret)),
            format!(
                "CORTI_AUTH_URL={}",
                self.auth_base_url().unwrap_or_else(|| "(unset)".into())
            ),
            format!("SESSION_JWT_SECRET={}", secret(&self.session_jwt_secret)),
            format!(
                "SESSION_JWT_PUBLIC_KEY_FILE={}",
                self.session_jwt_public_key_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(unset)".into())
            ),
            format!("SESSION_JWKS_URL={}", opt(&self.session_jwks_url)),
            format!("SESSION_JWT_ISSUER={}", opt(&self.session_jwt_issuer)),
            format!("SESSION_JWT_AUDIENCE={}", opt(&self.session_jwt_audience)),
            format!("SESSION_COOKIE_NAME={}", self.session_cookie_name),
            format!("DATABASE_URL={}", redact_url_password(&self.database_url)),
            format!("ALLOWED_ORIGINS={}", self.allowed_origins.join(",")),
            format!("RATE_LIMIT_PER_USER={}", self.rate_limit_per_user),
            format!("RATE_LIMIT_PER_IP={}", self.rate_limit_per_ip),
            format!("UPSTREAM_RATE_LIMIT={}", self.upstream_rate_limit),
            format!(
                "RATE_LIMIT_REDIS_URL={}",
                self.rate_limit_redis_url
                    .as_deref()
                    .map(redact_url_password)
                    .unwrap_or_else(|| "(unset)".into())
            ),
            format!(
                "TOKEN_REUSE_MIN_TTL={}s",
                self.token_reuse_min_ttl.as_secs()
            ),
            format!(
                "UPSTREAM_TIMEOUT={}",
                humantime::format_duration(self.upstream_timeout)
            ),
            format!("AUDIT_HMAC_KEY={}", secret(&self.audit_hmac_key)),
            format!("AUDIT_SIGNING_KEY={}", secret(&self.audit_signing_key)),
            format!("AUDIT_READER_ROLE={}", self.audit_reader_role),
            format!(
                "TRUSTED_PROXIES={}",
                self.trusted_proxies
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ]
    }
}

/// Hides the password of a `scheme://user:password@host/…` URL.
pub fn redact_url_password(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("redacted"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_over_file_and_secrets_come_from_files() {
        let dir = std::env::temp_dir().join(format!("tv-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret_path = dir.join("secret");
        std::fs::write(&secret_path, "fake-secret-from-file\n").unwrap();
        let mut sources = Sources::from_pairs([
            ("CORTI_TENANT", "fromenv"),
            ("CORTI_CLIENT_SECRET_FILE", secret_path.to_str().unwrap()),
        ]);
        sources
            .file
            .insert("corti_tenant".into(), "fromfile".into());
        sources
            .file
            .insert("upstream_timeout".into(), "800ms".into());
        let s = Settings::load(&sources).unwrap();
        assert_eq!(s.corti_tenant.as_str(), "fromenv");
        assert_eq!(s.upstream_timeout, Duration::from_millis(800));
        assert_eq!(
            s.corti_client_secret.unwrap().expose_secret(),
            "fake-secret-from-file"
        );
    }

    #[test]
    fn malformed_settings_name_themselves() {
        for (k, v) in [
            ("CORTI_ENVIRONMENT", "mars"),
            ("RATE_LIMIT_PER_USER", "lots"),
            ("UPSTREAM_TIMEOUT", "soon"),
            ("ALLOWED_ORIGINS", "https://app.example/path"),
            ("TRUSTED_PROXIES", "10.0.0.0/99"),
            ("LISTEN_ADDR", "nowhere"),
            ("CORTI_AUTH_URL", "http://auth.example.test"),
            ("SESSION_JWKS_URL", "http://id.example.test/jwks"),
        ] {
            let err = Settings::load(&Sources::from_pairs([(k, v)])).unwrap_err();
            assert_eq!(err.setting, k, "{err}");
        }
    }

    #[test]
    fn reused_tokens_outlast_the_corti_sdks_expiry_margin_by_default() {
        // The SDK's BUFFER_IN_MINUTES = 2: a token with 120 s or less left is "expired" to it.
        let s = Settings::load(&Sources::default()).unwrap();
        assert!(s.token_reuse_min_ttl > Duration::from_secs(120));
        assert_eq!(s.token_reuse_min_ttl, Duration::from_secs(150));
        let explicit =
            Settings::load(&Sources::from_pairs([("TOKEN_REUSE_MIN_TTL", "60")])).unwrap();
        assert_eq!(explicit.token_reuse_min_ttl, Duration::from_secs(60));
        let off = Settings::load(&Sources::from_pairs([("TOKEN_REUSE_MIN_TTL", "0")])).unwrap();
        assert!(off.token_reuse_min_ttl.is_zero());
    }

    #[test]
    fn rates_parse() {
        let r: Rate = "20/minute".parse().unwrap();
        assert_eq!(r.count.get(), 20);
        assert_eq!(r.period, Duration::from_secs(60));
        assert!("0/second".parse::<Rate>().is_err());
    }
}
