//! Relay mode: where Corti's speech API is and the limits of relayed streams.

use std::time::Duration;

use crate::corti::environment::Environment;

use super::values::{is_loopback_host, parse_url, positive_count, positive_duration};
use super::{ConfigError, Loader, Setting};

/// Corti's speech API base for relay mode (`wss://api.{env}.corti.app` by default).
pub const CORTI_API_URL: Setting<String> = Setting::url("CORTI_API_URL", ws_url);
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
    /// `environment` is `CORTI_ENVIRONMENT`, whose API `check-config` shows by default.
    pub(super) fn load(
        loader: &mut Loader,
        environment: Option<Environment>,
    ) -> Result<Self, ConfigError> {
        let api_url = loader.get(&CORTI_API_URL)?;
        let shown_url = api_url
            .clone()
            .or_else(|| environment.map(corti_api_url_for));
        loader.show_as(&CORTI_API_URL, shown_url.as_ref());
        Ok(Self {
            api_url,
            max_streams_per_user: loader.defaulted(&RELAY_MAX_STREAMS_PER_USER)?,
            max_streams: loader.defaulted(&RELAY_MAX_STREAMS)?,
            max_duration: loader.defaulted(&RELAY_MAX_DURATION)?,
            idle_timeout: loader.defaulted(&RELAY_IDLE_TIMEOUT)?,
        })
    }
}

pub(super) fn ws_url(raw: &str) -> Result<String, String> {
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
