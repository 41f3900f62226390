//! Authentication: the app's session, and the signed-in user it names.
//!
//! - this file: the session JWT and the [`Subject`] it names; which key checks it;
//! - [`keys`]: the session keys from settings and files, rotated on reload;
//! - [`jwks`]: keys fetched from the identity provider's JWKS, kept fresh;
//! - [`jwt`] and [`jwt_crypto`]: the JWT checks shared by sessions and Corti's tokens;
//! - [`introspection`]: opaque sessions, vouched for by an RFC 7662 endpoint.

pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod jwt_crypto;
pub mod keys;

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::config::{
    ConfigError, SessionKeys, SessionSettings, SESSION_INTROSPECTION_URL,
    SESSION_JWT_PREVIOUS_SECRET, SESSION_JWT_PUBLIC_KEY_FILE,
};
use introspection::Introspector;
use jwks::{JwksCache, JwksPolicy};
use jwt::{JwtError, Keys, Rules};
use keys::{hmac_key, public_key_from_pem, KeyFile, RotatingKeys};

/// The signed-in user: the session JWT's `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

impl Subject {
    pub fn parse(raw: &str) -> Result<Self, SessionError> {
        // Bidirectional controls would make the subject read differently in the audit
        // log than it is (Trojan Source); no identity provider issues them.
        let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if raw.is_empty() || raw.len() > 255 || raw.chars().any(|c| c.is_control() || bidi(c)) {
            return Err(SessionError::Invalid(
                "sub is empty, too long or has control characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject as a log line shows it: zero-width and other invisible characters
    /// written as `\u{…}` (see [`crate::text::escape_invisible`]).
    pub fn escaped(&self) -> String {
        crate::text::escape_invisible(&self.0)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A verified session.
#[derive(Debug, Clone)]
pub struct Session {
    pub subject: Subject,
    pub session_id: Option<String>,
    pub roles: Vec<String>,
    /// Limited scopes this user may have, when the app says (`corti_scopes` claim).
    pub allowed_scopes: Option<Vec<String>>,
    /// Corti tenants this user may get tokens for, when the app says (`corti_tenants`
    /// claim); without it, only the default tenant.
    pub allowed_tenants: Option<Vec<String>>,
}

/// Why a session was not accepted. The detail is for the audit log, not the client.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session credentials")]
    Missing,
    #[error("invalid session token: {0}")]
    Invalid(&'static str),
    #[error("session keys unavailable")]
    KeysUnavailable,
    /// Refused on `exp` or `nbf`: says by how much, so clock skew shows in the audit log.
    #[error("invalid session token: {0}")]
    Clock(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    roles: Option<StringOrList>,
    #[serde(default)]
    corti_scopes: Option<StringOrList>,
    #[serde(default)]
    corti_tenants: Option<StringOrList>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => s.split_ascii_whitespace().map(str::to_owned).collect(),
            StringOrList::Many(v) => v,
        }
    }
}

/// Checks a session credential the one configured way.
pub enum SessionVerifier {
    Jwt(JwtVerifier),
    /// Opaque sessions, by RFC 7662 introspection.
    Introspection(Arc<Introspector>),
}

impl SessionVerifier {
    pub fn from_settings(
        settings: &SessionSettings,
        http: reqwest::Client,
    ) -> Result<Self, ConfigError> {
        match &settings.keys {
            SessionKeys::Introspection(introspection) => Introspector::new(introspection)
                .map(Self::Introspection)
                .map_err(|e| ConfigError::new(SESSION_INTROSPECTION_URL.name, e.to_string())),
            _ => JwtVerifier::from_settings(settings, http).map(Self::Jwt),
        }
    }

    /// The key set, when session JWT keys are fetched from a JWKS.
    pub fn jwks(&self) -> Option<&Arc<JwksCache>> {
        match self {
            Self::Jwt(jwt) => jwt.jwks(),
            Self::Introspection(_) => None,
        }
    }

    /// The configured session key, re-read on SIGHUP and on change of its file (none
    /// for a JWKS or opaque sessions).
    pub fn reloadable(&self) -> Option<Arc<RotatingKeys>> {
        match self {
            Self::Jwt(jwt) => jwt.reloadable(),
            Self::Introspection(_) => None,
        }
    }

    /// The introspection client, to re-read its secret file without a restart.
    pub fn introspector(&self) -> Option<&Arc<Introspector>> {
        match self {
            Self::Jwt(_) => None,
            Self::Introspection(introspector) => Some(introspector),
        }
    }

    /// Checks the session credential: a JWT, or an opaque id by introspection.
    #[tracing::instrument(name = "session.verify", skip_all)]
    pub async fn verify(&self, token: &str) -> Result<Session, SessionError> {
        match self {
            Self::Jwt(jwt) => jwt.verify(token).await,
            Self::Introspection(introspector) => introspector.verify(token).await,
        }
    }
}

/// Where session JWT keys come from: a configured key (rotated by reloads) or a JWKS.
enum KeySource {
    Configured(Arc<RotatingKeys>),
    Jwks(Keys),
}

/// Verifies session JWTs against the one configured key source.
pub struct JwtVerifier {
    keys: KeySource,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: std::time::Duration,
}

impl JwtVerifier {
    /// The key set, when session keys are fetched from a JWKS.
    pub fn jwks(&self) -> Option<&Arc<JwksCache>> {
        match &self.keys {
            KeySource::Jwks(keys) => keys.jwks(),
            KeySource::Configured(_) => None,
        }
    }

    /// The configured key, re-read on SIGHUP and on change of its file (none for a JWKS).
    pub fn reloadable(&self) -> Option<Arc<RotatingKeys>> {
        match &self.keys {
            KeySource::Configured(keys) => Some(keys.clone()),
            KeySource::Jwks(_) => None,
        }
    }
    /// Builds the verifier from the settings' one key source.
    pub fn from_settings(
        settings: &SessionSettings,
        http: reqwest::Client,
    ) -> Result<Self, ConfigError> {
        let rotation = &settings.rotation;
        let configured = |key, material, file| {
            RotatingKeys::new(
                key,
                material,
                file,
                rotation.previous_secret.as_ref(),
                rotation.previous_secret_file.clone(),
                rotation.grace,
            )
            .map(|keys| KeySource::Configured(Arc::new(keys)))
            .map_err(|e| SESSION_JWT_PREVIOUS_SECRET.error(e))
        };
        let keys = match &settings.keys {
            SessionKeys::Secret(secret) => configured(
                hmac_key(secret),
                secret.expose_secret().as_bytes().to_vec(),
                rotation.secret_file.clone().map(KeyFile::Secret),
            )?,
            SessionKeys::PublicKeyFile(path) => {
                let setting = SESSION_JWT_PUBLIC_KEY_FILE.name;
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new(setting, format!("cannot read {}: {e}", path.display()))
                })?;
                let key = public_key_from_pem(&pem).ok_or_else(|| {
                    ConfigError::new(
                        setting,
                        "is not a PEM RSA, EC (P-256/P-384) or Ed25519 public key",
                    )
                })?;
                configured(key, pem, Some(KeyFile::PublicKey(path.clone())))?
            }
            SessionKeys::Jwks(url) => KeySource::Jwks(Keys::Jwks(JwksCache::new(
                url.clone(),
                http,
                JwksPolicy {
                    refresh_after: settings.jwks_refresh_interval,
                    ..JwksPolicy::default()
                },
            ))),
            SessionKeys::Introspection(_) => {
                return Err(ConfigError::new(
                    SESSION_INTROSPECTION_URL.name,
                    "opaque sessions are not JWTs",
                ))
            }
        };
        Ok(Self {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway,
        })
    }

    /// Verifies a session JWT. Accepted algorithms follow from the key, never the token.
    pub async fn verify(&self, token: &str) -> Result<Session, SessionError> {
        if token.len() > 8192 {
            return Err(SessionError::Invalid("token too long"));
        }
        let rules = Rules {
            issuer: self.issuer.as_deref(),
            audience: self.audience.as_deref(),
            required: &["sub"],
            check_nbf: true,
            leeway: Some(self.leeway),
        };
        let verified = match &self.keys {
            KeySource::Configured(keys) => keys.verify(token, &rules).await,
            KeySource::Jwks(keys) => jwt::verify(token, keys, &rules).await,
        };
        let claims: Claims = verified.map_err(|e| {
            if let JwtError::Rejected(
                kind @ (ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature),
            ) = &e
            {
                if let Some(why) = clock_refusal(token, kind, self.leeway) {
                    return SessionError::Clock(why);
                }
            }
            SessionError::Invalid(match e {
                JwtError::Malformed => "malformed",
                JwtError::UnknownKey => "unknown kid",
                JwtError::KeysUnavailable => return SessionError::KeysUnavailable,
                JwtError::AlgorithmNotAllowed => "algorithm not allowed for the configured key",
                JwtError::Rejected(kind) => match kind {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not yet valid (nbf)",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "algorithm not allowed",
                    ErrorKind::MissingRequiredClaim(_) => "missing required claim",
                    _ => "malformed",
                },
            })
        })?;
        Ok(Session {
            subject: Subject::parse(&claims.sub)?,
            session_id: claims.sid.filter(|s| !s.is_empty() && s.len() <= 255),
            roles: claims.roles.map(StringOrList::into_vec).unwrap_or_default(),
            allowed_scopes: claims.corti_scopes.map(StringOrList::into_vec),
            allowed_tenants: claims.corti_tenants.map(StringOrList::into_vec),
        })
    }
}

/// How far outside its time window a token whose signature verified is: "expired 90 s
/// ago" or "not valid for another 120 s (nbf)", with the leeway already allowed.
fn clock_refusal(token: &str, kind: &ErrorKind, leeway: std::time::Duration) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let leeway = leeway.as_secs();
    match kind {
        ErrorKind::ExpiredSignature => {
            let exp = claims.get("exp")?.as_i64()?;
            Some(format!(
                "expired {} s ago (exp), beyond the {leeway} s leeway: check the clocks if sessions are fresh",
                now.saturating_sub(exp)
            ))
        }
        ErrorKind::ImmatureSignature => {
            let nbf = claims.get("nbf")?.as_i64()?;
            Some(format!(
                "not valid for another {} s (nbf), beyond the {leeway} s leeway: this host's clock may be behind",
                nbf.saturating_sub(now)
            ))
        }
        _ => None,
    }
}
