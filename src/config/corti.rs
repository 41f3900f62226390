//! Corti's side: the tenants (`CORTI_*` for one, `[[tenants]]` in the TOML file for
//! several), which of them is the default, and how long a call to Corti may take.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::corti::environment::{Environment, Tenant};

use super::values::{from_str, http_url, positive_duration, redact_url, secret, text};
use super::{corti_api_url_for, read_secret_file, ws_url, ConfigError, Loader, Setting, Show};

pub const CORTI_ENVIRONMENT: Setting<Environment> = Setting::plain("CORTI_ENVIRONMENT", from_str);
pub const CORTI_TENANT: Setting<Tenant> = Setting::plain("CORTI_TENANT", Tenant::parse).or("base");
pub const CORTI_CLIENT_ID: Setting<String> = Setting::plain("CORTI_CLIENT_ID", text);
pub const CORTI_CLIENT_SECRET: Setting<SecretString> =
    Setting::secret("CORTI_CLIENT_SECRET", secret);
pub const CORTI_AUTH_URL: Setting<String> = Setting::url("CORTI_AUTH_URL", http_url);
/// The tenant a vend without `tenant` is for, when several are configured.
pub const DEFAULT_TENANT: Setting<Tenant> = Setting::plain("DEFAULT_TENANT", Tenant::parse);
/// The TOML file's array of tables, one per Corti tenant: `[[tenants]]`.
pub const TENANTS_KEY: &str = "tenants";
pub const UPSTREAM_TIMEOUT: Setting<Duration> =
    Setting::plain("UPSTREAM_TIMEOUT", positive_duration).or("5s");

/// The Corti settings as loaded: the `CORTI_*` tenant's parts, each checked on its
/// own, and the `[[tenants]]` entries, each complete.
#[derive(Debug, Clone)]
pub struct CortiSection {
    pub environment: Option<Environment>,
    pub tenant: Tenant,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    /// Where `CORTI_CLIENT_SECRET` was read from, when it came from `_FILE`.
    pub client_secret_file: Option<PathBuf>,
    pub auth_url: Option<String>,
    /// The TOML file's `[[tenants]]`, each complete and checked on its own.
    pub tenants: Vec<CortiSettings>,
    pub default_tenant: Option<Tenant>,
    pub upstream_timeout: Duration,
}

impl CortiSection {
    pub(super) fn load(loader: &mut Loader) -> Result<Self, ConfigError> {
        let environment = loader.get(&CORTI_ENVIRONMENT)?;
        let tenant = loader.defaulted(&CORTI_TENANT)?;
        let client_id = loader.get(&CORTI_CLIENT_ID)?;
        let client_secret = loader.get(&CORTI_CLIENT_SECRET)?;
        let auth_url = loader.get(&CORTI_AUTH_URL)?;
        let shown_url = auth_url
            .clone()
            .or_else(|| environment.map(corti_auth_url_for));
        loader.show_as(&CORTI_AUTH_URL, shown_url.as_ref());
        Ok(Self {
            environment,
            tenant,
            client_id,
            client_secret,
            client_secret_file: loader.file_of(&CORTI_CLIENT_SECRET),
            auth_url,
            tenants: {
                let (tables, origin) = loader.tenant_tables();
                tenant_tables(tables, origin)?
            },
            default_tenant: loader.get(&DEFAULT_TENANT)?,
            upstream_timeout: loader.defaulted(&UPSTREAM_TIMEOUT)?,
        })
    }

    /// The tenant the `CORTI_*` settings describe, if any of them is set, checked the
    /// way `serve` always checked it. `api_url` is `CORTI_API_URL`.
    fn env_tenant(&self, api_url: Option<&str>) -> Result<Option<CortiSettings>, ConfigError> {
        let any_set = self.environment.is_some()
            || self.client_id.is_some()
            || self.client_secret.is_some()
            || self.auth_url.is_some();
        if !any_set && !self.tenants.is_empty() {
            return Ok(None);
        }
        let environment = self
            .environment
            .ok_or_else(|| CORTI_ENVIRONMENT.error("is required (eu or us)"))?;
        let client_id = self
            .client_id
            .clone()
            .ok_or_else(|| CORTI_CLIENT_ID.error("is required"))?;
        let client_secret = self.client_secret.clone().ok_or_else(|| {
            CORTI_CLIENT_SECRET.error(format!(
                "is required (or {}_FILE)",
                CORTI_CLIENT_SECRET.name
            ))
        })?;
        Ok(Some(CortiSettings {
            environment,
            tenant: self.tenant.clone(),
            client_id,
            client_secret,
            client_secret_file: self.client_secret_file.clone(),
            client_secret_setting: format!("{}_FILE", CORTI_CLIENT_SECRET.name),
            auth_url: self
                .auth_url
                .clone()
                .unwrap_or_else(|| corti_auth_url_for(environment)),
            api_url: api_url
                .map(str::to_owned)
                .unwrap_or_else(|| corti_api_url_for(environment)),
        }))
    }

    /// Every tenant `serve` runs with, the default first: the `CORTI_*` one (when set)
    /// and each `[[tenants]]` entry. Names are unique; with more than one tenant
    /// `DEFAULT_TENANT` must name one of them.
    pub fn serve_tenants(&self, api_url: Option<&str>) -> Result<Vec<CortiSettings>, ConfigError> {
        let mut all: Vec<CortiSettings> = self.env_tenant(api_url)?.into_iter().collect();
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

    /// `check-config`'s line for each `[[tenants]]` entry, its secret redacted.
    pub(super) fn tenant_lines(&self) -> impl Iterator<Item = String> + '_ {
        self.tenants.iter().map(|t| {
            let secret_file = t
                .client_secret_file
                .as_ref()
                .map(|p| format!(" client_secret_file={}", p.display()))
                .unwrap_or_default();
            format!(
                "{TENANTS_KEY}[{}]=environment={} client_id={} client_secret=(set, redacted){secret_file} auth_url={}",
                t.tenant,
                t.environment.as_str(),
                t.client_id,
                redact_url(&t.auth_url)
            )
        })
    }
}

impl Show for Environment {
    fn show(&self) -> String {
        self.as_str().to_owned()
    }
}

/// Corti's own auth server for an environment.
fn corti_auth_url_for(environment: Environment) -> String {
    format!("https://auth.{}.corti.app", environment.as_str())
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
fn tenant_tables(
    raw: Option<&toml::Value>,
    origin: &str,
) -> Result<Vec<CortiSettings>, ConfigError> {
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
        .map(|(i, item)| tenant_table(i, item.as_table().ok_or_else(not_tables)?, origin))
        .collect()
}

fn tenant_table(
    index: usize,
    table: &toml::Table,
    origin: &str,
) -> Result<CortiSettings, ConfigError> {
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
            super::names::unknown_key(unknown, origin, TENANT_KEYS),
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
