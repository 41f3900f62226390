//! Settings: embedded defaults, then a TOML file, then the environment (which wins).
//! Every secret may also come from `NAME_FILE`, as Docker/Kubernetes mount them.
//!
//! Each setting is one [`Setting`] constant (name, parser, default, secret or not), so a
//! name is spelled once. [`Settings::load`] reads them all; [`Settings::for_serve`] is
//! the one check of what `serve` needs and yields the complete [`ServeSettings`] the
//! service is built from.

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

/// How one setting is read: its name (the environment variable; the TOML key is the
/// same in lower case), whether it is a secret (then `NAME_FILE` works too and the
/// value is never printed), its default, and the one parser for its value.
pub struct Setting<T> {
    pub name: &'static str,
    pub secret: bool,
    /// Parsed by the same parser as a configured value.
    pub default: Option<&'static str>,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Setting<T> {
    const fn plain(name: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        Self {
            name,
            secret: false,
            default: None,
            parse,
        }
    }

    const fn secret(name: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        Self {
            name,
            secret: true,
            default: None,
            parse,
        }
    }

    const fn or(self, default: &'static str) -> Self {
        Self {
            default: Some(default),
            ..self
        }
    }

    /// The configured value, else the default, else `None`.
    fn read(&self, sources: &Sources) -> Result<Option<T>, ConfigError> {
        let raw = if self.secret {
            sources.secret(self.name)?
        } else {
            sources.value(self.name)
        };
        match raw.as_deref().or(self.default) {
            None => Ok(None),
            Some(v) => (self.parse)(v)
                .map(Some)
                .map_err(|problem| self.error(problem)),
        }
    }

    /// For a setting with a default in the table.
    fn read_defaulted(&self, sources: &Sources) -> Result<T, ConfigError> {
        self.read(sources)?
            .ok_or_else(|| self.error("has no default"))
    }

    /// For a list, empty when unset.
    fn read_or_default(&self, sources: &Sources) -> Result<T, ConfigError>
    where
        T: Default,
    {
        Ok(self.read(sources)?.unwrap_or_default())
    }

    /// An error naming this setting (missing, malformed or out of range).
    pub fn error(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(self.name, problem)
    }
}

fn from_str<T: FromStr>(raw: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    raw.parse::<T>().map_err(|e| e.to_string())
}

fn text(raw: &str) -> Result<String, String> {
    Ok(raw.to_owned())
}

fn secret(raw: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(raw))
}

fn http_url(raw: &str) -> Result<String, String> {
    parse_url(raw, &["https", "http"])
}

fn redis_url(raw: &str) -> Result<String, String> {
    parse_url(raw, &["redis", "rediss"])
}

/// `RATE_LIMIT_REDIS_URL`, else `REDIS_URL`; both set to different URLs is a mistake.
fn redis_url_setting(sources: &Sources) -> Result<Option<String>, ConfigError> {
    match (
        RATE_LIMIT_REDIS_URL.read(sources)?,
        REDIS_URL.read(sources)?,
    ) {
        (Some(a), Some(b)) if a != b => Err(REDIS_URL.error(format!(
            "names another Redis than {}; set one of them",
            RATE_LIMIT_REDIS_URL.name
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

fn database_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("sqlite:")
        || raw.starts_with("postgres://")
        || raw.starts_with("postgresql://")
    {
        Ok(raw.to_owned())
    } else {
        Err("must start with sqlite:// or postgres://".into())
    }
}

fn positive_duration(raw: &str) -> Result<Duration, String> {
    let d = setting_duration(raw)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// Session claims an operator chose to leave unchecked with a public key
/// (`SESSION_JWT_UNCHECKED_CLAIMS=aud,iss`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UncheckedClaims {
    pub aud: bool,
    pub iss: bool,
}

impl UncheckedClaims {
    fn parse(raw: &str) -> Result<Self, String> {
        let mut claims = Self::default();
        for claim in list(raw) {
            match claim {
                "aud" => claims.aud = true,
                "iss" => claims.iss = true,
                other => {
                    return Err(format!(
                        "lists {other:?}; only aud and iss may be unchecked"
                    ))
                }
            }
        }
        Ok(claims)
    }
}

impl fmt::Display for UncheckedClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(self.aud, "aud"), (self.iss, "iss")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        f.write_str(&names.join(","))
    }
}

fn list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn origins(raw: &str) -> Result<Vec<String>, String> {
    list(raw).map(parse_origin).collect()
}

fn cidrs(raw: &str) -> Result<Vec<IpNet>, String> {
    list(raw)
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{c:?} is not a CIDR"))
        })
        .collect()
}

pub const LISTEN_ADDR: Setting<SocketAddr> =
    Setting::plain("LISTEN_ADDR", from_str).or("127.0.0.1:8080");
pub const CORTI_ENVIRONMENT: Setting<Environment> = Setting::plain("CORTI_ENVIRONMENT", from_str);
pub const CORTI_TENANT: Setting<Tenant> = Setting::plain("CORTI_TENANT", Tenant::parse).or("base");
pub const CORTI_CLIENT_ID: Setting<String> = Setting::plain("CORTI_CLIENT_ID", text);
pub const CORTI_CLIENT_SECRET: Setting<SecretString> =
    Setting::secret("CORTI_CLIENT_SECRET", secret);
pub const CORTI_AUTH_URL: Setting<String> = Setting::plain("CORTI_AUTH_URL", http_url);
/// The tenant a vend without `tenant` is for, when several are configured.
pub const DEFAULT_TENANT: Setting<Tenant> = Setting::plain("DEFAULT_TENANT", Tenant::parse);
/// The TOML file's array of tables, one per Corti tenant: `[[tenants]]`.
pub const TENANTS_KEY: &str = "tenants";
pub const SESSION_JWT_SECRET: Setting<SecretString> = Setting::secret("SESSION_JWT_SECRET", secret);
/// Also accepted for session JWTs while apps move to a new `SESSION_JWT_SECRET`.
pub const SESSION_JWT_PREVIOUS_SECRET: Setting<SecretString> =
    Setting::secret("SESSION_JWT_PREVIOUS_SECRET", secret);
/// How long a session key replaced by a reload (SIGHUP or a changed file) stays
/// accepted; `0` accepts only the new key at once.
pub const SESSION_JWT_ROTATION_GRACE: Setting<Duration> =
    Setting::plain("SESSION_JWT_ROTATION_GRACE", setting_duration).or("5m");
pub const SESSION_JWT_PUBLIC_KEY_FILE: Setting<PathBuf> =
    Setting::plain("SESSION_JWT_PUBLIC_KEY_FILE", from_str);
pub const SESSION_JWKS_URL: Setting<String> = Setting::plain("SESSION_JWKS_URL", http_url);
/// How old the cached session JWKS may get before it is fetched again (behind a session
/// check, which is still answered with the cached keys): so also how long a key removed
/// from the JWKS can stay accepted. SIGHUP fetches it at once.
pub const SESSION_JWKS_REFRESH_INTERVAL: Setting<Duration> =
    Setting::plain("SESSION_JWKS_REFRESH_INTERVAL", jwks_refresh_interval).or("5m");
/// The most [`SESSION_JWKS_REFRESH_INTERVAL`] may be: cached keys are used at most an
/// hour without a successful fetch.
pub const MAX_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// Clock skew tolerated on a session JWT's `exp` and `nbf`.
pub const SESSION_LEEWAY: Setting<Duration> =
    Setting::plain("SESSION_LEEWAY", session_leeway).or("30s");
/// The most [`SESSION_LEEWAY`] may be: a wider one keeps expired sessions alive.
pub const MAX_SESSION_LEEWAY: Duration = Duration::from_secs(300);

fn jwks_refresh_interval(raw: &str) -> Result<Duration, String> {
    let d = positive_duration(raw)?;
    if d > MAX_JWKS_REFRESH_INTERVAL {
        return Err(format!(
            "must be at most {}s: cached keys are used at most that long without a fetch",
            MAX_JWKS_REFRESH_INTERVAL.as_secs()
        ));
    }
    Ok(d)
}

fn session_leeway(raw: &str) -> Result<Duration, String> {
    let d = setting_duration(raw)?;
    if d > MAX_SESSION_LEEWAY {
        return Err(format!(
            "must be at most {}s: it keeps expired sessions accepted",
            MAX_SESSION_LEEWAY.as_secs()
        ));
    }
    Ok(d)
}
pub const SESSION_JWT_ISSUER: Setting<String> = Setting::plain("SESSION_JWT_ISSUER", text);
pub const SESSION_JWT_AUDIENCE: Setting<String> = Setting::plain("SESSION_JWT_AUDIENCE", text);
/// The opt-out from [`Settings::for_serve`]'s rule that a public session key needs
/// `SESSION_JWT_AUDIENCE` and `SESSION_JWT_ISSUER`: `aud`, `iss` or both.
pub const SESSION_JWT_UNCHECKED_CLAIMS: Setting<UncheckedClaims> =
    Setting::plain("SESSION_JWT_UNCHECKED_CLAIMS", UncheckedClaims::parse);
pub const SESSION_COOKIE_NAME: Setting<String> =
    Setting::plain("SESSION_COOKIE_NAME", text).or("session");
/// RFC 7662 introspection endpoint for apps whose sessions are opaque (not JWTs).
pub const SESSION_INTROSPECTION_URL: Setting<String> =
    Setting::plain("SESSION_INTROSPECTION_URL", http_url);
pub const SESSION_INTROSPECTION_CLIENT_ID: Setting<String> =
    Setting::plain("SESSION_INTROSPECTION_CLIENT_ID", text);
