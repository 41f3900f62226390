//! The app's session JWT: which key checks it, and the signed-in user it names.

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{ConfigError, Settings};
use crate::jwks::{JwksCache, JwksError, JwksPolicy, VerifyingKey};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

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

enum KeySource {
    Static(VerifyingKey),
    Jwks(Arc<JwksCache>),
}

/// Verifies session JWTs against the one configured key source.
pub struct SessionVerifier {
    keys: KeySource,
    issuer: Option<String>,
    audience: Option<String>,
}

impl SessionVerifier {
    /// Builds the verifier from the settings' single key source.
    pub fn from_settings(settings: &Settings, http: reqwest::Client) -> Result<Self, ConfigError> {
        let keys = if let Some(secret) = &settings.session_jwt_secret {
            KeySource::Static(hmac_key(secret))
        } else if let Some(path) = &settings.session_jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(
                    "SESSION_JWT_PUBLIC_KEY_FILE",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            KeySource::Static(public_key_from_pem(&pem).ok_or_else(|| {
                ConfigError::new(
                    "SESSION_JWT_PUBLIC_KEY_FILE",
                    "is not a PEM RSA, EC (P-256/P-384) or Ed25519 public key",
                )
            })?)
        } else if let Some(url) = &settings.session_jwks_url {
            KeySource::Jwks(JwksCache::new(url.clone(), http, JwksPolicy::default()))
        } else {
            return Err(ConfigError::new(
                "SESSION_JWT_SECRET",
                "one of SESSION_JWT_SECRET, SESSION_JWT_PUBLIC_KEY_FILE or SESSION_JWKS_URL is required",
            ));
        };
        Ok(Self {
            keys,
            issuer: settings.session_jwt_issuer.clone(),
            audience: settings.session_jwt_audience.clone(),
        })
    }

    /// Verifies a session JWT. Accepted algorithms follow from the key, never the token.
    pub async fn verify(&self, token: &str) -> Result<Session, SessionError> {
        if token.len() > 8192 {
            return Err(SessionError::Invalid("token too long"));
        }
        let header = decode_header(token).map_err(|_| SessionError::Invalid("malformed"))?;
        let key = match &self.keys {
            KeySource::Static(key) => key.clone(),
            KeySource::Jwks(cache) => {
                cache
                    .key(header.kid.as_deref())
                    .await
                    .map_err(|e| match e {
                        JwksError::UnknownKid => SessionError::Invalid("unknown kid"),
                        JwksError::Unavailable(_) => SessionError::KeysUnavailable,
                    })?
            }
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(SessionError::Invalid(
                "algorithm not allowed for the configured key",
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".into());
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let data = decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            SessionError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not yet valid (nbf)",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidAlgorithm => "algorithm not allowed",
                ErrorKind::MissingRequiredClaim(_) => "missing required claim",
                _ => "malformed",
            })
        })?;
        let claims = data.claims;
        Ok(Session {
            subject: Subject::parse(&claims.sub)?,
            session_id: claims.sid.filter(|s| !s.is_empty() && s.len() <= 255),
            roles: claims.roles.map(StringOrList::into_vec).unwrap_or_default(),
            allowed_scopes: claims.corti_scopes.map(StringOrList::into_vec),
        })
    }
}

fn hmac_key(secret: &SecretString) -> VerifyingKey {
    VerifyingKey {
        key: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
    }
}

/// Reads a PEM public key and the algorithm family it implies.
fn public_key_from_pem(pem: &[u8]) -> Option<VerifyingKey> {
    let text = std::str::from_utf8(pem).ok()?;
    if text.contains("PRIVATE KEY") {
        // A private key in a verification setting is a deployment mistake; refuse it.
        return None;
    }
    let (key, algorithms) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        (k, jsonwebtoken::AlgorithmFamily::Rsa.algorithms().to_vec())
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        (k, vec![Algorithm::ES256, Algorithm::ES384])
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (k, vec![Algorithm::EdDSA])
    } else {
        return None;
    };
    Some(VerifyingKey { key, algorithms })
}
