//! The error catalog: every problem the service answers with, each with its HTTP status,
//! its `type` slug (`urn:token-vendor:problem:<slug>`) and its title, written once.
//! `vend::VendError::class` picks an entry for a failed vend; `http::problem` renders it.

use std::time::Duration;

/// The `Retry-After` suggested when a dependency is down and no better figure is known.
pub const TRY_AGAIN_SOON: Duration = Duration::from_secs(5);

/// One kind of problem response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    HeadersTooLarge,
    UnsupportedMediaType,
    Unauthenticated,
    SessionKeysUnavailable,
    OriginNotAllowed,
    ScopeNotAllowed,
    UnknownTenant,
    TenantNotAllowed,
    SubjectDenied,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamError,
    AuditUnavailable,
    AuditReaderRoleRequired,
    InvalidFilter,
    NotReady,
    NotFound,
    MethodNotAllowed,
    UnknownDemoUser,
    SignInFailed,
    TooManyStreams,
    RelayFull,
    SpeechUpstreamError,
    SpeechUpstreamTimeout,
}

impl ProblemType {
    /// The status, slug and title, together.
    const fn entry(self) -> (u16, &'static str, &'static str) {
        use ProblemType as P;
        match self {
            P::InvalidRequest => (400, "invalid-request", "Invalid request"),
            P::PayloadTooLarge => (413, "payload-too-large", "Request body too large"),
            P::RequestTimeout => (408, "request-timeout", "Request body timed out"),
            P::HeadersTooLarge => (431, "headers-too-large", "Request headers too large"),
            P::UnsupportedMediaType => (415, "unsupported-media-type", "Unsupported media type"),
            P::Unauthenticated => (401, "unauthenticated", "Not signed in"),
            P::SessionKeysUnavailable => (503, "session-keys-unavailable", "Service unavailable"),
            P::OriginNotAllowed => (403, "origin-not-allowed", "Origin not allowed"),
            P::ScopeNotAllowed => (403, "scope-not-allowed", "Scope not allowed"),
            P::UnknownTenant => (400, "unknown-tenant", "Unknown tenant"),
            P::TenantNotAllowed => (403, "tenant-not-allowed", "Tenant not allowed"),
            P::SubjectDenied => (
                403,
                "subject-denied",
                "Token vending stopped by the operator",
            ),
            P::RateLimited => (429, "rate-limited", "Too many requests"),
            P::UpstreamTimeout => (504, "upstream-timeout", "Corti auth timed out"),
            P::UpstreamUnavailable => (503, "upstream-unavailable", "Corti auth unavailable"),
            P::UpstreamError => (502, "upstream-error", "Corti auth error"),
            P::AuditUnavailable => (503, "audit-unavailable", "Audit store unavailable"),
            P::AuditReaderRoleRequired => (
                403,
                "audit-reader-role-required",
                "Not allowed to read the audit log",
            ),
            P::InvalidFilter => (400, "invalid-filter", "Invalid filter"),
            P::NotReady => (503, "not-ready", "Not ready"),
            P::NotFound => (404, "not-found", "Not found"),
            P::MethodNotAllowed => (405, "method-not-allowed", "Method not allowed"),
            P::UnknownDemoUser => (400, "unknown-demo-user", "Unknown demo user"),
            P::SignInFailed => (503, "sign-in-failed", "Sign-in failed"),
            P::TooManyStreams => (429, "too-many-streams", "Too many open relay streams"),
            P::RelayFull => (503, "relay-full", "Relay at capacity"),
            P::SpeechUpstreamError => (502, "speech-upstream-error", "Corti speech API error"),
            P::SpeechUpstreamTimeout => {
                (504, "speech-upstream-timeout", "Corti speech API timed out")
            }
        }
    }

    pub const fn status(self) -> u16 {
        self.entry().0
    }

    pub const fn slug(self) -> &'static str {
        self.entry().1
    }

    pub const fn title(self) -> &'static str {
        self.entry().2
    }
}