/// Which clients' tokens are sessions here: a comma list matched against the answer's
/// `client_id` and `aud`; `*` (explicitly) accepts a token issued to any client.
pub const SESSION_INTROSPECTION_AUDIENCE: Setting<String> =
    Setting::plain("SESSION_INTROSPECTION_AUDIENCE", text);
pub const SESSION_INTROSPECTION_CLIENT_SECRET: Setting<SecretString> =
    Setting::secret("SESSION_INTROSPECTION_CLIENT_SECRET", secret);
/// How long an active introspection answer is reused (never past the session's `exp`):
/// also how long a revoked session may still be accepted. `0` asks every time.
pub const SESSION_INTROSPECTION_CACHE_TTL: Setting<Duration> =
    Setting::plain("SESSION_INTROSPECTION_CACHE_TTL", introspection_ttl).or("30s");
/// The most [`SESSION_INTROSPECTION_CACHE_TTL`] may be: a revocation must take effect soon.
pub const MAX_INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(300);

fn introspection_ttl(raw: &str) -> Result<Duration, String> {
    let ttl = setting_duration(raw)?;
    if ttl > MAX_INTROSPECTION_CACHE_TTL {
        return Err(format!(
            "must be at most {}s: a revoked session stays accepted this long",
            MAX_INTROSPECTION_CACHE_TTL.as_secs()
        ));
    }
    Ok(ttl)
}
/// Read as a secret (so `DATABASE_URL_FILE` works): the URL may hold credentials.
pub const DATABASE_URL: Setting<String> =
    Setting::secret("DATABASE_URL", database_url).or("sqlite://token-vendor.db");
pub const ALLOWED_ORIGINS: Setting<Vec<String>> = Setting::plain("ALLOWED_ORIGINS", origins);
pub const RATE_LIMIT_PER_USER: Setting<Rate> =
    Setting::plain("RATE_LIMIT_PER_USER", from_str).or("30/minute");
pub const RATE_LIMIT_PER_IP: Setting<Rate> =
    Setting::plain("RATE_LIMIT_PER_IP", from_str).or("120/minute");
pub const UPSTREAM_RATE_LIMIT: Setting<Rate> =
    Setting::plain("UPSTREAM_RATE_LIMIT", from_str).or("50/second");
/// Read as a secret (so `RATE_LIMIT_REDIS_URL_FILE` works): the URL may hold a password.
pub const RATE_LIMIT_REDIS_URL: Setting<String> =
    Setting::secret("RATE_LIMIT_REDIS_URL", redis_url);
/// Another name for `RATE_LIMIT_REDIS_URL`: Redis serves limits and token reuse alike.
pub const REDIS_URL: Setting<String> = Setting::secret("REDIS_URL", redis_url);
/// Encrypts the tokens replicas share through Redis; without it reuse is per replica.
pub const TOKEN_CACHE_KEY: Setting<SecretString> = Setting::secret("TOKEN_CACHE_KEY", secret);
/// Default 150 s. The Corti JS SDK counts a token as expired 120 s before its
/// `expiresIn` runs out and then asks for another before every request; a reused token
/// must therefore have more than 120 s left, or each SDK request would fetch the same
/// token again. 150 s leaves 30 s for the round trip and for the page using the token,
/// and still reuses a 300-s Corti token for half its life.
pub const TOKEN_REUSE_MIN_TTL: Setting<Duration> =
    Setting::plain("TOKEN_REUSE_MIN_TTL", setting_duration).or("150");
pub const UPSTREAM_TIMEOUT: Setting<Duration> =
    Setting::plain("UPSTREAM_TIMEOUT", positive_duration).or("5s");
/// On SIGTERM, how long in-flight requests may take to finish before they are cut.
pub const SHUTDOWN_GRACE: Setting<Duration> =
    Setting::plain("SHUTDOWN_GRACE", setting_duration).or("10s");
pub const AUDIT_HMAC_KEY: Setting<SecretString> = Setting::secret("AUDIT_HMAC_KEY", secret);
/// Ed25519 key that signs audit chain checkpoints (`token-vendor audit keygen`).
pub const AUDIT_SIGNING_KEY: Setting<SecretString> = Setting::secret("AUDIT_SIGNING_KEY", secret);
/// The checkpoints' verifier key (`<name>+<id>+<key>`, from `audit keygen`), for
/// `audit verify` and `audit prune`. Public, so `check-config` shows it; read as a secret
/// only so that `AUDIT_VERIFIER_KEY_FILE` works like the other mounted keys.
pub const AUDIT_VERIFIER_KEY: Setting<String> = Setting::secret("AUDIT_VERIFIER_KEY", text);
/// The only way `serve` starts without `AUDIT_SIGNING_KEY` (see [`Settings::check_signed`]).
pub const AUDIT_ALLOW_UNSIGNED: Setting<bool> =
    Setting::plain("AUDIT_ALLOW_UNSIGNED", from_str).or("false");
/// Subjects refused at once, one per line (`*` = everyone); re-read on change and SIGHUP.
pub const DENY_LIST_FILE: Setting<PathBuf> = Setting::plain("DENY_LIST_FILE", from_str);
pub const AUDIT_READER_ROLE: Setting<String> =
    Setting::plain("AUDIT_READER_ROLE", text).or("token-vendor:audit-reader");
pub const TRUSTED_PROXIES: Setting<Vec<IpNet>> = Setting::plain("TRUSTED_PROXIES", cidrs);
/// Corti's speech API base for relay mode (`wss://api.{env}.corti.app` by default).
pub const CORTI_API_URL: Setting<String> = Setting::plain("CORTI_API_URL", ws_url);
pub const RELAY_MAX_STREAMS_PER_USER: Setting<u32> =
    Setting::plain("RELAY_MAX_STREAMS_PER_USER", positive_count).or("4");
pub const RELAY_MAX_STREAMS: Setting<u32> =
    Setting::plain("RELAY_MAX_STREAMS", positive_count).or("1000");
pub const RELAY_MAX_DURATION: Setting<Duration> =
    Setting::plain("RELAY_MAX_DURATION", positive_duration).or("4h");
pub const RELAY_IDLE_TIMEOUT: Setting<Duration> =
    Setting::plain("RELAY_IDLE_TIMEOUT", positive_duration).or("60s");

/// Relay mode: where Corti's speech API is and the limits of relayed streams.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `CORTI_API_URL`, for the tenant the `CORTI_*` settings describe.
    pub api_url: Option<String>,
    pub max_streams_per_user: u32,
    pub max_streams: u32,
    pub max_duration: Duration,
    pub idle_timeout: Duration,
}

impl RelaySettings {
    fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Ok(Self {
            api_url: CORTI_API_URL.read(sources)?,
            max_streams_per_user: RELAY_MAX_STREAMS_PER_USER.read_defaulted(sources)?,
            max_streams: RELAY_MAX_STREAMS.read_defaulted(sources)?,
            max_duration: RELAY_MAX_DURATION.read_defaulted(sources)?,
            idle_timeout: RELAY_IDLE_TIMEOUT.read_defaulted(sources)?,
        })
    }
}

