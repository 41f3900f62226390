//! `dev`'s audit keys, kept beside its database: a dev database whose chain key and
//! signing key were thrown away at exit could never be verified.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::audit::keys::NoteSigner;
use crate::startup::StartupError;

/// The chain key and the checkpoint signing key of one dev database.
pub struct DevAuditKeys {
    /// A TOML file (`--config`) with the database URL and both keys; mode 0600.
    pub path: PathBuf,
    pub hmac: SecretString,
    pub signing: SecretString,
}

/// Where the keys of `database_url` are kept: beside an SQLite file, else (another
/// store, an in-memory database) in the working directory.
pub fn keys_path(database_url: &str) -> PathBuf {
    let file = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|p| !p.is_empty() && !p.contains(":memory:"));
    match file {
        Some(path) => PathBuf::from(format!("{path}.audit-keys.toml")),
        None => PathBuf::from("token-vendor-dev.audit-keys.toml"),
    }
}

impl DevAuditKeys {
    /// The keys kept for `database_url`, or new ones written there (0600) when there are
    /// none yet. A file that exists but cannot be read is an error, never replaced: it
    /// holds the only keys that verify the database.
    pub fn load_or_create(database_url: &str) -> Result<Self, StartupError> {
        let path = keys_path(database_url);
        let fail = |what: String| StartupError::Audit(format!("{}: {what}", path.display()));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let table: toml::Table = toml::from_str(&text)
                    .map_err(|e| fail(format!("not the dev audit keys file: {e}")))?;
                let get = |name: &str| {
                    table
                        .get(name)
                        .and_then(|v| v.as_str())
                        .map(|s| SecretString::from(s.to_owned()))
                        .ok_or_else(|| fail(format!("has no {name}")))
                };
                let (hmac, signing) = (get("audit_hmac_key")?, get("audit_signing_key")?);
                NoteSigner::parse(&signing).map_err(|e| fail(format!("audit_signing_key: {e}")))?;
                Ok(Self {
                    path,
                    hmac,
                    signing,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let hmac = super::random_hex(32);
                let signing = NoteSigner::generate("token-vendor-dev")
                    .map_err(|e| StartupError::Audit(e.to_string()))?
                    .private_text();
                let text = format!(
                    "# token-vendor dev: the audit keys of this database (secret). Keep this file\n\
                     # while you keep the database: `token-vendor --config {} audit verify`.\n\
                     database_url = {}\naudit_hmac_key = {}\naudit_signing_key = {}\n",
                    path.display(),
                    toml_string(database_url),
                    toml_string(&hmac),
                    toml_string(signing.expose_secret()),
                );
                write_private(&path, &text).map_err(|e| fail(format!("cannot write: {e}")))?;
                Ok(Self {
                    path,
                    hmac: SecretString::from(hmac),
                    signing,
                })
            }
            Err(e) => Err(fail(format!("cannot read: {e}"))),
        }
    }

    /// The command that verifies the dev database with these keys.
    pub fn verify_command(&self) -> String {
        format!(
            "token-vendor --config {} audit verify",
            shell_word(&self.path)
        )
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Creates `path` readable by its owner only; never overwrites.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_beside_an_sqlite_file() {
        assert_eq!(
            keys_path("sqlite://dir/a.db?mode=rwc"),
            PathBuf::from("dir/a.db.audit-keys.toml")
        );
        assert_eq!(
            keys_path("postgres://u@h/db"),
            PathBuf::from("token-vendor-dev.audit-keys.toml")
        );
    }
}
