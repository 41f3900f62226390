//! Requested and granted scopes, and the "never wider than asked" rule.

use std::collections::BTreeSet;
use std::fmt;

use crate::text::clip;

/// A Corti API scope that a browser may hold: each one opens only one WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitedScope {
    Transcribe,
    Streams,
}

impl LimitedScope {
    pub const ALL: [LimitedScope; 2] = [LimitedScope::Transcribe, LimitedScope::Streams];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitedScope::Transcribe => "transcribe",
            LimitedScope::Streams => "streams",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transcribe" => Some(LimitedScope::Transcribe),
            "streams" => Some(LimitedScope::Streams),
            _ => None,
        }
    }
}

/// Scopes Keycloak may add on its own that grant no API access.
const IDENTITY_SCOPES: [&str; 3] = ["openid", "profile", "email"];

/// Why a requested scope string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("scope must name at least one of: transcribe, streams")]
    Empty,
    #[error("scope {0:?} is not allowed; only transcribe and streams may be requested")]
    NotAllowed(String),
}

/// A validated, non-empty set of limited scopes a user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestedScope(BTreeSet<LimitedScope>);

impl RequestedScope {
    /// Parses a space-separated scope string drawn from `transcribe`, `streams` and `openid`.
    pub fn parse(raw: &str) -> Result<Self, ScopeError> {
        let mut set = BTreeSet::new();
        // Only a plain space separates scopes (RFC 6749 §3.3); tabs, newlines or
        // encoded spaces are not a scope and are refused by the match below.
        for part in raw.split(' ').filter(|p| !p.is_empty()) {
            if part == "openid" {
                continue;
            }
            match LimitedScope::parse(part) {
                Some(scope) => {
                    set.insert(scope);
                }
                None => return Err(ScopeError::NotAllowed(clip(part, 64))),
            }
        }
        if set.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(Self(set))
    }

    /// Every scope set a user can ask for (each non-empty subset of the limited scopes).
    pub fn every() -> impl Iterator<Item = Self> {
        let n = LimitedScope::ALL.len();
        (1u32..(1 << n)).map(move |mask| {
            Self(
                (0..n)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| LimitedScope::ALL[i])
                    .collect(),
            )
        })
    }

    pub fn contains(&self, scope: LimitedScope) -> bool {
        self.0.contains(&scope)
    }

    pub fn iter(&self) -> impl Iterator<Item = LimitedScope> + '_ {
        self.0.iter().copied()
    }

    /// The scope string sent upstream and shown to users: `openid` plus the limited scopes.
    pub fn to_oauth_string(&self) -> String {
        let mut out = String::from("openid");
        for scope in &self.0 {
            out.push(' ');
            out.push_str(scope.as_str());
        }
        out
    }

    /// Checks a scope string granted by the auth server: it must hold every requested
    /// limited scope and nothing beyond them but identity scopes.
    pub fn check_granted(&self, granted: &str) -> Result<(), GrantError> {
        let granted: BTreeSet<&str> = granted.split_ascii_whitespace().collect();
        for scope in &self.0 {
            if !granted.contains(scope.as_str()) {
                return Err(GrantError::Missing(scope.as_str().to_owned()));
            }
        }
        for scope in granted {
            let requested = LimitedScope::parse(scope).is_some_and(|s| self.contains(s));
            if !requested && !IDENTITY_SCOPES.contains(&scope) {
                return Err(GrantError::Wider(clip(scope, 64)));
            }
        }
        Ok(())
    }
}

impl fmt::Display for RequestedScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_oauth_string())
    }
}

/// Why a granted token was not passed on.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("granted token lacks the requested scope {0:?}")]
    Missing(String),
    #[error("granted token carries the unrequested scope {0:?}")]
    Wider(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_set_a_user_can_ask_for_is_listed_once() {
        let every: BTreeSet<String> = RequestedScope::every()
            .map(|s| s.to_oauth_string())
            .collect();
        let expected: BTreeSet<String> = ["transcribe", "streams", "streams transcribe"]
            .iter()
            .map(|raw| RequestedScope::parse(raw).unwrap().to_oauth_string())
            .collect();
        assert_eq!(every, expected);
    }

    #[test]
    fn parses_allowed_sets_and_adds_openid() {
        assert_eq!(
            RequestedScope::parse("transcribe")
                .unwrap()
                .to_oauth_string(),
            "openid transcribe"
        );
        assert_eq!(
            RequestedScope::parse("streams openid transcribe")
                .unwrap()
                .to_oauth_string(),
            "openid transcribe streams"
        );
    }

    #[test]
    fn refuses_anything_else() {
        assert_eq!(RequestedScope::parse(""), Err(ScopeError::Empty));
        assert_eq!(RequestedScope::parse("openid"), Err(ScopeError::Empty));
        assert!(RequestedScope::parse("transcribe offline_access").is_err());
        assert!(RequestedScope::parse("transcribe%20streams").is_err());
        assert!(RequestedScope::parse("transcribe\tstreams").is_err());
        assert!(RequestedScope::parse("TRANSCRIBE").is_err());
    }

    #[test]
    fn granted_scope_must_not_be_wider_or_narrower() {
        let asked = RequestedScope::parse("transcribe").unwrap();
        assert!(asked
            .check_granted("profile openid email transcribe")
            .is_ok());
        assert_eq!(
            asked.check_granted("openid profile email"),
            Err(GrantError::Missing("transcribe".into()))
        );
        assert_eq!(
            asked.check_granted("openid transcribe streams"),
            Err(GrantError::Wider("streams".into()))
        );
        assert!(asked.check_granted("openid transcribe admin").is_err());
    }
}