fn positive_count(raw: &str) -> Result<u32, String> {
    match raw.parse::<u32>() {
        Ok(0) => Err("must be more than 0".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn ws_url(raw: &str) -> Result<String, String> {
    let url = parse_url(raw, &["wss", "ws"])?;
    // The token travels in the URL's query: plain ws only to this machine.
    match reqwest::Url::parse(&url) {
        Ok(u) if u.scheme() == "ws" && !is_loopback_host(&u) => {
            Err("must use wss (ws is accepted only for loopback hosts)".into())
        }
        _ => Ok(url),
    }
}

/// Corti's own speech API base for an environment.
pub fn corti_api_url_for(environment: Environment) -> String {
    format!("wss://api.{}.corti.app", environment.as_str())
}

/// Read by `dev` only: how long the stand-in's tokens live (Corti's own by default).
pub const DEV_TOKEN_LIFETIME: Setting<Duration> =
    Setting::plain("DEV_TOKEN_LIFETIME", setting_duration).or("300");

/// Every setting as loaded. Values `serve` requires may be missing here; only
/// [`Settings::for_serve`] turns them into a [`ServeSettings`] the service can run on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen_addr: SocketAddr,
    pub corti_environment: Option<Environment>,
    pub corti_tenant: Tenant,
    pub corti_client_id: Option<String>,
    pub corti_client_secret: Option<SecretString>,
    /// Where `CORTI_CLIENT_SECRET` was read from, when it came from `_FILE`.
    pub corti_client_secret_file: Option<PathBuf>,
    pub corti_auth_url: Option<String>,
    /// The TOML file's `[[tenants]]`, each complete and checked on its own.
    pub tenants: Vec<CortiSettings>,
    pub default_tenant: Option<Tenant>,
    pub session_jwt_secret: Option<SecretString>,
    pub session_jwt_previous_secret: Option<SecretString>,
    pub session_jwt_rotation_grace: Duration,
    pub session_jwt_public_key_file: Option<PathBuf>,
    pub session_jwks_url: Option<String>,
    pub session_jwks_refresh_interval: Duration,
    pub session_leeway: Duration,
    pub session_jwt_issuer: Option<String>,
    pub session_jwt_audience: Option<String>,
    pub session_jwt_unchecked_claims: UncheckedClaims,
    pub session_cookie_name: String,
    pub session_introspection_url: Option<String>,
    pub session_introspection_client_id: Option<String>,
    pub session_introspection_audience: Option<String>,
    pub session_introspection_client_secret: Option<SecretString>,
    /// Where the secret was read from, when `_FILE` was used: re-read on change/SIGHUP.
    pub session_introspection_client_secret_file: Option<PathBuf>,
    pub session_introspection_cache_ttl: Duration,
    pub database_url: String,
    pub allowed_origins: Vec<String>,
    pub rate_limit_per_user: Rate,
    pub rate_limit_per_ip: Rate,
    pub upstream_rate_limit: Rate,
    pub rate_limit_redis_url: Option<String>,
    pub token_cache_key: Option<SecretString>,
    pub token_reuse_min_ttl: Duration,
    pub upstream_timeout: Duration,
    pub shutdown_grace: Duration,
    pub audit_hmac_key: Option<SecretString>,
    pub audit_signing_key: Option<SecretString>,
    /// `AUDIT_VERIFIER_KEY` as given (checked by the audit commands that use it).
    pub audit_verifier_key: Option<String>,
    pub audit_allow_unsigned: bool,
    pub audit_reader_role: String,
    pub trusted_proxies: Vec<IpNet>,
    pub dev_token_lifetime: Duration,
    pub deny_list_file: Option<PathBuf>,
    /// The files the secrets re-read on SIGHUP were read from (their `NAME_FILE`).
    pub secret_files: SecretFiles,
    pub relay: RelaySettings,
}

/// Where reloadable secrets were read from, when they came from `NAME_FILE`.
#[derive(Debug, Clone, Default)]
pub struct SecretFiles {
    pub session_jwt_secret: Option<PathBuf>,
    pub session_jwt_previous_secret: Option<PathBuf>,
    pub audit_hmac_key: Option<PathBuf>,
}

impl Default for Settings {
    /// Every default of the table, nothing else set.
    fn default() -> Self {
        match Settings::load(&Sources::default()) {
            Ok(settings) => settings,
            // The defaults are constants checked by a unit test.
            Err(e) => unreachable!("a default setting does not parse: {e}"),
        }
    }
}

/// Where raw setting values come from: the environment over a TOML file.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    env: HashMap<String, String>,
    file: HashMap<String, String>,
    /// The TOML file's `[[tenants]]` tables, as written.
    tenants: Option<toml::Value>,
}

impl Sources {
    /// The process environment plus the optional `--config` file.
    pub fn from_process(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let (file, tenants) = match config_file {
            Some(path) => read_toml(path)?,
            None => (HashMap::new(), None),
        };
        Ok(Self {
            env: std::env::vars().collect(),
            file,
            tenants,
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
            tenants: None,
        }
    }

    /// Explicit values plus a TOML text as `--config` would give it (tests).
    pub fn from_pairs_and_toml<I, K, V>(pairs: I, toml_text: &str) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let (file, tenants) = parse_toml(toml_text, "the TOML text")?;
        Ok(Self {
            file,
            tenants,
            ..Self::from_pairs(pairs)
        })
    }

    fn value(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .or_else(|| self.file.get(&name.to_ascii_lowercase()))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// The file a secret is read from, when it is given as `NAME_FILE`.
    fn secret_file(&self, name: &str) -> Option<PathBuf> {
        let file_key = format!("{name}_FILE");
        let direct = |source: &HashMap<String, String>, key: &str| {
            source.get(key).is_some_and(|v| !v.is_empty())
        };
        let path = |source: &HashMap<String, String>, key: &str| {
            source
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        // The same precedence as `secret`: the environment's form, else the file's.
        if direct(&self.env, name) {
            return None;
        }
        path(&self.env, &file_key).or_else(|| {
            let lower = name.to_ascii_lowercase();
            (!direct(&self.file, &lower))
                .then(|| path(&self.file, &file_key.to_ascii_lowercase()))
                .flatten()
        })
    }

    /// A secret: `NAME` or the contents of the file named by `NAME_FILE`.
    fn secret(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let file_key = format!("{name}_FILE");
        // Environment wins over the TOML file, whichever of the two forms it uses.
        let chosen = match secret_form(&self.env, name, &file_key)? {
            Some(form) => Some(form),
            None => secret_form(
                &self.file,
                &name.to_ascii_lowercase(),
                &file_key.to_ascii_lowercase(),
            )?,
        };
        match chosen {
            None => Ok(None),
            Some(SecretForm::Value(v)) => Ok(Some(v)),
            Some(SecretForm::Path(path)) => read_secret_file(Path::new(path.trim()))
                .map(Some)
                .map_err(|problem| ConfigError::new(&file_key, problem)),
        }
    }

    /// The file a secret is read from, when it is given as `NAME_FILE` (the form that
    /// wins, as in [`Sources::secret`]); such a secret is re-read on change and SIGHUP.
    fn secret_path(&self, name: &str) -> Option<PathBuf> {
        let file_key = format!("{name}_FILE");
        let pick = |source: &HashMap<String, String>, key: &str, file_key: &str| match secret_form(
            source, key, file_key,
        ) {
            Ok(Some(SecretForm::Path(p))) => Some(Some(PathBuf::from(p.trim()))),
            Ok(Some(SecretForm::Value(_))) => Some(None),
            _ => None,
        };
        pick(&self.env, name, &file_key)
            .or_else(|| {
                pick(
                    &self.file,
                    &name.to_ascii_lowercase(),
                    &file_key.to_ascii_lowercase(),
                )
            })
            .flatten()
    }
}

/// A secret file's content without its trailing line break; empty or unreadable is an
/// error (start-up stops; a reload keeps the old value).
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let content = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let content = content.trim_end_matches(['\n', '\r']).to_owned();
    if content.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(content)
}

/// Which of `key` and `file_key` one source sets; both is a mistake.
fn secret_form(
    source: &HashMap<String, String>,
    key: &str,
    file_key: &str,
) -> Result<Option<SecretForm>, ConfigError> {
    let direct = source.get(key).filter(|v| !v.is_empty());
    let file = source.get(file_key).filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            &key.to_ascii_uppercase(),
            format!("set either {key} or {file_key}, not both"),
        )),
        (Some(v), None) => Ok(Some(SecretForm::Value(v.clone()))),
        (None, Some(p)) => Ok(Some(SecretForm::Path(p.clone()))),
        (None, None) => Ok(None),
    }
}

enum SecretForm {
    Value(String),
    Path(String),
}

type TomlSettings = (HashMap<String, String>, Option<toml::Value>);

fn read_toml(path: &Path) -> Result<TomlSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    parse_toml(&text, &path.display().to_string())
}

/// The flat `key = value` settings, and the `[[tenants]]` array kept as it is.
fn parse_toml(text: &str, origin: &str) -> Result<TomlSettings, ConfigError> {
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigError::new("--config", format!("{origin}: {}", e.message())))?;
    let tenants = table.remove(TENANTS_KEY);
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
                    format!("{origin}: unsupported value type"),
                ))
            }
        };
        out.insert(key.to_ascii_lowercase(), text);
    }
    Ok((out, tenants))
}

/// The crate's one duration syntax: `800ms`, `5s`, `2m`, `7d`, `1h 30m`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("must be a duration like 5s or 800ms ({e})"))
}

/// A duration setting: [`parse_duration`], or a bare number of seconds, as operators
/// write `TOKEN_REUSE_MIN_TTL=60`.
pub fn setting_duration(raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => parse_duration(raw),
    }
}

fn parse_url(raw: &str, schemes: &[&str]) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("scheme must be one of {}", schemes.join(", ")));
    }
    // Plain HTTP would carry the client secret in clear and let anyone on the path
    // swap signing keys; it is accepted only on this machine (tests, dev stand-ins).
    if url.scheme() == "http" && !is_loopback_host(&url) {
        return Err("must use https (http is accepted only for loopback hosts)".into());
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

/// Where the app's session JWTs are checked: exactly one key source.
#[derive(Debug, Clone)]
pub enum SessionKeys {
    /// HMAC key (HS256/384/512), at least 32 bytes.
    Secret(SecretString),
    /// PEM public key file (RS*/PS*/ES*/EdDSA).
    PublicKeyFile(PathBuf),
    /// The identity provider's JWKS.
    Jwks(String),
    /// Not JWTs: opaque sessions checked by RFC 7662 token introspection.
    Introspection(IntrospectionSettings),
}

/// Where and how opaque sessions are introspected.
#[derive(Debug, Clone)]
pub struct IntrospectionSettings {
    pub url: String,
    pub client_id: String,
    /// The `client_id`/`aud` values an active answer must name one of; `None` when the
    /// operator accepts any client's tokens (`SESSION_INTROSPECTION_AUDIENCE=*`).
    pub audience: Option<Vec<String>>,
    pub client_secret: SecretString,
    /// Re-read on change and on SIGHUP when the secret came from `_FILE`.
    pub client_secret_file: Option<PathBuf>,
    pub cache_ttl: Duration,
}

/// How session JWTs are accepted.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub keys: SessionKeys,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub cookie_name: String,
    pub rotation: SessionRotation,
    /// How old the cached JWKS may get before it is fetched again.
    pub jwks_refresh_interval: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// How a configured session key is rotated without a restart.
#[derive(Debug, Clone, Default)]
pub struct SessionRotation {
    /// `SESSION_JWT_SECRET_FILE`, re-read on SIGHUP and on change.
    pub secret_file: Option<PathBuf>,
    /// `SESSION_JWT_PREVIOUS_SECRET`: accepted beside the current secret.
    pub previous_secret: Option<SecretString>,
    pub previous_secret_file: Option<PathBuf>,
    /// How long a key replaced by a reload stays accepted.
    pub grace: Duration,
}

/// One Corti tenant: the client credentials and where to use them.
#[derive(Debug, Clone)]
pub struct CortiSettings {
    pub environment: Environment,
    pub tenant: Tenant,
    pub client_id: String,
    pub client_secret: SecretString,
    /// The file the secret was read from; it is re-read on change and on SIGHUP.
    pub client_secret_file: Option<PathBuf>,
    /// What the secret's file is called in settings, for log lines
    /// (`CORTI_CLIENT_SECRET_FILE` or `tenants[acme].client_secret_file`).
    pub client_secret_setting: String,
    /// The configured `CORTI_AUTH_URL` (or `auth_url`) or Corti's own for the environment.
    pub auth_url: String,
    /// The configured `CORTI_API_URL` (or `api_url`) or Corti's own: relay mode's upstream.
    pub api_url: String,
}

/// The keys a `[[tenants]]` table may have.
const TENANT_KEYS: [&str; 7] = [
    "name",
    "environment",
    "client_id",
    "client_secret",
    "client_secret_file",
    "auth_url",
    "api_url",
];

/// Reads the `[[tenants]]` tables, each on its own; how they fit together (duplicates,
/// the default) is checked in [`Settings::for_serve`].
fn tenant_tables(raw: Option<&toml::Value>) -> Result<Vec<CortiSettings>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let not_tables = || {
        ConfigError::new(
            TENANTS_KEY,
            "must be an array of tables: [[tenants]] with name, environment, client_id and client_secret or client_secret_file",
        )
    };
    let items = raw.as_array().ok_or_else(not_tables)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| tenant_table(i, item.as_table().ok_or_else(not_tables)?))
        .collect()
}

