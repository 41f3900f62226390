//! Browser rules: which origins may call the API (CORS) and the CSRF check for
//! cookie-authenticated requests.

use std::collections::HashSet;

/// Why a request's origin was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OriginError {
    #[error("origin is not allowed")]
    NotAllowed,
    #[error("a cookie-authenticated request must carry an allowed Origin")]
    MissingForCookie,
}

/// The exact origins from `ALLOWED_ORIGINS`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: HashSet<String>,
}

impl OriginPolicy {
    pub fn new(allowed: impl IntoIterator<Item = String>) -> Self {
        Self {
            allowed: allowed.into_iter().collect(),
        }
    }

    /// Exact, case-sensitive match: browsers send origins already serialized, so a
    /// look-alike (`https://app.example.evil`, `null`, a different port) never matches.
    pub fn is_allowed(&self, origin: &str) -> bool {
        self.allowed.contains(origin)
    }

    /// A request that carries an `Origin` must name an allowed one; a cookie-authenticated
    /// request must carry one at all, since a cookie rides along on cross-site requests.
    pub fn check_request(&self, origin: Option<&str>, via_cookie: bool) -> Result<(), OriginError> {
        match origin {
            Some(o) if self.is_allowed(o) => Ok(()),
            Some(_) => Err(OriginError::NotAllowed),
            None if via_cookie => Err(OriginError::MissingForCookie),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_origins_only() {
        let p = OriginPolicy::new(["https://app.example".to_string()]);
        assert!(p.check_request(Some("https://app.example"), true).is_ok());
        for bad in [
            "null",
            "https://app.example.evil",
            "http://app.example",
            "https://app.example:444",
            "https://APP.example",
        ] {
            assert_eq!(
                p.check_request(Some(bad), false),
                Err(OriginError::NotAllowed),
                "{bad}"
            );
        }
        assert_eq!(
            p.check_request(None, true),
            Err(OriginError::MissingForCookie)
        );
        assert!(p.check_request(None, false).is_ok());
    }
}
