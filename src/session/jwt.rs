//! The one JWT check, for the app's session tokens and for the tokens Corti grants:
//! the key named by `kid`, the algorithms that key allows (never the token's say),
//! the signature, and the time claims with one clock-skew leeway.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Validation};
use serde::de::DeserializeOwned;

use crate::session::jwks::{JwksCache, JwksError, VerifyingKey};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Where a token's verification key comes from.
pub enum Keys {
    /// One configured key (an HMAC secret or a PEM public key).
    Static(VerifyingKey),
    /// A key set fetched over HTTP and cached.
    Jwks(Arc<JwksCache>),
}

impl Keys {
    /// The key set, when keys are fetched.
    pub fn jwks(&self) -> Option<&Arc<JwksCache>> {
        match self {
            Keys::Static(_) => None,
            Keys::Jwks(cache) => Some(cache),
        }
    }

    /// Whether a token could be checked now: `Err(KeysUnavailable)` when no usable key
    /// is at hand (fetching the key set if none is cached).
    pub async fn ready(&self) -> Result<(), JwtError> {
        match self {
            Keys::Static(_) => Ok(()),
            Keys::Jwks(cache) => cache
                .ensure_keys()
                .await
                .map_err(|_| JwtError::KeysUnavailable),
        }
    }
}

/// What a token must satisfy beyond a good signature and a live `exp`.
#[derive(Debug, Default)]
pub struct Rules<'a> {
    /// `iss` must be present and equal this.
    pub issuer: Option<&'a str>,
    /// `aud` must be present and contain this; unchecked when `None`.
    pub audience: Option<&'a str>,
    /// Claims that must be present besides `exp`.
    pub required: &'a [&'a str],
    /// Whether `nbf` is checked.
    pub check_nbf: bool,
    /// Clock skew tolerated on `exp` and `nbf`; [`LEEWAY_SECS`] when `None`.
    pub leeway: Option<std::time::Duration>,
}

/// Why a token was not accepted.
#[derive(Debug)]
pub enum JwtError {
    /// The header cannot be read.
    Malformed,
    /// No key with the token's `kid`.
    UnknownKey,
    /// The keys cannot be fetched right now.
    KeysUnavailable,
    /// The token's `alg` is not one its key allows.
    AlgorithmNotAllowed,
    /// Signature or claims refused.
    Rejected(ErrorKind),
}

/// Verifies `token` and returns its claims.
pub async fn verify<C: DeserializeOwned>(
    token: &str,
    keys: &Keys,
    rules: &Rules<'_>,
) -> Result<C, JwtError> {
    crate::session::jwt_crypto::install();
    let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
    let key = match keys {
        Keys::Static(key) => key.clone(),
        Keys::Jwks(cache) => cache
            .key(header.kid.as_deref())
            .await
            .map_err(|e| match e {
                JwksError::UnknownKid => JwtError::UnknownKey,
                JwksError::Unavailable(_) => JwtError::KeysUnavailable,
            })?,
    };
    if !key.algorithms.contains(&header.alg) {
        return Err(JwtError::AlgorithmNotAllowed);
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = key.algorithms.clone();
    validation.leeway = rules.leeway.map_or(LEEWAY_SECS, |d| d.as_secs());
    validation.validate_nbf = rules.check_nbf;
    let mut required = vec!["exp"];
    required.extend_from_slice(rules.required);
    validation.set_required_spec_claims(&required);
    match rules.issuer {
        Some(iss) => {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        None => validation.iss = None,
    }
    match rules.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        None => validation.validate_aud = false,
    }
    decode::<C>(token, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(|e| JwtError::Rejected(e.into_kind()))
}