fn tenant_table(index: usize, table: &toml::Table) -> Result<CortiSettings, ConfigError> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(_) => Err("must be a string".into()),
        }
    };
    let at_index = |key: &str| format!("{TENANTS_KEY}[{index}].{key}");
    let name = text("name")
        .and_then(|n| n.ok_or_else(|| "is required".to_string()))
        .and_then(|n| Tenant::parse(&n))
        .map_err(|problem| ConfigError::new(&at_index("name"), problem))?;
    let key = |k: &str| format!("{TENANTS_KEY}[{name}].{k}");
    let fail = |k: &str| {
        let setting = key(k);
        move |problem: String| ConfigError::new(&setting, problem)
    };
    if let Some(unknown) = table.keys().find(|k| !TENANT_KEYS.contains(&k.as_str())) {
        return Err(ConfigError::new(
            &key(unknown),
            format!("is not a tenant key (known: {})", TENANT_KEYS.join(", ")),
        ));
    }
    let environment: Environment = text("environment")
        .and_then(|e| e.ok_or_else(|| "is required (eu or us)".to_string()))
        .and_then(|e| e.parse())
        .map_err(fail("environment"))?;
    let client_id = text("client_id")
        .and_then(|c| c.ok_or_else(|| "is required".to_string()))
        .map_err(fail("client_id"))?;
    let secret_value = text("client_secret").map_err(fail("client_secret"))?;
    let secret_path = text("client_secret_file").map_err(fail("client_secret_file"))?;
    let (client_secret, client_secret_file) = match (secret_value, secret_path) {
        (Some(_), Some(_)) => {
            return Err(fail("client_secret")(
                "set either client_secret or client_secret_file, not both".into(),
            ))
        }
        (None, None) => {
            return Err(fail("client_secret")(
                "is required (or client_secret_file)".into(),
            ))
        }
        (Some(value), None) => (SecretString::from(value), None),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let value = read_secret_file(&path).map_err(fail("client_secret_file"))?;
            (SecretString::from(value), Some(path))
        }
    };
    let auth_url = match text("auth_url").map_err(fail("auth_url"))? {
        Some(url) => http_url(&url).map_err(fail("auth_url"))?,
        None => corti_auth_url_for(environment),
    };
    let api_url = match text("api_url").map_err(fail("api_url"))? {
        Some(url) => ws_url(&url).map_err(fail("api_url"))?,
        None => corti_api_url_for(environment),
    };
    Ok(CortiSettings {
        api_url,
        environment,
        client_id,
        client_secret,
        client_secret_file,
        client_secret_setting: key("client_secret_file"),
        auth_url,
        tenant: name,
    })
}

impl Settings {
    /// The tenant the `CORTI_*` settings describe, if any of them is set, checked the
    /// way `serve` always checked it.
    fn env_tenant(&self) -> Result<Option<CortiSettings>, ConfigError> {
        let any_set = self.corti_environment.is_some()
            || self.corti_client_id.is_some()
            || self.corti_client_secret.is_some()
            || self.corti_auth_url.is_some();
        if !any_set && !self.tenants.is_empty() {
            return Ok(None);
        }
        let environment = self
            .corti_environment
            .ok_or_else(|| CORTI_ENVIRONMENT.error("is required (eu or us)"))?;
        let client_id = self
            .corti_client_id
            .clone()
            .ok_or_else(|| CORTI_CLIENT_ID.error("is required"))?;
        let client_secret = self.corti_client_secret.clone().ok_or_else(|| {
            CORTI_CLIENT_SECRET.error(format!(
                "is required (or {}_FILE)",
                CORTI_CLIENT_SECRET.name
            ))
        })?;
        Ok(Some(CortiSettings {
            environment,
            tenant: self.corti_tenant.clone(),
            client_id,
            client_secret,
            client_secret_file: self.corti_client_secret_file.clone(),
            client_secret_setting: format!("{}_FILE", CORTI_CLIENT_SECRET.name),
            auth_url: self
                .corti_auth_url
                .clone()
                .unwrap_or_else(|| corti_auth_url_for(environment)),
            api_url: self
                .relay
                .api_url
                .clone()
                .unwrap_or_else(|| corti_api_url_for(environment)),
        }))
    }

    /// Every tenant `serve` runs with, the default first: the `CORTI_*` one (when set)
    /// and each `[[tenants]]` entry. Names are unique; with more than one tenant
    /// `DEFAULT_TENANT` must name one of them.
    pub fn serve_tenants(&self) -> Result<Vec<CortiSettings>, ConfigError> {
        let mut all: Vec<CortiSettings> = self.env_tenant()?.into_iter().collect();
        for tenant in &self.tenants {
            if let Some(earlier) = all.iter().find(|t| t.tenant == tenant.tenant) {
                let by = if earlier.client_secret_setting.starts_with(TENANTS_KEY) {
                    "an earlier [[tenants]] entry"
                } else {
                    "CORTI_TENANT"
                };
                return Err(ConfigError::new(
                    &format!("{TENANTS_KEY}[{}].name", tenant.tenant),
                    format!("names a tenant already configured by {by}; each tenant once"),
                ));
            }
            all.push(tenant.clone());
        }
        let default = match (&self.default_tenant, all.len()) {
            (Some(name), _) => all.iter().position(|t| t.tenant == *name).ok_or_else(|| {
                let known: Vec<&str> = all.iter().map(|t| t.tenant.as_str()).collect();
                DEFAULT_TENANT.error(format!(
                    "names {name:?}, which is not a configured tenant ({})",
                    known.join(", ")
                ))
            })?,
            (None, 1) => 0,
            (None, _) => {
                return Err(DEFAULT_TENANT.error(
                    "is required when several tenants are configured: a vend without \"tenant\" needs one",
                ))
            }
        };
        let default = all.remove(default);
        all.insert(0, default);
        Ok(all)
    }
}

/// Everything `serve` runs on, complete and checked: nothing here is optional unless
/// the service works without it.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen_addr: SocketAddr,
    /// Every Corti tenant; the first is the default (a vend without `tenant`).
    pub tenants: Vec<CortiSettings>,
    pub session: SessionSettings,
    pub database_url: String,
    pub allowed_origins: Vec<String>,
    pub rate_limit_per_user: Rate,
    pub rate_limit_per_ip: Rate,
    pub upstream_rate_limit: Rate,
    pub rate_limit_redis_url: Option<String>,
    /// Set only together with a Redis URL: tokens are then reused fleet-wide.
    pub token_cache_key: Option<SecretString>,
    pub token_reuse_min_ttl: Duration,
    pub upstream_timeout: Duration,
    pub shutdown_grace: Duration,
    pub audit_hmac_key: SecretString,
    /// `AUDIT_HMAC_KEY_FILE`: the fingerprint key is re-read from it on SIGHUP and change.
    pub audit_hmac_key_file: Option<PathBuf>,
    pub deny_list_file: Option<PathBuf>,
    /// Signs chain checkpoints; without it the service warns and writes none.
    pub audit_signing_key: Option<SecretString>,
    pub audit_reader_role: String,
    pub trusted_proxies: Vec<IpNet>,
    pub relay: RelaySettings,
}

impl ServeSettings {
    /// The default tenant.
    pub fn corti(&self) -> &CortiSettings {
        // `for_serve` never yields an empty list.
        &self.tenants[0]
    }

    /// Loads and checks in one step (tests, embedding).
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Settings::load(sources)?.for_serve()
    }
}

