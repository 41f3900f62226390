//! The parsers settings share (durations, URLs, lists) and how values are redacted.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

pub(super) fn from_str<T: FromStr>(raw: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    raw.parse::<T>().map_err(|e| e.to_string())
}

pub(super) fn text(raw: &str) -> Result<String, String> {
    Ok(raw.to_owned())
}

pub(super) fn secret(raw: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(raw))
}

pub(super) fn http_url(raw: &str) -> Result<String, String> {
    parse_url(raw, &["https", "http"])
}

pub(super) fn positive_duration(raw: &str) -> Result<Duration, String> {
    let d = setting_duration(raw)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

pub(super) fn positive_count(raw: &str) -> Result<u32, String> {
    match raw.parse::<u32>() {
        Ok(0) => Err("must be more than 0".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
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

pub(super) fn parse_url(raw: &str, schemes: &[&str]) -> Result<String, String> {
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

pub(super) fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

/// A URL setting as `check-config` shows it (a `Setting<String>`'s `show`, hence `&String`).
#[allow(clippy::ptr_arg)]
pub(super) fn show_url(url: &String) -> String {
    redact_url(url)
}
