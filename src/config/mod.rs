//! Settings: embedded defaults, then a TOML file, then the environment (which wins).
//! Every secret may also come from `NAME_FILE`, as Docker/Kubernetes mount them.
//!
//! Each setting is one [`Setting`] constant (name, parser, default, secret or not, how
//! it is shown), kept in the file of its concern with that concern's loader: `server.rs`,
//! `corti.rs`, `session.rs`, `limits.rs`, `relay.rs`, `audit.rs`. [`Settings::load`]
//! runs the loaders through one [`Loader`], which also records every value as
//! `check-config` shows it; [`Settings::for_serve`] is the one check of what `serve`
//! needs and yields the complete [`ServeSettings`] the service is built from.

mod audit;
mod corti;
mod limits;
mod names;
mod relay;
mod server;
mod session;
#[cfg(test)]
mod tests;
#[cfg(test)]
use self::names::edit_distance;
mod values;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::corti::environment::Tenant;
use crate::limits::rate::Rate;

pub use self::audit::*;
pub use self::corti::*;
pub use self::limits::*;
pub use self::relay::*;
pub use self::server::*;
pub use self::session::*;
use self::values::setting_duration as duration;
pub use self::values::{parse_duration, redact_url, redact_url_password, setting_duration};

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

/// How `check-config` shows a setting's value (secrets are never shown).
pub trait Show {
    fn show(&self) -> String;
}