impl Settings {
    /// Reads every setting; fails on the first malformed one.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Ok(Settings {
            listen_addr: LISTEN_ADDR.read_defaulted(sources)?,
            corti_environment: CORTI_ENVIRONMENT.read(sources)?,
            corti_tenant: CORTI_TENANT.read_defaulted(sources)?,
            corti_client_id: CORTI_CLIENT_ID.read(sources)?,
            corti_client_secret: CORTI_CLIENT_SECRET.read(sources)?,
            corti_client_secret_file: sources.secret_path(CORTI_CLIENT_SECRET.name),
            corti_auth_url: CORTI_AUTH_URL.read(sources)?,
            tenants: tenant_tables(sources.tenants.as_ref())?,
            default_tenant: DEFAULT_TENANT.read(sources)?,
            session_jwt_secret: SESSION_JWT_SECRET.read(sources)?,
            session_jwt_previous_secret: SESSION_JWT_PREVIOUS_SECRET.read(sources)?,
            session_jwt_rotation_grace: SESSION_JWT_ROTATION_GRACE.read_defaulted(sources)?,
            session_jwt_public_key_file: SESSION_JWT_PUBLIC_KEY_FILE.read(sources)?,
            session_jwks_url: SESSION_JWKS_URL.read(sources)?,
            session_jwks_refresh_interval: SESSION_JWKS_REFRESH_INTERVAL.read_defaulted(sources)?,
            session_leeway: SESSION_LEEWAY.read_defaulted(sources)?,
            session_jwt_issuer: SESSION_JWT_ISSUER.read(sources)?,
            session_jwt_audience: SESSION_JWT_AUDIENCE.read(sources)?,
            session_jwt_unchecked_claims: SESSION_JWT_UNCHECKED_CLAIMS.read_or_default(sources)?,
            session_cookie_name: SESSION_COOKIE_NAME.read_defaulted(sources)?,
            session_introspection_url: SESSION_INTROSPECTION_URL.read(sources)?,
            session_introspection_client_id: SESSION_INTROSPECTION_CLIENT_ID.read(sources)?,
            session_introspection_audience: SESSION_INTROSPECTION_AUDIENCE.read(sources)?,
            session_introspection_client_secret: SESSION_INTROSPECTION_CLIENT_SECRET
                .read(sources)?,
            session_introspection_client_secret_file: sources
                .secret_file(SESSION_INTROSPECTION_CLIENT_SECRET.name),
            session_introspection_cache_ttl: SESSION_INTROSPECTION_CACHE_TTL
                .read_defaulted(sources)?,
            database_url: DATABASE_URL.read_defaulted(sources)?,
            allowed_origins: ALLOWED_ORIGINS.read_or_default(sources)?,
            rate_limit_per_user: RATE_LIMIT_PER_USER.read_defaulted(sources)?,
            rate_limit_per_ip: RATE_LIMIT_PER_IP.read_defaulted(sources)?,
            upstream_rate_limit: UPSTREAM_RATE_LIMIT.read_defaulted(sources)?,
            rate_limit_redis_url: redis_url_setting(sources)?,
            token_cache_key: TOKEN_CACHE_KEY.read(sources)?,
            token_reuse_min_ttl: TOKEN_REUSE_MIN_TTL.read_defaulted(sources)?,
            upstream_timeout: UPSTREAM_TIMEOUT.read_defaulted(sources)?,
            shutdown_grace: SHUTDOWN_GRACE.read_defaulted(sources)?,
            audit_hmac_key: AUDIT_HMAC_KEY.read(sources)?,
            audit_signing_key: AUDIT_SIGNING_KEY.read(sources)?,
            audit_verifier_key: AUDIT_VERIFIER_KEY.read(sources)?,
            audit_allow_unsigned: AUDIT_ALLOW_UNSIGNED.read_defaulted(sources)?,
            audit_reader_role: AUDIT_READER_ROLE.read_defaulted(sources)?,
            trusted_proxies: TRUSTED_PROXIES.read_or_default(sources)?,
            dev_token_lifetime: DEV_TOKEN_LIFETIME.read_defaulted(sources)?,
            deny_list_file: DENY_LIST_FILE.read(sources)?,
            secret_files: SecretFiles {
                session_jwt_secret: sources.secret_file(SESSION_JWT_SECRET.name),
                session_jwt_previous_secret: sources.secret_file(SESSION_JWT_PREVIOUS_SECRET.name),
                audit_hmac_key: sources.secret_file(AUDIT_HMAC_KEY.name),
            },
            relay: RelaySettings::load(sources)?,
        })
    }

    /// The one check of what `serve` cannot run without; the first gap is named.
    pub fn for_serve(self) -> Result<ServeSettings, ConfigError> {
        let tenants = self.serve_tenants()?;
        let introspection = introspection_settings(
            self.session_introspection_url,
            self.session_introspection_client_id,
            self.session_introspection_audience,
            self.session_introspection_client_secret,
            self.session_introspection_client_secret_file,
            self.session_introspection_cache_ttl,
        )?;
        let keys = match (
            self.session_jwt_secret,
            self.session_jwt_public_key_file,
            self.session_jwks_url,
            introspection,
        ) {
            (Some(secret), None, None, None) => {
                if secret.expose_secret().len() < 32 {
                    return Err(SESSION_JWT_SECRET.error("must be at least 32 bytes for HMAC"));
                }
                SessionKeys::Secret(secret)
            }
            (None, Some(path), None, None) => SessionKeys::PublicKeyFile(path),
            (None, None, Some(url), None) => SessionKeys::Jwks(url),
            (None, None, None, Some(introspection)) => SessionKeys::Introspection(introspection),
            (a, b, c, d) => {
                let set: Vec<&str> = [
                    (a.is_some(), SESSION_JWT_SECRET.name),
                    (b.is_some(), SESSION_JWT_PUBLIC_KEY_FILE.name),
                    (c.is_some(), SESSION_JWKS_URL.name),
                    (d.is_some(), SESSION_INTROSPECTION_URL.name),
                ]
                .into_iter()
                .filter_map(|(set, name)| set.then_some(name))
                .collect();
                let problem = format!(
                    "exactly one of {}, {}, {} or {} is required",
                    SESSION_JWT_SECRET.name,
                    SESSION_JWT_PUBLIC_KEY_FILE.name,
                    SESSION_JWKS_URL.name,
                    SESSION_INTROSPECTION_URL.name
                );
                return Err(match set.as_slice() {
                    [] => SESSION_JWT_SECRET.error(format!("{problem} (none set)")),
                    [first, ..] => ConfigError::new(
                        first,
                        format!("{problem}; set are: {}", set.join(" and ")),
                    ),
                });
            }
        };
        if let Some(previous) = &self.session_jwt_previous_secret {
            if !matches!(keys, SessionKeys::Secret(_)) {
                return Err(SESSION_JWT_PREVIOUS_SECRET
                    .error(format!("is used only with {}", SESSION_JWT_SECRET.name)));
            }
            if previous.expose_secret().len() < 32 {
                return Err(SESSION_JWT_PREVIOUS_SECRET.error("must be at least 32 bytes for HMAC"));
            }
        }
        check_session_claims(
            &keys,
            self.session_jwt_audience.as_deref(),
            self.session_jwt_issuer.as_deref(),
            self.session_jwt_unchecked_claims,
        )?;
        let audit_hmac_key = match self.audit_hmac_key {
            None => {
                return Err(
                    AUDIT_HMAC_KEY.error(format!("is required (or {}_FILE)", AUDIT_HMAC_KEY.name))
                )
            }
            Some(k) if k.expose_secret().len() < 16 => {
                return Err(AUDIT_HMAC_KEY.error("must be at least 16 bytes"))
            }
            Some(k) => k,
        };
        let token_cache_key = match self.token_cache_key {
            Some(k) if k.expose_secret().len() < 32 => {
                return Err(TOKEN_CACHE_KEY.error("must be at least 32 bytes"))
            }
            Some(_) if self.rate_limit_redis_url.is_none() => {
                return Err(TOKEN_CACHE_KEY.error(format!(
                    "needs {} (or {}): the key encrypts tokens shared through Redis",
                    RATE_LIMIT_REDIS_URL.name, REDIS_URL.name
                )))
            }
            key => key,
        };
        Ok(ServeSettings {
            listen_addr: self.listen_addr,
            tenants,
            session: SessionSettings {
                keys,
                issuer: self.session_jwt_issuer,
                audience: self.session_jwt_audience,
                cookie_name: self.session_cookie_name,
                jwks_refresh_interval: self.session_jwks_refresh_interval,
                leeway: self.session_leeway,
                rotation: SessionRotation {
                    secret_file: self.secret_files.session_jwt_secret,
                    previous_secret: self.session_jwt_previous_secret,
                    previous_secret_file: self.secret_files.session_jwt_previous_secret,
                    grace: self.session_jwt_rotation_grace,
                },
            },
            database_url: self.database_url,
            allowed_origins: self.allowed_origins,
            rate_limit_per_user: self.rate_limit_per_user,
            rate_limit_per_ip: self.rate_limit_per_ip,
            upstream_rate_limit: self.upstream_rate_limit,
            rate_limit_redis_url: self.rate_limit_redis_url,
            token_cache_key,
            token_reuse_min_ttl: self.token_reuse_min_ttl,
            upstream_timeout: self.upstream_timeout,
            shutdown_grace: self.shutdown_grace,
            audit_hmac_key,
            audit_hmac_key_file: self.secret_files.audit_hmac_key,
            deny_list_file: self.deny_list_file,
            audit_signing_key: self.audit_signing_key,
            audit_reader_role: self.audit_reader_role,
            trusted_proxies: self.trusted_proxies,
            relay: self.relay,
        })
    }

    /// `serve` runs with signed audit checkpoints unless told otherwise: without them,
    /// whoever can write the audit database can cut its tail and nothing would tell.
    pub fn check_signed(&self) -> Result<(), ConfigError> {
        if self.audit_signing_key.is_some() || self.audit_allow_unsigned {
            return Ok(());
        }
        Err(AUDIT_SIGNING_KEY.error(format!(
            "is required (or {0}_FILE; make one with `token-vendor audit keygen`): without \
             signed checkpoints, whoever can write the audit database can rewrite it \
             unnoticed. Set {1}=true to run without.",
            AUDIT_SIGNING_KEY.name, AUDIT_ALLOW_UNSIGNED.name
        )))
    }

    /// The effective settings as `KEY=value` lines, every secret redacted.
    pub fn redacted_lines(&self) -> Vec<String> {
        const UNSET: &str = "(unset)";
        fn line<T>(setting: &Setting<T>, value: impl fmt::Display) -> String {
            format!("{}={value}", setting.name)
        }
        fn opt<T>(setting: &Setting<T>, value: Option<impl fmt::Display>) -> String {
            match value {
                Some(v) => line(setting, v),
                None => line(setting, UNSET),
            }
        }
        fn secret(setting: &Setting<SecretString>, value: &Option<SecretString>) -> String {
            line(
                setting,
                if value.is_some() {
                    "(set, redacted)"
                } else {
                    UNSET
                },
            )
        }
        let auth_url = self
            .corti_auth_url
            .clone()
            .or_else(|| self.corti_environment.map(corti_auth_url_for));
        let mut lines = vec![
            line(&LISTEN_ADDR, self.listen_addr),
            opt(
                &CORTI_ENVIRONMENT,
                self.corti_environment.map(Environment::as_str),
            ),
            line(&CORTI_TENANT, &self.corti_tenant),
            opt(&CORTI_CLIENT_ID, self.corti_client_id.as_ref()),
            secret(&CORTI_CLIENT_SECRET, &self.corti_client_secret),
            opt(&CORTI_AUTH_URL, auth_url.as_deref().map(redact_url)),
            opt(&DEFAULT_TENANT, self.default_tenant.as_ref()),
            secret(&SESSION_JWT_SECRET, &self.session_jwt_secret),
            secret(
                &SESSION_JWT_PREVIOUS_SECRET,
                &self.session_jwt_previous_secret,
            ),
            line(
                &SESSION_JWT_ROTATION_GRACE,
                humantime::format_duration(self.session_jwt_rotation_grace),
            ),
            opt(
                &SESSION_JWT_PUBLIC_KEY_FILE,
                self.session_jwt_public_key_file
                    .as_ref()
                    .map(|p| p.display()),
            ),
            opt(
                &SESSION_JWKS_URL,
                self.session_jwks_url.as_deref().map(redact_url),
            ),
            line(
                &SESSION_JWKS_REFRESH_INTERVAL,
                humantime::format_duration(self.session_jwks_refresh_interval),
            ),
            line(
                &SESSION_LEEWAY,
                humantime::format_duration(self.session_leeway),
            ),
            opt(&SESSION_JWT_ISSUER, self.session_jwt_issuer.as_ref()),
            opt(&SESSION_JWT_AUDIENCE, self.session_jwt_audience.as_ref()),
            opt(
                &SESSION_JWT_UNCHECKED_CLAIMS,
                Some(self.session_jwt_unchecked_claims)
                    .filter(|claims| *claims != UncheckedClaims::default()),
            ),
            line(&SESSION_COOKIE_NAME, &self.session_cookie_name),
            opt(
                &SESSION_INTROSPECTION_URL,
                self.session_introspection_url.as_deref().map(redact_url),
            ),
            opt(
                &SESSION_INTROSPECTION_CLIENT_ID,
                self.session_introspection_client_id.as_ref(),
            ),
            opt(
                &SESSION_INTROSPECTION_AUDIENCE,
                self.session_introspection_audience.as_ref(),
            ),
            secret(
                &SESSION_INTROSPECTION_CLIENT_SECRET,
                &self.session_introspection_client_secret,
            ),
            line(
                &SESSION_INTROSPECTION_CACHE_TTL,
                humantime::format_duration(self.session_introspection_cache_ttl),
            ),
            line(&DATABASE_URL, redact_url(&self.database_url)),
            line(&ALLOWED_ORIGINS, self.allowed_origins.join(",")),
            line(&RATE_LIMIT_PER_USER, self.rate_limit_per_user),
            line(&RATE_LIMIT_PER_IP, self.rate_limit_per_ip),
            line(&UPSTREAM_RATE_LIMIT, self.upstream_rate_limit),
            opt(
                &RATE_LIMIT_REDIS_URL,
                self.rate_limit_redis_url.as_deref().map(redact_url),
            ),
            secret(&TOKEN_CACHE_KEY, &self.token_cache_key),
            line(
                &TOKEN_REUSE_MIN_TTL,
                format_args!("{}s", self.token_reuse_min_ttl.as_secs()),
            ),
            line(
                &UPSTREAM_TIMEOUT,
                humantime::format_duration(self.upstream_timeout),
            ),
            line(
                &SHUTDOWN_GRACE,
                humantime::format_duration(self.shutdown_grace),
            ),
            opt(
                &CORTI_API_URL,
                self.relay
                    .api_url
                    .clone()
                    .or_else(|| self.corti_environment.map(corti_api_url_for)),
            ),
            line(&RELAY_MAX_STREAMS_PER_USER, self.relay.max_streams_per_user),
            line(&RELAY_MAX_STREAMS, self.relay.max_streams),
            line(
                &RELAY_MAX_DURATION,
                humantime::format_duration(self.relay.max_duration),
            ),
            line(
                &RELAY_IDLE_TIMEOUT,
                humantime::format_duration(self.relay.idle_timeout),
            ),
            secret(&AUDIT_HMAC_KEY, &self.audit_hmac_key),
            secret(&AUDIT_SIGNING_KEY, &self.audit_signing_key),
            opt(&AUDIT_VERIFIER_KEY, self.audit_verifier_key.as_ref()),
            line(&AUDIT_ALLOW_UNSIGNED, self.audit_allow_unsigned),
            line(&AUDIT_READER_ROLE, &self.audit_reader_role),
            opt(
                &DENY_LIST_FILE,
                self.deny_list_file.as_ref().map(|p| p.display()),
            ),
            line(
                &TRUSTED_PROXIES,
                self.trusted_proxies
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ];
        for t in &self.tenants {
            let secret_file = t
                .client_secret_file
                .as_ref()
                .map(|p| format!(" client_secret_file={}", p.display()))
                .unwrap_or_default();
            lines.push(format!(
                "{TENANTS_KEY}[{}]=environment={} client_id={} client_secret=(set, redacted){secret_file} auth_url={}",
                t.tenant,
                t.environment.as_str(),
                t.client_id,
                redact_url(&t.auth_url)
            ));
        }
        lines
    }
}

