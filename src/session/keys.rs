//! A configured session key (`SESSION_JWT_SECRET` or `SESSION_JWT_PUBLIC_KEY_FILE`)
//! that can be rotated without a restart.
//!
//! The keys in force: the current key, the explicit previous secret
//! (`SESSION_JWT_PREVIOUS_SECRET`) and, for `SESSION_JWT_ROTATION_GRACE` after a reload
//! replaced it, the key that was current before. A token is checked against the
//! current key first; the others are tried only when its signature does not match.
//! A reload that reads a bad value (unreadable, empty, too short, not a PEM public key)
//! keeps the keys in force and says why.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::jwks::VerifyingKey;
use super::jwt::{self, JwtError, Keys, Rules};
use crate::reload::Reloadable;

/// Shortest accepted HMAC secret.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the current key is read from when it is re-read.
pub enum KeyFile {
    /// `SESSION_JWT_SECRET_FILE`.
    Secret(PathBuf),
    /// `SESSION_JWT_PUBLIC_KEY_FILE`.
    PublicKey(PathBuf),
}

/// A key and what it was made from, to notice when a reload changes it.
struct Held {
    key: VerifyingKey,
    material: Vec<u8>,
}

struct InForce {
    current: Held,
    previous: Option<Held>,
    /// Keys a reload replaced, accepted until their deadline.
    retiring: Vec<(Held, Instant)>,
}

/// The rotating static session key.
pub struct RotatingKeys {
    file: Option<KeyFile>,
    previous_file: Option<PathBuf>,
    grace: Duration,
    keys: RwLock<InForce>,
}

/// An HMAC secret as a verifying key, or why it is refused.
pub fn secret_key(secret: &str) -> Result<VerifyingKey, String> {
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the secret must be at least {MIN_SECRET_BYTES} bytes for HMAC"
        ));
    }
    Ok(hmac_key(&SecretString::from(secret)))
}

/// A secret file's content as `Sources` reads it: trailing line breaks dropped.
fn read_secret(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

impl RotatingKeys {
    /// The keys as configured at start.
    pub fn new(
        current: VerifyingKey,
        current_material: Vec<u8>,
        file: Option<KeyFile>,
        previous: Option<&SecretString>,
        previous_file: Option<PathBuf>,
        grace: Duration,
    ) -> Result<Self, String> {
        let previous = previous
            .map(|s| {
                secret_key(s.expose_secret()).map(|key| Held {
                    key,
                    material: s.expose_secret().as_bytes().to_vec(),
                })
            })
            .transpose()?;
        Ok(Self {
            file,
            previous_file,
            grace,
            keys: RwLock::new(InForce {
                current: Held {
                    key: current,
                    material: current_material,
                },
                previous,
                retiring: Vec::new(),
            }),
        })
    }

    /// The keys to try, current first.
    fn candidates(&self) -> Vec<VerifyingKey> {
        let now = Instant::now();
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::iter::once(&keys.current)
            .chain(keys.previous.iter())
            .chain(
                keys.retiring
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(held, _)| held),
            )
            .map(|held| held.key.clone())
            .collect()
    }

    /// Verifies against the current key, then, when the signature does not match it,
    /// against the previous and retiring keys.
    pub async fn verify<C: DeserializeOwned>(
        &self,
        token: &str,
        rules: &Rules<'_>,
    ) -> Result<C, JwtError> {
        let mut first_error = None;
        for key in self.candidates() {
            match jwt::verify(token, &Keys::Static(key), rules).await {
                Ok(claims) => return Ok(claims),
                Err(
                    e @ (JwtError::Rejected(ErrorKind::InvalidSignature)
                    | JwtError::AlgorithmNotAllowed),
                ) => {
                    first_error.get_or_insert(e);
                }
                // The signature matched this key: its refusal is the answer.
                Err(e) => return Err(e),
            }
        }
        Err(first_error.unwrap_or(JwtError::Rejected(ErrorKind::InvalidSignature)))
    }

    fn reload_current(&self) -> Result<(), String> {
        let (key, material) = match &self.file {
            None => return Ok(()),
            Some(KeyFile::Secret(path)) => {
                let secret = read_secret(path)?;
                (secret_key(&secret)?, secret.into_bytes())
            }
            Some(KeyFile::PublicKey(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let key = public_key_from_pem(&pem)
                    .ok_or("is not a PEM RSA, EC (P-256/P-384) or Ed25519 public key")?;
                (key, pem)
            }
        };
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.current.material == material {
            return Ok(());
        }
        let old = std::mem::replace(&mut keys.current, Held { key, material });
        let now = Instant::now();
        keys.retiring.retain(|(_, until)| *until > now);
        if !self.grace.is_zero() {
            keys.retiring.push((old, now + self.grace));
        }
        tracing::info!(
            grace_s = self.grace.as_secs(),
            "session key replaced; the one before stays accepted for the grace period"
        );
        Ok(())
    }

    fn reload_previous(&self) -> Result<(), String> {
        let Some(path) = &self.previous_file else {
            return Ok(());
        };
        // A removed file withdraws the previous secret too: Kubernetes removes a
        // Secret's file when its key leaves the Secret.
        let secret = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut keys = self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if keys.previous.take().is_some() {
                    tracing::info!("previous session secret withdrawn: its file was removed");
                }
                return Ok(());
            }
            _ => read_secret(path)?,
        };
        // An emptied file withdraws the previous secret (the safe direction).
        let previous = if secret.is_empty() {
            None
        } else {
            Some(Held {
                key: secret_key(&secret)?,
                material: secret.into_bytes(),
            })
        };
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .previous = previous;
        Ok(())
    }
}

