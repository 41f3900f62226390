//! Where in Corti: the region ([`Environment`]) and the tenant ([`Tenant`]) names.
//! Plain values with no dependency, so settings can name them.

use std::fmt;
use std::str::FromStr;

/// Corti region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Eu,
    Us,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Eu => "eu",
            Environment::Us => "us",
        }
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "eu" => Ok(Environment::Eu),
            "us" => Ok(Environment::Us),
            other => Err(format!("must be \"eu\" or \"us\", not {other:?}")),
        }
    }
}

/// A Corti tenant (Keycloak realm) name; it goes into a URL path, so it is kept plain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(String);

impl Tenant {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.starts_with('.');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("must be 1-64 characters of letters, digits, '-', '_' or '.'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
