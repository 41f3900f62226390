//! The Corti region a tenant lives in.

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
