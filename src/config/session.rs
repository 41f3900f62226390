//! Who is signed in: the session key source (an HMAC secret, a public key, a JWKS or
//! RFC 7662 introspection), the claims checked, key rotation, and the deny list.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::values::{from_str, http_url, list, positive_duration, secret, setting_duration, text};
use super::{long_enough, ConfigError, Loader, Setting, Show};

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
pub const SESSION_JWKS_URL: Setting<String> = Setting::url("SESSION_JWKS_URL", http_url);
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
    Setting::url("SESSION_INTROSPECTION_URL", http_url);
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

/// Subjects refused at once, one per line (`*` = everyone); re-read on change and SIGHUP.
pub const DENY_LIST_FILE: Setting<PathBuf> = Setting::plain("DENY_LIST_FILE", from_str);

/// The session settings as loaded; [`SessionSection::for_serve`] picks the one key source.
#[derive(Debug, Clone)]
pub struct SessionSection {
    pub jwt_secret: Option<SecretString>,
    pub jwt_previous_secret: Option<SecretString>,
    pub jwt_rotation_grace: Duration,
    pub jwt_public_key_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwks_refresh_interval: Duration,
    pub leeway: Duration,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_unchecked_claims: UncheckedClaims,
    pub cookie_name: String,
    pub introspection_url: Option<String>,
    pub introspection_client_id: Option<String>,
    pub introspection_audience: Option<String>,
    pub introspection_client_secret: Option<SecretString>,
    /// Where the secret was read from, when `_FILE` was used: re-read on change/SIGHUP.
    pub introspection_client_secret_file: Option<PathBuf>,
    pub introspection_cache_ttl: Duration,
    /// The files the rotating secrets were read from (their `NAME_FILE`).
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_previous_secret_file: Option<PathBuf>,
    pub deny_list_file: Option<PathBuf>,
}

impl SessionSection {
    pub(super) fn load(loader: &mut Loader) -> Result<Self, ConfigError> {
        Ok(Self {
            jwt_secret: loader.get(&SESSION_JWT_SECRET)?,
            jwt_secret_file: loader.file_of(&SESSION_JWT_SECRET),
            jwt_previous_secret: loader.get(&SESSION_JWT_PREVIOUS_SECRET)?,
            jwt_previous_secret_file: loader.file_of(&SESSION_JWT_PREVIOUS_SECRET),
            jwt_rotation_grace: loader.defaulted(&SESSION_JWT_ROTATION_GRACE)?,
            jwt_public_key_file: loader.get(&SESSION_JWT_PUBLIC_KEY_FILE)?,
            jwks_url: loader.get(&SESSION_JWKS_URL)?,
            jwks_refresh_interval: loader.defaulted(&SESSION_JWKS_REFRESH_INTERVAL)?,
            leeway: loader.defaulted(&SESSION_LEEWAY)?,
            jwt_issuer: loader.get(&SESSION_JWT_ISSUER)?,
            jwt_audience: loader.get(&SESSION_JWT_AUDIENCE)?,
            jwt_unchecked_claims: loader.or_empty(&SESSION_JWT_UNCHECKED_CLAIMS)?,
            cookie_name: loader.defaulted(&SESSION_COOKIE_NAME)?,
            introspection_url: loader.get(&SESSION_INTROSPECTION_URL)?,
            introspection_client_id: loader.get(&SESSION_INTROSPECTION_CLIENT_ID)?,
            introspection_audience: loader.get(&SESSION_INTROSPECTION_AUDIENCE)?,
            introspection_client_secret: loader.get(&SESSION_INTROSPECTION_CLIENT_SECRET)?,
            introspection_client_secret_file: loader.file_of(&SESSION_INTROSPECTION_CLIENT_SECRET),
            introspection_cache_ttl: loader.defaulted(&SESSION_INTROSPECTION_CACHE_TTL)?,
            deny_list_file: loader.get(&DENY_LIST_FILE)?,
        })
    }

    /// Exactly one key source and the claims it needs; also hands on the deny list.
    pub(super) fn for_serve(self) -> Result<(SessionSettings, Option<PathBuf>), ConfigError> {
        let introspection = introspection_settings(
            self.introspection_url,
            self.introspection_client_id,
            self.introspection_audience,
            self.introspection_client_secret,
            self.introspection_client_secret_file,
            self.introspection_cache_ttl,
        )?;
        let keys = match (
            self.jwt_secret,
            self.jwt_public_key_file,
            self.jwks_url,
            introspection,
        ) {
            (Some(secret), None, None, None) => {
                long_enough(&SESSION_JWT_SECRET, &secret, 32, " for HMAC")?;
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
        if let Some(previous) = &self.jwt_previous_secret {
            if !matches!(keys, SessionKeys::Secret(_)) {
                return Err(SESSION_JWT_PREVIOUS_SECRET
                    .error(format!("is used only with {}", SESSION_JWT_SECRET.name)));
            }
            long_enough(&SESSION_JWT_PREVIOUS_SECRET, previous, 32, " for HMAC")?;
        }
        check_session_claims(
            &keys,
            self.jwt_audience.as_deref(),
            self.jwt_issuer.as_deref(),
            self.jwt_unchecked_claims,
        )?;
        let session = SessionSettings {
            keys,
            issuer: self.jwt_issuer,
            audience: self.jwt_audience,
            cookie_name: self.cookie_name,
            jwks_refresh_interval: self.jwks_refresh_interval,
            leeway: self.leeway,
            rotation: SessionRotation {
                secret_file: self.jwt_secret_file,
                previous_secret: self.jwt_previous_secret,
                previous_secret_file: self.jwt_previous_secret_file,
                grace: self.jwt_rotation_grace,
            },
        };
        Ok((session, self.deny_list_file))
    }
}

impl Show for UncheckedClaims {
    /// The default (every claim checked) is shown as unset.
    fn show(&self) -> String {
        if *self == Self::default() {
            super::UNSET.to_owned()
        } else {
            self.to_string()
        }
    }
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
