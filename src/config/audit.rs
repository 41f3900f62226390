//! The audit store and its keys: where events go, how tokens are fingerprinted, how
//! the chains are signed and checked, and who may read them.

use std::path::PathBuf;

use secrecy::SecretString;

use super::values::{from_str, secret, text};
use super::{long_enough, ConfigError, Loader, Setting};

/// From `_FILE` too (`DATABASE_URL_FILE`): the URL may hold credentials.
pub const DATABASE_URL: Setting<String> = Setting::url("DATABASE_URL", database_url)
    .or("sqlite://token-vendor.db")
    .also_from_file();
pub const AUDIT_HMAC_KEY: Setting<SecretString> = Setting::secret("AUDIT_HMAC_KEY", secret);
/// Ed25519 key that signs audit chain checkpoints (`token-vendor audit keygen`).
pub const AUDIT_SIGNING_KEY: Setting<SecretString> = Setting::secret("AUDIT_SIGNING_KEY", secret);
/// The checkpoints' verifier key (`<name>+<id>+<key>`, from `audit keygen`), for
/// `audit verify` and `audit prune`. Public, so `check-config` shows it; from `_FILE` too
/// so that `AUDIT_VERIFIER_KEY_FILE` works like the other mounted keys.
pub const AUDIT_VERIFIER_KEY: Setting<String> =
    Setting::plain("AUDIT_VERIFIER_KEY", text).also_from_file();
/// The only way `serve` starts without `AUDIT_SIGNING_KEY` (see [`AuditSection::check_signed`]).
pub const AUDIT_ALLOW_UNSIGNED: Setting<bool> =
    Setting::plain("AUDIT_ALLOW_UNSIGNED", from_str).or("false");
pub const AUDIT_READER_ROLE: Setting<String> =
    Setting::plain("AUDIT_READER_ROLE", text).or("token-vendor:audit-reader");

/// The audit settings as loaded.
#[derive(Debug, Clone)]
pub struct AuditSection {
    pub database_url: String,
    pub hmac_key: Option<SecretString>,
    /// Where the HMAC key was read from (`AUDIT_HMAC_KEY_FILE`): re-read on SIGHUP.
    pub hmac_key_file: Option<PathBuf>,
    pub signing_key: Option<SecretString>,
    /// `AUDIT_VERIFIER_KEY` as given (checked by the audit commands that use it).
    pub verifier_key: Option<String>,
    pub allow_unsigned: bool,
    pub reader_role: String,
}

impl AuditSection {
    pub(super) fn load(loader: &mut Loader) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: loader.defaulted(&DATABASE_URL)?,
            hmac_key: loader.get(&AUDIT_HMAC_KEY)?,
            hmac_key_file: loader.file_of(&AUDIT_HMAC_KEY),
            signing_key: loader.get(&AUDIT_SIGNING_KEY)?,
            verifier_key: loader.get(&AUDIT_VERIFIER_KEY)?,
            allow_unsigned: loader.defaulted(&AUDIT_ALLOW_UNSIGNED)?,
            reader_role: loader.defaulted(&AUDIT_READER_ROLE)?,
        })
    }

    pub(super) fn hmac_key_for_serve(&self) -> Result<SecretString, ConfigError> {
        let key = self.hmac_key.clone().ok_or_else(|| {
            AUDIT_HMAC_KEY.error(format!("is required (or {}_FILE)", AUDIT_HMAC_KEY.name))
        })?;
        long_enough(&AUDIT_HMAC_KEY, &key, 16, "")?;
        Ok(key)
    }

    /// `serve` runs with signed audit checkpoints unless told otherwise: without them,
    /// whoever can write the audit database can cut its tail and nothing would tell.
    pub fn check_signed(&self) -> Result<(), ConfigError> {
        if self.signing_key.is_some() || self.allow_unsigned {
            return Ok(());
        }
        Err(AUDIT_SIGNING_KEY.error(format!(
            "is required (or {0}_FILE; make one with `token-vendor audit keygen`): without \
             signed checkpoints, whoever can write the audit database can rewrite it \
             unnoticed. Set {1}=true to run without.",
            AUDIT_SIGNING_KEY.name, AUDIT_ALLOW_UNSIGNED.name
        )))
    }
}

fn database_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("sqlite:")
        || raw.starts_with("postgres://")
        || raw.starts_with("postgresql://")
    {
        Ok(raw.to_owned())
    } else {
        Err("must start with sqlite:// or postgres://".into())
    }
}
