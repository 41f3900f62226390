//! How often a user, an address and the whole service may vend, and where replicas
//! share that count and their reusable tokens (Redis).

use std::time::Duration;

use secrecy::SecretString;

use crate::limits::rate::Rate;

use super::values::{from_str, parse_url, secret, setting_duration};
use super::{long_enough, ConfigError, Loader, Setting};

pub const RATE_LIMIT_PER_USER: Setting<Rate> =
    Setting::plain("RATE_LIMIT_PER_USER", from_str).or("30/minute");
pub const RATE_LIMIT_PER_IP: Setting<Rate> =
    Setting::plain("RATE_LIMIT_PER_IP", from_str).or("120/minute");
pub const UPSTREAM_RATE_LIMIT: Setting<Rate> =
    Setting::plain("UPSTREAM_RATE_LIMIT", from_str).or("50/second");
/// From `_FILE` too: the URL may hold a password.
pub const RATE_LIMIT_REDIS_URL: Setting<String> =
    Setting::url("RATE_LIMIT_REDIS_URL", redis_url).also_from_file();
/// Another name for `RATE_LIMIT_REDIS_URL`: Redis serves limits and token reuse alike.
pub const REDIS_URL: Setting<String> = Setting::url("REDIS_URL", redis_url)
    .also_from_file()
    .unlisted();
/// Encrypts the tokens replicas share through Redis; without it reuse is per replica.
pub const TOKEN_CACHE_KEY: Setting<SecretString> = Setting::secret("TOKEN_CACHE_KEY", secret);
/// Default 150 s. The Corti JS SDK counts a token as expired 120 s before its
/// `expiresIn` runs out and then asks for another before every request; a reused token
/// must therefore have more than 120 s left, or each SDK request would fetch the same
/// token again. 150 s leaves 30 s for the round trip and for the page using the token,
/// and still reuses a 300-s Corti token for half its life.
pub const TOKEN_REUSE_MIN_TTL: Setting<Duration> =
    Setting::plain("TOKEN_REUSE_MIN_TTL", setting_duration)
        .or("150")
        .shown_by(|ttl| format!("{}s", ttl.as_secs()));

/// The rates, Redis and token reuse as loaded.
#[derive(Debug, Clone)]
pub struct LimitsSettings {
    pub per_user: Rate,
    pub per_ip: Rate,
    pub upstream: Rate,
    /// `RATE_LIMIT_REDIS_URL`, else `REDIS_URL`.
    pub redis_url: Option<String>,
    pub token_cache_key: Option<SecretString>,
    pub token_reuse_min_ttl: Duration,
}

impl LimitsSettings {
    pub(super) fn load(loader: &mut Loader) -> Result<Self, ConfigError> {
        Ok(Self {
            per_user: loader.defaulted(&RATE_LIMIT_PER_USER)?,
            per_ip: loader.defaulted(&RATE_LIMIT_PER_IP)?,
            upstream: loader.defaulted(&UPSTREAM_RATE_LIMIT)?,
            redis_url: redis_url_setting(loader)?,
            token_cache_key: loader.get(&TOKEN_CACHE_KEY)?,
            token_reuse_min_ttl: loader.defaulted(&TOKEN_REUSE_MIN_TTL)?,
        })
    }

    /// The cache key is long, and comes with Redis (it encrypts what is shared there).
    pub(super) fn token_cache_key_for_serve(&self) -> Result<Option<SecretString>, ConfigError> {
        let Some(key) = &self.token_cache_key else {
            return Ok(None);
        };
        long_enough(&TOKEN_CACHE_KEY, key, 32, "")?;
        if self.redis_url.is_none() {
            return Err(TOKEN_CACHE_KEY.error(format!(
                "needs {} (or {}): the key encrypts tokens shared through Redis",
                RATE_LIMIT_REDIS_URL.name, REDIS_URL.name
            )));
        }
        Ok(Some(key.clone()))
    }
}

fn redis_url(raw: &str) -> Result<String, String> {
    parse_url(raw, &["redis", "rediss"])
}

/// `RATE_LIMIT_REDIS_URL`, else `REDIS_URL`; both set to different URLs is a mistake.
fn redis_url_setting(loader: &mut Loader) -> Result<Option<String>, ConfigError> {
    let url = match (loader.get(&RATE_LIMIT_REDIS_URL)?, loader.get(&REDIS_URL)?) {
        (Some(a), Some(b)) if a != b => {
            return Err(REDIS_URL.error(format!(
                "names another Redis than {}; set one of them",
                RATE_LIMIT_REDIS_URL.name
            )))
        }
        (a, b) => a.or(b),
    };
    loader.show_as(&RATE_LIMIT_REDIS_URL, url.as_ref());
    Ok(url)
}
