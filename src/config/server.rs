//! Where the service listens, which browsers and proxies it believes, how it stops.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::values::{from_str, list, setting_duration};
use super::{ConfigError, Loader, Setting};

pub const LISTEN_ADDR: Setting<SocketAddr> =
    Setting::plain("LISTEN_ADDR", from_str).or("127.0.0.1:8080");
pub const ALLOWED_ORIGINS: Setting<Vec<String>> = Setting::plain("ALLOWED_ORIGINS", origins);
pub const TRUSTED_PROXIES: Setting<Vec<IpNet>> = Setting::plain("TRUSTED_PROXIES", cidrs);
/// On SIGTERM, how long in-flight requests may take to finish before they are cut.
pub const SHUTDOWN_GRACE: Setting<Duration> =
    Setting::plain("SHUTDOWN_GRACE", setting_duration).or("10s");

/// The listener and what it believes of its callers.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen_addr: SocketAddr,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_grace: Duration,
}

impl ServerSettings {
    pub(super) fn load(loader: &mut Loader) -> Result<Self, ConfigError> {
        Ok(Self {
            listen_addr: loader.defaulted(&LISTEN_ADDR)?,
            allowed_origins: loader.or_empty(&ALLOWED_ORIGINS)?,
            trusted_proxies: loader.or_empty(&TRUSTED_PROXIES)?,
            shutdown_grace: loader.defaulted(&SHUTDOWN_GRACE)?,
        })
    }
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