impl Reloadable for RotatingKeys {
    fn name(&self) -> String {
        match &self.file {
            Some(KeyFile::PublicKey(_)) => "SESSION_JWT_PUBLIC_KEY_FILE".into(),
            _ => "SESSION_JWT_SECRET_FILE".into(),
        }
    }

    fn paths(&self) -> Vec<PathBuf> {
        let current = match &self.file {
            Some(KeyFile::Secret(p) | KeyFile::PublicKey(p)) => Some(p.clone()),
            None => None,
        };
        current
            .into_iter()
            .chain(self.previous_file.iter().cloned())
            .collect()
    }

    fn reload(&self) -> Result<(), String> {
        let current = self.reload_current();
        let previous = self
            .reload_previous()
            .map_err(|e| format!("SESSION_JWT_PREVIOUS_SECRET_FILE: {e}"));
        match (current, previous) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Ok(())) => Err(a),
            (Ok(()), Err(b)) => Err(b),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }
}

/// The verifying key of an HS256/384/512 secret.
pub(crate) fn hmac_key(secret: &SecretString) -> VerifyingKey {
    VerifyingKey {
        key: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
    }
}

/// Reads a PEM public key and the algorithm family it implies.
pub(crate) fn public_key_from_pem(pem: &[u8]) -> Option<VerifyingKey> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("tv-session-key-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, content).unwrap();
        path
    }

    fn count(keys: &RotatingKeys) -> usize {
        keys.candidates().len()
    }

    #[test]
    fn a_bad_public_key_file_is_refused_and_the_key_in_force_kept() {
        let start = secret_key(&"s".repeat(32)).unwrap();
        let path = temp_file("not a key");
        let keys = RotatingKeys::new(
            start,
            b"initial".to_vec(),
            Some(KeyFile::PublicKey(path.clone())),
            None,
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        for bad in [
            "",
            "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(keys.reload().is_err(), "{bad:?} refused");
            assert_eq!(count(&keys), 1, "the key in force is kept");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(keys.reload().is_err(), "a missing file is refused");
    }

    #[test]
    fn a_replaced_secret_is_kept_for_the_grace_only_and_short_secrets_are_refused() {
        let first = "f".repeat(32);
        let path = temp_file(&first);
        let make = |grace| {
            RotatingKeys::new(
                secret_key(&first).unwrap(),
                first.as_bytes().to_vec(),
                Some(KeyFile::Secret(path.clone())),
                None,
                None,
                grace,
            )
            .unwrap()
        };
        let keys = make(Duration::from_secs(60));
        keys.reload().unwrap();
        assert_eq!(count(&keys), 1, "the same secret again changes nothing");
        std::fs::write(&path, "too short").unwrap();
        assert!(keys.reload().is_err());
        std::fs::write(&path, format!("{}\n", "n".repeat(40))).unwrap();
        keys.reload().unwrap();
        assert_eq!(count(&keys), 2, "new and replaced");
        std::fs::write(&path, &first).unwrap();
        let none = make(Duration::ZERO);
        std::fs::write(&path, "m".repeat(40)).unwrap();
        none.reload().unwrap();
        assert_eq!(count(&none), 1, "no grace: only the new key");
        let _ = std::fs::remove_file(&path);
    }
}