/// The introspection client, complete, or `None` when no URL is set; an id or secret
/// without a URL is a leftover that would silently do nothing, so it is refused.
fn introspection_settings(
    url: Option<String>,
    client_id: Option<String>,
    audience: Option<String>,
    client_secret: Option<SecretString>,
    client_secret_file: Option<PathBuf>,
    cache_ttl: Duration,
) -> Result<Option<IntrospectionSettings>, ConfigError> {
    let Some(url) = url else {
        for (set, name) in [
            (client_id.is_some(), SESSION_INTROSPECTION_CLIENT_ID.name),
            (audience.is_some(), SESSION_INTROSPECTION_AUDIENCE.name),
            (
                client_secret.is_some(),
                SESSION_INTROSPECTION_CLIENT_SECRET.name,
            ),
        ] {
            if set {
                return Err(ConfigError::new(
                    name,
                    format!("is set but {} is not", SESSION_INTROSPECTION_URL.name),
                ));
            }
        }
        return Ok(None);
    };
    let client_id = client_id.ok_or_else(|| {
        SESSION_INTROSPECTION_CLIENT_ID.error(format!(
            "is required with {}",
            SESSION_INTROSPECTION_URL.name
        ))
    })?;
    let client_secret = client_secret.ok_or_else(|| {
        SESSION_INTROSPECTION_CLIENT_SECRET.error(format!(
            "is required with {} (or {}_FILE)",
            SESSION_INTROSPECTION_URL.name, SESSION_INTROSPECTION_CLIENT_SECRET.name
        ))
    })?;
    // The endpoint vouches for every active token of its provider, whichever client it
    // was issued to; as with a public session key, the audience is required unless
    // explicitly given up.
    let audience = match audience.as_deref().map(str::trim) {
        None | Some("") => {
            return Err(SESSION_INTROSPECTION_AUDIENCE.error(format!(
                "is required with {}: the client id(s) or audience(s) a session token must \
                 be issued to (or * to accept a token issued to any client of the provider)",
                SESSION_INTROSPECTION_URL.name
            )))
        }
        Some("*") => None,
        Some(list) => Some(
            list.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
    };
    Ok(Some(IntrospectionSettings {
        url,
        client_id,
        audience,
        client_secret,
        client_secret_file,
        cache_ttl,
    }))
}

/// A public session key (JWKS or PEM) usually belongs to an identity provider that signs
/// tokens for many clients: without `aud` and `iss` checks, a token it signed for any of
/// them would be a session here. So both are required, unless explicitly given up.
fn check_session_claims(
    keys: &SessionKeys,
    audience: Option<&str>,
    issuer: Option<&str>,
    unchecked: UncheckedClaims,
) -> Result<(), ConfigError> {
    if matches!(keys, SessionKeys::Introspection(_)) {
        // The introspection endpoint judges the session; a JWT rule would do nothing.
        for (set, name) in [
            (audience.is_some(), SESSION_JWT_AUDIENCE.name),
            (issuer.is_some(), SESSION_JWT_ISSUER.name),
            (
                unchecked != UncheckedClaims::default(),
                SESSION_JWT_UNCHECKED_CLAIMS.name,
            ),
        ] {
            if set {
                return Err(ConfigError::new(
                    name,
                    format!(
                        "applies to session JWTs only and has no effect with {}; remove it",
                        SESSION_INTROSPECTION_URL.name
                    ),
                ));
            }
        }
        return Ok(());
    }
    for (setting, value, given_up, claim) in [
        (&SESSION_JWT_AUDIENCE, audience, unchecked.aud, "aud"),
        (&SESSION_JWT_ISSUER, issuer, unchecked.iss, "iss"),
    ] {
        if value.is_some() && given_up {
            return Err(SESSION_JWT_UNCHECKED_CLAIMS.error(format!(
                "lists {claim}, but {} is set; remove one of the two",
                setting.name
            )));
        }
        if value.is_none() && !given_up && !matches!(keys, SessionKeys::Secret(_)) {
            return Err(setting.error(format!(
                "is required with {} or {}: without it, a token the identity provider \
                 signed for any other client is accepted here (set {}={claim} to accept that)",
                SESSION_JWKS_URL.name,
                SESSION_JWT_PUBLIC_KEY_FILE.name,
                SESSION_JWT_UNCHECKED_CLAIMS.name
            )));
        }
    }
    Ok(())
}

/// Corti's own auth server for an environment.
fn corti_auth_url_for(environment: Environment) -> String {
    format!("https://auth.{}.corti.app", environment.as_str())
}

/// Hides the userinfo of a `scheme://user:password@host/…` URL: the password, and
/// the user name too, which some services take as the credential itself.
pub fn redact_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("redacted");
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            url.to_string()
        }
        Ok(_) => raw.to_owned(),
        // Not a URL the parser takes: keep only what precedes a possible userinfo.
        Err(_) => match raw.rsplit_once('@') {
            Some((before, after)) => match before.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://redacted@{after}"),
                None => format!("redacted@{after}"),
            },
            None => raw.to_owned(),
        },
    }
}