macro_rules! show_by_display {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
show_by_display!(String, SocketAddr, bool, u32, Tenant, Rate);

impl Show for Duration {
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

impl Show for PathBuf {
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Show for SecretString {
    fn show(&self) -> String {
        REDACTED.to_owned()
    }
}

impl<T: std::fmt::Display> Show for Vec<T> {
    fn show(&self) -> String {
        let items: Vec<String> = self.iter().map(ToString::to_string).collect();
        items.join(",")
    }
}

const UNSET: &str = "(unset)";
const REDACTED: &str = "(set, redacted)";

/// How one setting is read: its name (the environment variable; the TOML key is the
/// same in lower case), whether `NAME_FILE` works too, whether its value is redacted,
/// its default, the one parser for its value, and how `check-config` shows it.
pub struct Setting<T> {
    pub name: &'static str,
    /// `NAME_FILE` may give the value (secrets, URLs that may hold credentials).
    pub secret: bool,
    /// Never shown, only "(set, redacted)".
    redacted: bool,
    /// Shown by `check-config` (an alias read with another setting is not).
    listed: bool,
    /// Parsed by the same parser as a configured value.
    pub default: Option<&'static str>,
    parse: fn(&str) -> Result<T, String>,
    show: fn(&T) -> String,
}

impl<T: Show> Setting<T> {
    const fn plain(name: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        Self {
            name,
            secret: false,
            redacted: false,
            listed: true,
            default: None,
            parse,
            show: T::show,
        }
    }

    /// Read from `NAME` or `NAME_FILE`, and never shown.
    const fn secret(name: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        Self {
            secret: true,
            redacted: true,
            ..Self::plain(name, parse)
        }
    }
}

impl Setting<String> {
    /// A URL: shown with its userinfo redacted (it may hold credentials).
    const fn url(name: &'static str, parse: fn(&str) -> Result<String, String>) -> Self {
        Self::plain(name, parse).shown_by(values::show_url)
    }
}

impl<T> Setting<T> {
    const fn or(self, default: &'static str) -> Self {
        Self {
            default: Some(default),
            ..self
        }
    }

    /// `NAME_FILE` works too, but the value is shown (public keys, URLs shown redacted).
    const fn also_from_file(self) -> Self {
        Self {
            secret: true,
            ..self
        }
    }

    const fn shown_by(self, show: fn(&T) -> String) -> Self {
        Self { show, ..self }
    }

    /// Read together with another setting that `check-config` shows instead.
    const fn unlisted(self) -> Self {
        Self {
            listed: false,
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

    /// How `check-config` shows this value.
    fn shown(&self, value: Option<&T>) -> String {
        match value {
            None => UNSET.to_owned(),
            Some(_) if self.redacted => REDACTED.to_owned(),
            Some(v) => (self.show)(v),
        }
    }

    /// An error naming this setting (missing, malformed or out of range).
    pub fn error(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(self.name, problem)
    }
}

/// Reads settings from [`Sources`] and records each as `check-config` shows it, so a
/// setting is listed by being read: there is no second list to keep in step.
pub struct Loader<'a> {
    sources: &'a Sources,
    shown: Vec<(&'static str, String)>,
    /// Every name read: the settings that exist, for unknown keys and variables.
    known: Vec<String>,
}

impl<'a> Loader<'a> {
    fn new(sources: &'a Sources) -> Self {
        Self {
            sources,
            shown: Vec::new(),
            known: Vec::new(),
        }
    }

    /// The configured value, else the default, else `None`.
    pub fn get<T>(&mut self, setting: &Setting<T>) -> Result<Option<T>, ConfigError> {
        self.know(setting);
        let value = setting.read(self.sources)?;
        self.record(setting, value.as_ref());
        Ok(value)
    }

    /// For a setting with a default in its constant.
    pub fn defaulted<T>(&mut self, setting: &Setting<T>) -> Result<T, ConfigError> {
        self.get(setting)?
            .ok_or_else(|| setting.error("has no default"))
    }

    /// For a list (or a set of flags), empty when unset.
    pub fn or_empty<T: Default>(&mut self, setting: &Setting<T>) -> Result<T, ConfigError> {
        self.know(setting);
        let value = setting.read(self.sources)?.unwrap_or_default();
        self.record(setting, Some(&value));
        Ok(value)
    }

    /// The file a secret was read from, when it came from `NAME_FILE`: such a secret
    /// is re-read on change and SIGHUP.
    pub fn file_of<T>(&self, setting: &Setting<T>) -> Option<PathBuf> {
        self.sources.secret_path(setting.name)
    }

    /// Shows `setting` as holding `value` instead of what was read (a default derived
    /// from another setting, or the one value two names were merged into).
    pub fn show_as<T>(&mut self, setting: &Setting<T>, value: Option<&T>) {
        let shown = setting.shown(value);
        match self
            .shown
            .iter_mut()
            .find(|(name, _)| *name == setting.name)
        {
            Some(line) => line.1 = shown,
            None => self.shown.push((setting.name, shown)),
        }
    }

    /// The `[[tenants]]` tables of the TOML file, as written, and what the file is called.
    fn tenant_tables(&self) -> (Option<&toml::Value>, &str) {
        (self.sources.tenants.as_ref(), &self.sources.origin)
    }

    fn know<T>(&mut self, setting: &Setting<T>) {
        self.known.push(setting.name.to_owned());
        if setting.secret {
            self.known.push(format!("{}_FILE", setting.name));
        }
    }

    /// An unknown key in the TOML file is an error (the first, in order, is named).
    fn check_file_keys(&self) -> Result<(), ConfigError> {
        let lower: Vec<String> = self.known.iter().map(|k| k.to_ascii_lowercase()).collect();
        let mut unknown: Vec<&String> = (self.sources.file.keys())
            .filter(|key| !lower.contains(key))
            .collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(key) => Err(ConfigError::new(
                "--config",
                names::unknown_key(key, &self.sources.origin, lower.iter().map(String::as_str)),
            )),
        }
    }

    fn record<T>(&mut self, setting: &Setting<T>, value: Option<&T>) {
        if setting.listed {
            self.show_as(setting, value);
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
    /// What the TOML file is called in messages (its path).
    origin: String,
}

impl Sources {
    /// The process environment plus the optional `--config` file.
    pub fn from_process(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let (file, tenants) = match config_file {
            Some(path) => read_toml(path)?,
            None => (HashMap::new(), None),
        };
        Ok(Self {
            // `vars()` panics on a variable that is not UTF-8 (anyone's, not only
            // ours): names that are not are skipped, values are read lossily, so one of
            // ours fails its own parse and names itself.
            env: std::env::vars_os()
                .filter_map(|(name, value)| {
                    Some((
                        name.into_string().ok()?,
                        value.to_string_lossy().into_owned(),
                    ))
                })
                .collect(),
            file,
            tenants,
            origin: config_file
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
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
            origin: String::new(),
        }
    }

    /// Explicit values plus a TOML text as `--config` would give it (tests).
    pub fn from_pairs_and_toml<I, K, V>(pairs: I, toml_text: &str) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let origin = "the TOML text";
        let (file, tenants) = parse_toml(toml_text, origin)?;
        Ok(Self {
            file,
            tenants,
            origin: origin.to_owned(),
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

/// Read by `dev` only: how long the stand-in's tokens live (Corti's own by default);
/// not listed by `check-config`, which shows what `serve` runs with.
pub const DEV_TOKEN_LIFETIME: Setting<Duration> = Setting::plain("DEV_TOKEN_LIFETIME", duration)
    .or("300")
    .unlisted();

/// Every setting as loaded, by concern. Values `serve` requires may be missing here;
/// only [`Settings::for_serve`] turns them into a [`ServeSettings`] the service can run on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub corti: CortiSection,
    pub session: SessionSection,
    pub limits: LimitsSettings,
    pub relay: RelaySettings,
    pub audit: AuditSection,
    pub dev_token_lifetime: Duration,
    /// Every setting as `check-config` shows it, in the order read.
    shown: Vec<(&'static str, String)>,
    /// Variables that look like settings but are none (see [`Settings::warnings`]).
    warnings: Vec<String>,
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

impl Settings {
    /// Reads every setting; fails on the first malformed one.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut loader = Loader::new(sources);
        let server = ServerSettings::load(&mut loader)?;
        let corti = CortiSection::load(&mut loader)?;
        let session = SessionSection::load(&mut loader)?;
        let limits = LimitsSettings::load(&mut loader)?;
        let relay = RelaySettings::load(&mut loader, corti.environment)?;
        let audit = AuditSection::load(&mut loader)?;
        let dev_token_lifetime = loader.defaulted(&DEV_TOKEN_LIFETIME)?;
        loader.check_file_keys()?;
        let warnings = names::unknown_variables(sources.env.keys(), &loader.known);
        Ok(Settings {
            server,
            corti,
            session,
            limits,
            relay,
            audit,
            dev_token_lifetime,
            shown: loader.shown,
            warnings,
        })
    }

    /// One line for each variable with one of our prefixes (or a setting's name and
    /// more) that is no setting, naming the closest one: a warning, not an error, as
    /// other software may share the environment.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Every tenant `serve` runs with, the default first (see [`CortiSection::serve_tenants`]).
    pub fn serve_tenants(&self) -> Result<Vec<CortiSettings>, ConfigError> {
        self.corti.serve_tenants(self.relay.api_url.as_deref())
    }

    /// The one check of what `serve` cannot run without; the first gap is named.
    pub fn for_serve(self) -> Result<ServeSettings, ConfigError> {
        let tenants = self.serve_tenants()?;
        let (session, deny_list_file) = self.session.for_serve()?;
        let audit_hmac_key = self.audit.hmac_key_for_serve()?;
        let token_cache_key = self.limits.token_cache_key_for_serve()?;
        let limits = self.limits;
        let audit = self.audit;
        Ok(ServeSettings {
            listen_addr: self.server.listen_addr,
            tenants,
            session,
            database_url: audit.database_url,
            allowed_origins: self.server.allowed_origins,
            rate_limit_per_user: limits.per_user,
            rate_limit_per_ip: limits.per_ip,
            upstream_rate_limit: limits.upstream,
            rate_limit_redis_url: limits.redis_url,
            token_cache_key,
            token_reuse_min_ttl: limits.token_reuse_min_ttl,
            upstream_timeout: self.corti.upstream_timeout,
            shutdown_grace: self.server.shutdown_grace,
            audit_hmac_key,
            audit_hmac_key_file: audit.hmac_key_file,
            deny_list_file,
            audit_signing_key: audit.signing_key,
            audit_reader_role: audit.reader_role,
            trusted_proxies: self.server.trusted_proxies,
            relay: self.relay,
        })
    }

    /// `serve` runs with signed audit checkpoints unless told otherwise.
    pub fn check_signed(&self) -> Result<(), ConfigError> {
        self.audit.check_signed()
    }

    /// The effective settings as `KEY=value` lines, every secret redacted.
    pub fn redacted_lines(&self) -> Vec<String> {
        self.shown
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .chain(self.corti.tenant_lines())
            .collect()
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

/// At least `min` bytes, else an error naming `setting`.
fn long_enough<T>(
    setting: &Setting<T>,
    value: &SecretString,
    min: usize,
    what: &str,
) -> Result<(), ConfigError> {
    if value.expose_secret().len() < min {
        return Err(setting.error(format!("must be at least {min} bytes{what}")));
    }
    Ok(())
}