/// Older name of [`redact_url`].
pub fn redact_url_password(raw: &str) -> String {
    redact_url(raw)
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

    #[test]
    fn every_default_parses() {
        let s = Settings::load(&Sources::default()).expect("defaults parse");
        assert_eq!(s.listen_addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(s.corti_tenant.as_str(), "base");
        assert_eq!(s.token_reuse_min_ttl, Duration::from_secs(150));
        assert_eq!(s.upstream_timeout, Duration::from_secs(5));
        assert_eq!(s.shutdown_grace, Duration::from_secs(10));
        assert_eq!(s.rate_limit_per_user.to_string(), "30/minute");
    }

    fn complete() -> Vec<(&'static str, String)> {
        vec![
            ("CORTI_ENVIRONMENT", "us".into()),
            ("CORTI_CLIENT_ID", "client".into()),
            ("CORTI_CLIENT_SECRET", "fake-client-secret".into()),
            ("SESSION_JWT_SECRET", "x".repeat(32)),
            ("AUDIT_HMAC_KEY", "y".repeat(16)),
        ]
    }

    #[test]
    fn serve_settings_are_complete_or_name_the_first_gap() {
        let s = ServeSettings::load(&Sources::from_pairs(complete())).unwrap();
        assert_eq!(s.corti().auth_url, "https://auth.us.corti.app");
        assert!(matches!(s.session.keys, SessionKeys::Secret(_)));
        for (i, (name, _)) in complete().into_iter().enumerate() {
            let mut pairs = complete();
            pairs.remove(i);
            let err = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap_err();
            assert_eq!(err.setting, name, "{err}");
        }
    }

    #[test]
    fn introspection_is_a_session_source_of_its_own() {
        let introspection = |pairs: &mut Vec<(&'static str, String)>| {
            pairs.push((
                "SESSION_INTROSPECTION_URL",
                "https://id.example.test/introspect".into(),
            ));
            pairs.push(("SESSION_INTROSPECTION_CLIENT_ID", "token-vendor".into()));
            pairs.push(("SESSION_INTROSPECTION_AUDIENCE", "app".into()));
            pairs.push((
                "SESSION_INTROSPECTION_CLIENT_SECRET",
                "fake-introspection-secret".into(),
            ));
        };
        // Beside a JWT key: refused, naming both.
        let mut pairs = complete();
        introspection(&mut pairs);
        let err = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("SESSION_JWT_SECRET and SESSION_INTROSPECTION_URL"),
            "{text}"
        );
        // Alone: accepted, with the default cache bound.
        let mut pairs = complete();
        pairs.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
        introspection(&mut pairs);
        let s = ServeSettings::load(&Sources::from_pairs(pairs.clone())).unwrap();
        let SessionKeys::Introspection(i) = &s.session.keys else {
            panic!("not introspection: {:?}", s.session.keys);
        };
        assert_eq!(i.cache_ttl, Duration::from_secs(30));
        assert_eq!(i.client_id, "token-vendor");
        // A cache bound past the cap, a missing secret, a JWT-only rule: each refused.
        let mut too_long = pairs.clone();
        too_long.push(("SESSION_INTROSPECTION_CACHE_TTL", "10m".into()));
        let err = ServeSettings::load(&Sources::from_pairs(too_long)).unwrap_err();
        assert_eq!(err.setting, "SESSION_INTROSPECTION_CACHE_TTL");
        let mut no_secret = pairs.clone();
        no_secret.retain(|(k, _)| *k != "SESSION_INTROSPECTION_CLIENT_SECRET");
        let err = ServeSettings::load(&Sources::from_pairs(no_secret)).unwrap_err();
        assert_eq!(err.setting, "SESSION_INTROSPECTION_CLIENT_SECRET");
        let mut jwt_rule = pairs.clone();
        jwt_rule.push(("SESSION_JWT_AUDIENCE", "token-vendor".into()));
        let err = ServeSettings::load(&Sources::from_pairs(jwt_rule)).unwrap_err();
        assert_eq!(err.setting, "SESSION_JWT_AUDIENCE");
        // A client id without a URL would do nothing: refused.
        let mut leftover = complete();
        leftover.push(("SESSION_INTROSPECTION_CLIENT_ID", "token-vendor".into()));
        let err = ServeSettings::load(&Sources::from_pairs(leftover)).unwrap_err();
        assert_eq!(err.setting, "SESSION_INTROSPECTION_CLIENT_ID");
        // The secret is redacted in check-config's listing.
        let settings = Settings::load(&Sources::from_pairs(pairs)).unwrap();
        let lines = settings.redacted_lines().join("\n");
        assert!(!lines.contains("fake-introspection-secret"), "{lines}");
        assert!(
            lines.contains("SESSION_INTROSPECTION_CLIENT_SECRET=(set, redacted)"),
            "{lines}"
        );
    }

    #[test]
    fn introspection_secret_file_is_remembered_for_reloading() {
        let dir = std::env::temp_dir().join(format!("tv-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("introspection-secret");
        std::fs::write(&path, "fake-secret-from-file\n").unwrap();
        let sources = Sources::from_pairs([(
            "SESSION_INTROSPECTION_CLIENT_SECRET_FILE",
            path.to_str().unwrap(),
        )]);
        let s = Settings::load(&sources).unwrap();
        assert_eq!(
            s.session_introspection_client_secret_file.as_deref(),
            Some(path.as_path())
        );
        assert_eq!(
            s.session_introspection_client_secret
                .as_ref()
                .map(|v| v.expose_secret().to_owned())
                .as_deref(),
            Some("fake-secret-from-file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn serve_takes_exactly_one_session_key_source() {
        let mut pairs = complete();
        pairs.push(("SESSION_JWKS_URL", "https://id.example.test/jwks".into()));
        let err = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let mut pairs = complete();
        pairs.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
        pairs.push(("SESSION_JWKS_URL", "https://id.example.test/jwks".into()));
        pairs.push(("SESSION_JWT_AUDIENCE", "token-vendor".into()));
        pairs.push(("SESSION_JWT_ISSUER", "https://id.example.test".into()));
        let s = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap();
        assert!(
            matches!(s.session.keys, SessionKeys::Jwks(ref u) if u == "https://id.example.test/jwks")
        );
    }

    fn with(extra: &[(&'static str, &str)]) -> Result<ServeSettings, ConfigError> {
        let mut pairs = complete();
        pairs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        ServeSettings::load(&Sources::from_pairs(pairs))
    }

    #[test]
    fn redis_url_is_another_name_for_the_rate_limit_redis_url() {
        let s = with(&[("REDIS_URL", "redis://cache.internal:6379")]).unwrap();
        assert_eq!(
            s.rate_limit_redis_url.as_deref(),
            Some("redis://cache.internal:6379")
        );
        let same = [
            ("REDIS_URL", "redis://cache.internal:6379"),
            ("RATE_LIMIT_REDIS_URL", "redis://cache.internal:6379"),
        ];
        assert!(with(&same).is_ok());
        let err = with(&[
            ("REDIS_URL", "redis://a.internal:6379"),
            ("RATE_LIMIT_REDIS_URL", "redis://b.internal:6379"),
        ])
        .unwrap_err();
        assert_eq!(err.setting, "REDIS_URL", "{err}");
    }

    #[test]
    fn the_token_cache_key_is_long_and_comes_with_redis() {
        let key = "k".repeat(32);
        let redis = ("REDIS_URL", "redis://cache.internal:6379");
        let s = with(&[redis, ("TOKEN_CACHE_KEY", &key)]).unwrap();
        assert!(s.token_cache_key.is_some());
        let short = with(&[redis, ("TOKEN_CACHE_KEY", &key[1..])]).unwrap_err();
        assert_eq!(short.setting, "TOKEN_CACHE_KEY", "{short}");
        let alone = with(&[("TOKEN_CACHE_KEY", &key)]).unwrap_err();
        assert_eq!(alone.setting, "TOKEN_CACHE_KEY", "{alone}");
        assert!(alone.to_string().contains("REDIS_URL"), "{alone}");
    }

    #[test]
    fn a_public_session_key_needs_audience_and_issuer_unless_given_up() {
        let jwks = || {
            let mut pairs = complete();
            pairs.retain(|(k, _)| *k != "SESSION_JWT_SECRET");
            pairs.push(("SESSION_JWKS_URL", "https://id.example.test/jwks".into()));
            pairs
        };
        let err = ServeSettings::load(&Sources::from_pairs(jwks())).unwrap_err();
        assert_eq!(err.setting, "SESSION_JWT_AUDIENCE", "{err}");
        let mut pairs = jwks();
        pairs.push(("SESSION_JWT_UNCHECKED_CLAIMS", "aud".into()));
        let err = ServeSettings::load(&Sources::from_pairs(pairs.clone())).unwrap_err();
        assert_eq!(err.setting, "SESSION_JWT_ISSUER", "{err}");
        pairs.push(("SESSION_JWT_ISSUER", "https://id.example.test".into()));
        let s = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap();
        assert_eq!(s.session.audience, None);
        // An HMAC secret is the app's own: nobody else signs with it.
        assert!(ServeSettings::load(&Sources::from_pairs(complete())).is_ok());
        let s = Settings::load(&Sources::from_pairs([(
            "SESSION_JWT_UNCHECKED_CLAIMS",
            " iss , aud ",
        )]))
        .unwrap();
        assert_eq!(s.session_jwt_unchecked_claims.to_string(), "aud,iss");
    }

    #[test]
    fn dev_token_lifetime_is_read_like_every_other_setting() {
        let mut sources = Sources::default();
        sources
            .file
            .insert("dev_token_lifetime".into(), "2m".into());
        let s = Settings::load(&sources).unwrap();
        assert_eq!(s.dev_token_lifetime, Duration::from_secs(120));
        let s = Settings::load(&Sources::from_pairs([("DEV_TOKEN_LIFETIME", "45")])).unwrap();
        assert_eq!(s.dev_token_lifetime, Duration::from_secs(45));
    }

    /// The complete settings without any `CORTI_*`, plus a TOML text.
    fn tenants_toml(text: &str) -> Result<ServeSettings, ConfigError> {
        let mut pairs = complete();
        pairs.retain(|(k, _)| !k.starts_with("CORTI_"));
        ServeSettings::load(&Sources::from_pairs_and_toml(pairs, text)?)
    }

    const TWO: &str = r#"
default_tenant = "acme"

[[tenants]]
name = "base"
environment = "eu"
client_id = "base-client"
client_secret = "fake-base-secret"

[[tenants]]
name = "acme"
environment = "us"
client_id = "acme-client"
client_secret = "fake-acme-secret"
auth_url = "http://127.0.0.1:9/"
"#;

    #[test]
    fn tenants_come_from_the_toml_file_with_the_default_first() {
        let s = tenants_toml(TWO).unwrap();
        let names: Vec<&str> = s.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(names, ["acme", "base"]);
        assert_eq!(s.corti().environment, Environment::Us);
        assert_eq!(s.corti().auth_url, "http://127.0.0.1:9");
        assert_eq!(s.tenants[1].auth_url, "https://auth.eu.corti.app");
        assert_eq!(
            s.tenants[1].client_secret.expose_secret(),
            "fake-base-secret"
        );
        let lines = Settings::load(
            &Sources::from_pairs_and_toml(Vec::<(String, String)>::new(), TWO).unwrap(),
        )
        .unwrap()
        .redacted_lines()
        .join("\n");
        assert!(lines.contains("DEFAULT_TENANT=acme"), "{lines}");
        assert!(
            lines.contains(
                "tenants[acme]=environment=us client_id=acme-client client_secret=(set, redacted)"
            ),
            "{lines}"
        );
        assert!(!lines.contains("fake-acme-secret") && !lines.contains("fake-base-secret"));
    }

    #[test]
    fn a_single_tenant_needs_no_default_and_corti_settings_are_one_more_tenant() {
        let one = TWO
            .split("[[tenants]]")
            .take(2)
            .collect::<Vec<_>>()
            .join("[[tenants]]");
        let one = one.replace("default_tenant = \"acme\"", "");
        assert_eq!(tenants_toml(&one).unwrap().corti().tenant.as_str(), "base");
        // CORTI_* (tenant `base`) beside an `acme` entry: two tenants, so a default.
        let acme = format!("[[tenants]]{}", TWO.split("[[tenants]]").nth(2).unwrap());
        let both = |extra: &str| {
            ServeSettings::load(
                &Sources::from_pairs_and_toml(complete(), &format!("{extra}\n{acme}")).unwrap(),
            )
        };
        let err = both("").unwrap_err();
        assert_eq!(err.setting, "DEFAULT_TENANT", "{err}");
        let s = both("default_tenant = \"base\"").unwrap();
        let names: Vec<&str> = s.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(names, ["base", "acme"]);
        assert_eq!(s.corti().client_id, "client");
        // The same name from CORTI_TENANT and [[tenants]] is one tenant twice.
        let mut pairs = complete();
        pairs.push(("CORTI_TENANT", "acme".into()));
        let err =
            ServeSettings::load(&Sources::from_pairs_and_toml(pairs, &acme).unwrap()).unwrap_err();
        assert_eq!(err.setting, "tenants[acme].name", "{err}");
        assert!(err.problem.contains("CORTI_TENANT"), "{err}");
    }

    #[test]
    fn each_tenant_mistake_names_its_key() {
        let cases = [
            (
                TWO.replace("name = \"acme\"", "name = \"base\""),
                "tenants[base].name",
            ),
            (
                TWO.replace("\"us\"", "\"mars\""),
                "tenants[acme].environment",
            ),
            (
                TWO.replace("client_id = \"acme-client\"", ""),
                "tenants[acme].client_id",
            ),
            (
                TWO.replace("client_secret = \"fake-acme-secret\"", ""),
                "tenants[acme].client_secret",
            ),
            (
                TWO.replace(
                    "client_secret = \"fake-acme-secret\"",
                    "client_secret = \"x\"\nclient_secret_file = \"/x\"",
                ),
                "tenants[acme].client_secret",
            ),
            (
                TWO.replace(
                    "client_secret = \"fake-acme-secret\"",
                    "client_secret_file = \"/nonexistent/tv-secret\"",
                ),
                "tenants[acme].client_secret_file",
            ),
            (
                TWO.replace("http://127.0.0.1:9/", "http://auth.example.test"),
                "tenants[acme].auth_url",
            ),
            (
                TWO.replace("name = \"acme\"", "name = \"ac me\""),
                "tenants[1].name",
            ),
            (
                TWO.replace("name = \"acme\"", "nmae = \"acme\""),
                "tenants[1].name",
            ),
            (
                TWO.replace("auth_url", "auth_uri"),
                "tenants[acme].auth_uri",
            ),
            (
                TWO.replace("default_tenant = \"acme\"", "default_tenant = \"zeta\""),
                "DEFAULT_TENANT",
            ),
            (
                TWO.replace("default_tenant = \"acme\"", ""),
                "DEFAULT_TENANT",
            ),
            ("tenants = \"base\"".to_owned(), "tenants"),
        ];
        for (text, key) in cases {
            let err = tenants_toml(&text).unwrap_err();
            assert_eq!(err.setting, key, "{err}\n{text}");
        }
        // Without [[tenants]] and CORTI_*, the old first gap is still named.
        let err = tenants_toml("").unwrap_err();
        assert_eq!(err.setting, "CORTI_ENVIRONMENT", "{err}");
    }

    #[test]
    fn a_secret_file_is_remembered_so_it_can_be_re_read() {
        let dir = std::env::temp_dir().join(format!("tv-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acme");
        std::fs::write(&path, "fake-acme-from-file\n").unwrap();
        let text = TWO.replace(
            "client_secret = \"fake-acme-secret\"",
            &format!("client_secret_file = \"{}\"", path.display()),
        );
        let s = tenants_toml(&text).unwrap();
        assert_eq!(
            s.corti().client_secret.expose_secret(),
            "fake-acme-from-file"
        );
        assert_eq!(
            s.corti().client_secret_file.as_deref(),
            Some(path.as_path())
        );
        assert_eq!(
            s.corti().client_secret_setting,
            "tenants[acme].client_secret_file"
        );
        let mut pairs = complete();
        pairs.retain(|(k, _)| *k != "CORTI_CLIENT_SECRET");
        pairs.push(("CORTI_CLIENT_SECRET_FILE", path.display().to_string()));
        let s = ServeSettings::load(&Sources::from_pairs(pairs)).unwrap();
        assert_eq!(
            s.corti().client_secret_file.as_deref(),
            Some(path.as_path())
        );
        let s = ServeSettings::load(&Sources::from_pairs(complete())).unwrap();
        assert_eq!(s.corti().client_secret_file, None);
        std::fs::write(&path, "\n").unwrap();
        let err = tenants_toml(&text).unwrap_err();
        assert_eq!(err.setting, "tenants[acme].client_secret_file", "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_duration_syntax_and_settings_also_take_bare_seconds() {
        assert_eq!(parse_duration("800ms"), Ok(Duration::from_millis(800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("90").is_err(), "a CLI duration needs a unit");
        assert_eq!(setting_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(setting_duration(" 5s "), Ok(Duration::from_secs(5)));
    }
}
