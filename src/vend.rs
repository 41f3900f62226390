//! One vend, from a raw attempt to an audited result: IP limit → session signature →
//! origin (CSRF) → session validity → user limit (at the tenant the body names) →
//! content type → body → tenant → scope → user policy (tenant, scope) →
//! reuse/single-flight (→ the tenant's upstream budget → its Corti) → audit.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{AuditEvent, Auditor, Fingerprinter, Outcome};
use crate::browser::{OriginError, OriginPolicy};
use crate::catalog::{ProblemType, TRY_AGAIN_SOON};
use crate::corti::tenants::{TenantRoute, Tenants};
use crate::corti::Tenant;
use crate::corti::{GrantedToken, UpstreamError};
use crate::deny::{Denial, DenyList, NewlyDenied};
use crate::limits::{Decision, KeyKind, Limits, RateLimitReport};
use crate::metrics::Metrics;
use crate::reuse::{FetchError, ReuseKey, Source, TokenReuse};
use crate::scope::{RequestedScope, ScopeError};
use crate::session::{Session, SessionError, SessionVerifier};
use crate::text::clip;

/// Largest accepted request body; `{"scope":"transcribe streams"}` is 31 bytes.
pub const MAX_BODY_BYTES: usize = 1024;

/// The session of the first candidate token that verifies, else the first refusal.
pub async fn verify_first(
    sessions: &SessionVerifier,
    tokens: &[String],
) -> Result<Session, SessionError> {
    let mut first_error = None;
    for token in tokens {
        match sessions.verify(token).await {
            Ok(session) => return Ok(session),
            // A credential that could not be checked may be the user's valid one: a
            // planted cookie beside it must not turn a key outage into a sign-out.
            Err(SessionError::KeysUnavailable) => first_error = Some(SessionError::KeysUnavailable),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(SessionError::Missing))
}

/// Who is asking, as the HTTP edge sees it: what every audit event records of a caller.
pub struct Caller {
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub origin: Option<String>,
}

/// Everything the HTTP edge knows about one `POST /v1/tokens` or relay upgrade.
pub struct Attempt {
    pub caller: Caller,
    pub credentials: Credentials,
    pub ask: Ask,
}

/// What is asked for, and where it was said.
pub enum Ask {
    /// `POST /v1/tokens`: the JSON body names the scope and the tenant.
    Body {
        content_type: Option<String>,
        /// The body, or why it could not be read.
        body: Result<Vec<u8>, BodyError>,
    },
    /// A relay upgrade: the path names the scope, the query the tenant; or why the
    /// request cannot be read (answered, like a bad body, once the user's quota is spent).
    Relay(Result<RelayAsk, String>),
}

/// The scope and tenant a relay upgrade asks for.
pub struct RelayAsk {
    pub scope: &'static str,
    pub tenant: Option<String>,
}

/// Where the session JWT came from; a cookie needs an allowed `Origin` (CSRF).
pub enum Credentials {
    Bearer(String),
    /// Every session cookie sent, in order; the first that verifies is the session.
    Cookie(Vec<String>),
    /// An `Authorization` header that is not `Bearer …`.
    Malformed,
    None,
}

#[derive(Debug, Clone, Copy)]
pub enum BodyError {
    TooLarge,
    Unreadable,
    /// Not all of it arrived within the body deadline.
    TimedOut,
    /// Left unread: the client's address already has as many bodies being read as it may.
    TooManyUnread,
}

/// Why an attempt got no token. Classified once, in [`VendError::class`].
#[derive(Debug, thiserror::Error)]
pub enum VendError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("request body is larger than {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    #[error("request body did not arrive in time")]
    BodyTimedOut,
    #[error("too many requests from this address are still sending their body")]
    TooManyUnreadBodies,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Unauthenticated(#[from] SessionError),
    #[error("{0}")]
    Origin(#[from] OriginError),
    #[error("scope {0:?} is not allowed for this user")]
    ScopeNotAllowed(String),
    #[error("tenant \"{0}\" is not configured here")]
    UnknownTenant(Tenant),
    #[error("tenant \"{0}\" is not allowed for this user")]
    TenantNotAllowed(Tenant),
    #[error("{}", match .0 {
        Denial::Subject => "subject is on the deny list (DENY_LIST_FILE)",
        Denial::Everyone => "vending is stopped for everyone by the deny list (DENY_LIST_FILE: *)",
    })]
    Denied(Denial),
    #[error("too many requests ({} limit)", kind.as_str())]
    RateLimited {
        kind: KeyKind,
        retry_after: Duration,
    },
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("audit store unavailable")]
    AuditUnavailable,
    #[error("too many open relay streams ({})", if *.per_user { "per user" } else { "on this replica" })]
    TooManyStreams { per_user: bool },
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("Corti's speech API refused or failed the connection: {0}")]
    SpeechUpstream(String),
    #[error("Corti's speech API did not accept the connection in time")]
    SpeechUpstreamTimeout,
}

/// How a failed vend is answered and audited, decided in one place.
#[derive(Debug, Clone)]
pub struct Class {
    /// The catalog entry: status, problem type and title.
    pub problem: ProblemType,
    pub outcome: Outcome,
    /// What the caller is told: the error itself, or a fixed text where the cause is
    /// for the log and the audit event only.
    pub detail: Cow<'static, str>,
    /// How long a client should wait before trying again, when known.
    pub retry_after: Option<Duration>,
}

impl VendError {
    /// The one classification of every failure.
    pub fn class(&self) -> Class {
        use ProblemType as P;
        let own = || Cow::Owned(self.to_string());
        let (problem, outcome, detail, retry_after) = match self {
            VendError::InvalidRequest(detail) => (
                P::InvalidRequest,
                Outcome::InvalidRequest,
                Cow::Owned(detail.clone()),
                None,
            ),
            VendError::PayloadTooLarge => (P::PayloadTooLarge, Outcome::InvalidRequest, own(), None),
            VendError::BodyTimedOut => (P::RequestTimeout, Outcome::InvalidRequest, own(), None),
            VendError::TooManyUnreadBodies => (
                P::RateLimited,
                Outcome::RateLimited,
                own(),
                Some(TRY_AGAIN_SOON),
            ),
            VendError::UnsupportedMediaType => {
                (P::UnsupportedMediaType, Outcome::InvalidRequest, own(), None)
            }
            VendError::Unauthenticated(SessionError::KeysUnavailable) => (
                P::SessionKeysUnavailable,
                Outcome::Unavailable,
                SESSION_KEYS_UNAVAILABLE.into(),
                Some(TRY_AGAIN_SOON),
            ),
            VendError::Unauthenticated(_) => (
                P::Unauthenticated,
                Outcome::Unauthenticated,
                "a valid session is required (Authorization: Bearer or the session cookie)".into(),
                None,
            ),
            VendError::Origin(_) => (P::OriginNotAllowed, Outcome::Forbidden, own(), None),
            VendError::ScopeNotAllowed(_) => (P::ScopeNotAllowed, Outcome::Forbidden, own(), None),
            // Answered as a tenant the user may not have, so the configured tenants
            // cannot be enumerated; the audit detail (the error itself) says which.
            VendError::UnknownTenant(t) => (
                P::TenantNotAllowed,
                Outcome::Forbidden,
                VendError::TenantNotAllowed(t.clone()).to_string().into(),
                None,
            ),
            VendError::TenantNotAllowed(_) => {
                (P::TenantNotAllowed, Outcome::Forbidden, own(), None)
            }
            VendError::Denied(_) => (
                P::SubjectDenied,
                Outcome::Forbidden,
                "the operator has stopped token vending for this user".into(),
                None,
            ),
            VendError::RateLimited { retry_after, .. } => {
                (P::RateLimited, Outcome::RateLimited, own(), Some(*retry_after))
            }
            VendError::Upstream(UpstreamError::Timeout) => (
                P::UpstreamTimeout,
                Outcome::UpstreamError,
                "the Corti auth server did not answer in time".into(),
                None,
            ),
            VendError::Upstream(
                e @ (UpstreamError::Unreachable(_)
                | UpstreamError::KeysUnavailable
                | UpstreamError::RateLimited { .. }
                | UpstreamError::CircuitOpen { .. }),
            ) => (
                P::UpstreamUnavailable,
                Outcome::Unavailable,
                "the Corti auth server cannot be reached right now".into(),
                Some(match e {
                    UpstreamError::RateLimited { retry_after } => {
                        retry_after.unwrap_or(TRY_AGAIN_SOON)
                    }
                    UpstreamError::CircuitOpen { retry_after } => *retry_after,
                    _ => TRY_AGAIN_SOON,
                }),
            ),
            VendError::Upstream(_) => (
                P::UpstreamError,
                Outcome::UpstreamError,
                "the Corti auth server refused the request or answered in a way that cannot be used"
                    .into(),
                None,
            ),
            VendError::AuditUnavailable => (
                P::AuditUnavailable,
                Outcome::Unavailable,
                "no token is issued while the audit store cannot record it".into(),
                Some(TRY_AGAIN_SOON),
            ),
            VendError::TooManyStreams { per_user: true } => (
                P::TooManyStreams,
                Outcome::RateLimited,
                own(),
                Some(TRY_AGAIN_SOON),
            ),
            VendError::TooManyStreams { per_user: false } => (
                P::RelayFull,
                Outcome::Unavailable,
                own(),
                Some(TRY_AGAIN_SOON),
            ),
            VendError::ShuttingDown => (
                P::NotReady,
                Outcome::Unavailable,
                "this replica is shutting down; connect again".into(),
                Some(TRY_AGAIN_SOON),
            ),
            VendError::SpeechUpstream(_) => (
                P::SpeechUpstreamError,
                Outcome::UpstreamError,
                "Corti's speech API refused or failed the connection".into(),
                None,
            ),
            VendError::SpeechUpstreamTimeout => (
                P::SpeechUpstreamTimeout,
                Outcome::UpstreamError,
                own(),
                None,
            ),
        };
        Class {
            problem,
            outcome,
            detail,
            retry_after,
        }
    }
}

/// The caller's detail when the session keys cannot be loaded (vend and audit read).
pub const SESSION_KEYS_UNAVAILABLE: &str =
    "session keys cannot be loaded right now; try again shortly";

/// A token about to be handed out.
#[derive(Debug, Clone)]
pub struct Vended {
    pub token: GrantedToken,
    pub reused: bool,
}

/// The body sent to the browser; `@corti/sdk`'s `refreshAccessToken` takes it as-is.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenBody {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub expires_at: String,
    pub scope: String,
    pub tenant_name: String,
    pub environment: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VendBody {
    scope: String,
    /// The Corti tenant; the default tenant when absent.
    #[serde(default)]
    tenant: Option<String>,
}

/// The vending use-case with everything it depends on.
pub struct Vendor {
    pub sessions: SessionVerifier,
    pub origins: OriginPolicy,
    /// Each tenant's Corti client behind its own retries and circuit breaker.
    pub tenants: Tenants,
    pub auditor: Auditor,
    pub fingerprinter: Fingerprinter,
    pub limits: Arc<Limits>,
    pub reuse: TokenReuse,
    /// Subjects refused at once (`DENY_LIST_FILE`).
    pub deny: Arc<DenyList>,
    pub metrics: Arc<Metrics>,
}

/// What an attempt leaves behind however it ends: its audit event, the limits it was
/// checked against and, once parsed, its scope.
struct Trail {
    event: AuditEvent,
    rate_limits: RateLimitReport,
    scope: Option<RequestedScope>,
    /// The configured tenant the attempt is for, once the body named it.
    tenant: Option<Tenant>,
}

/// An attempt whose checks have run and whose event is not recorded yet.
pub struct Prepared {
    started: Instant,
    trail: Trail,
}

impl Prepared {
    /// What the attempt's audit event says when it succeeds (a relay's endpoint).
    pub fn note(&mut self, detail: impl Into<String>) {
        self.trail.event.detail = Some(detail.into());
    }
}

/// The end of one attempt: its result, its audit event and the limits it was
/// checked against (for the `RateLimit` headers).
pub struct Handled {
    pub result: Result<TokenBody, VendError>,
    pub event: AuditEvent,
    pub rate_limits: RateLimitReport,
}

impl Vendor {
    /// Runs one attempt to its end and audits it. A token is returned only if its
    /// audit event was stored.
    #[tracing::instrument(name = "vend", skip_all)]
    pub async fn handle(&self, attempt: Attempt) -> Handled {
        let (prepared, result) = self.prepare(attempt, |_, _| Ok(())).await;
        self.conclude(prepared, result.map(|(vended, ())| vended))
            .await
    }

    /// Runs every check of an attempt and gets its token, without auditing it yet:
    /// the caller may still fail it (a relay's upstream connection) before
    /// [`Vendor::conclude`] records the one event. `admit_stream` runs once the user may have
    /// this scope at this tenant and before any token is fetched; what it returns
    /// (a held stream slot) comes back with the token.
    pub async fn prepare<G>(
        &self,
        attempt: Attempt,
        admit_stream: impl FnOnce(&Session, &Tenant) -> Result<G, VendError>,
    ) -> (Prepared, Result<(Vended, G), VendError>) {
        let started = Instant::now();
        let mut trail = Trail {
            event: self.begin_event(&attempt.caller),
            rate_limits: RateLimitReport::default(),
            scope: None,
            tenant: None,
        };
        let result = self.run(attempt, &mut trail, admit_stream).await;
        (Prepared { started, trail }, result)
    }

    /// Audits a prepared attempt with its final result; a token is returned only if
    /// its audit event was stored.
    pub async fn conclude(&self, prepared: Prepared, result: Result<Vended, VendError>) -> Handled {
        let Prepared { started, trail } = prepared;
        let Trail {
            mut event,
            rate_limits,
            scope,
            tenant,
        } = trail;
        let mut result = result.map(|vended| self.body(vended, &mut event));

        event.duration_ms = started.elapsed().as_millis() as u64;
        set_outcome(&mut event, &result);
        if self.auditor.record(&event).await.is_err() {
            if result.is_ok() {
                // Fail closed: a token whose event is not stored never leaves.
                result = Err(VendError::AuditUnavailable);
                set_outcome(&mut event, &result);
            }
            self.auditor.log_unstored(&event);
        }
        // Only parsed scopes label the metric, so the label set stays small.
        let scope_label = scope.map_or_else(|| "none".to_owned(), |s| s.to_oauth_string());
        let tenant_label = tenant.as_ref().map_or("none", Tenant::as_str);
        self.metrics
            .vend(event.outcome.as_str(), &scope_label, tenant_label);
        Handled {
            result,
            event,
            rate_limits,
        }
    }

    /// Audits a refused CORS preflight: the only trace of a page on a disallowed
    /// origin, since the browser then never sends the `POST`.
    pub async fn refuse_preflight(&self, caller: &Caller) {
        let mut event = self.begin_event(caller);
        event.outcome = Outcome::Forbidden;
        event.status = ProblemType::OriginNotAllowed.status();
        event.detail = Some("CORS preflight from an origin that is not allowed".into());
        // A refusal needs no fail-closed handling: nothing leaves the service.
        let _ = self.auditor.record(&event).await;
    }

    /// Audits a `POST /v1/tokens` refused before its handler ran (such as a head over
    /// the size limit), folded like the other refusals.
    pub async fn refuse_before_handler(&self, caller: &Caller, problem: ProblemType, detail: &str) {
        let mut event = self.begin_event(caller);
        event.outcome = Outcome::InvalidRequest;
        event.status = problem.status();
        event.detail = Some(clip(detail, 300));
        let _ = self.auditor.record(&event).await;
    }

    /// A new event for this caller, its outcome not known yet; its tenant is the
    /// default one until the body names another.
    fn begin_event(&self, caller: &Caller) -> AuditEvent {
        let default = self.tenants.default_route();
        let mut event = AuditEvent::begin(
            &caller.request_id,
            default.tenant().as_str(),
            default.environment().as_str(),
        );
        event.client_ip = caller.client_ip.map(|ip| ip.to_string());
        event.user_agent = caller.user_agent.as_deref().map(|ua| clip(ua, 256));
        event.origin = caller.origin.as_deref().map(|o| clip(o, 256));
        event
    }

    async fn run<G>(
        &self,
        attempt: Attempt,
        trail: &mut Trail,
        admit_stream: impl FnOnce(&Session, &Tenant) -> Result<G, VendError>,
    ) -> Result<(Vended, G), VendError> {
        let Attempt {
            caller,
            credentials,
            ask,
        } = attempt;
        // Before any signature is checked, so a flood of garbage costs little.
        if let Some(ip) = caller.client_ip {
            admit(&mut trail.rate_limits, self.limits.check_ip(ip).await)?;
        }
        let (tokens, via_cookie) = match credentials {
            Credentials::Bearer(t) => (vec![t], false),
            Credentials::Cookie(ts) => (ts, true),
            Credentials::Malformed => {
                return Err(SessionError::Invalid("Authorization is not a Bearer token").into())
            }
            Credentials::None => return Err(SessionError::Missing.into()),
        };
        let verified = verify_first(&self.sessions, &tokens).await;
        if let Ok(session) = &verified {
            trail.event.subject = Some(session.subject.to_string());
            trail.event.session_id = session.session_id.clone();
        }
        // The origin is judged before the session's validity and before the user's
        // quota: a cross-site request riding on a cookie is a CSRF attempt (403) and
        // must not spend its victim's quota.
        self.origins
            .check_request(caller.origin.as_deref(), via_cookie)?;
        let session = verified?;
        // The kill switch comes before the user's quota, reuse and upstream.
        self.check_not_denied(&session)?;
        // The body is read first only to learn whose quota this is: each tenant's is
        // the user's own. Its errors are answered after the quota is spent, as before.
        let parsed = match ask {
            Ask::Body { content_type, body } => read_body(content_type.as_deref(), body),
            Ask::Relay(Ok(RelayAsk { scope, tenant })) => Ok(VendBody {
                scope: scope.to_owned(),
                tenant,
            }),
            Ask::Relay(Err(detail)) => Err(VendError::InvalidRequest(detail)),
        };
        let quota_tenant = parsed
            .as_ref()
            .ok()
            .and_then(|b| b.tenant.as_deref())
            .and_then(|name| Tenant::parse(name).ok())
            .and_then(|t| self.tenants.get(&t))
            .unwrap_or(self.tenants.default_route())
            .tenant();
        // Only a verified session spends its user's quota.
        admit(
            &mut trail.rate_limits,
            self.limits
                .check_user(quota_tenant, session.subject.as_str())
                .await,
        )?;
        let parsed = parsed?;
        let route = self.route_for(parsed.tenant.as_deref(), trail)?;
        trail.event.scope = Some(clip(&parsed.scope, 128));
        let scope = RequestedScope::parse(&parsed.scope)
            .map_err(|e: ScopeError| VendError::InvalidRequest(e.to_string()))?;
        trail.event.scope = Some(scope.to_oauth_string());
        trail.scope = Some(scope.clone());

        check_user_may_use(
            &session,
            route.tenant(),
            self.tenants.default_route().tenant(),
        )?;
        check_user_may_have(&session, &scope)?;
        let admitted = admit_stream(&session, route.tenant())?;

        let vended = self
            .token_for(&session, scope, &route, &mut trail.event)
            .await?;
        // Denied while the token was being fetched: it is dropped, not handed out.
        if let Err(denied) = self.check_not_denied(&session) {
            self.reuse.forget(&session.subject, route.tenant()).await;
            return Err(denied);
        }
        Ok((vended, admitted))
    }

    /// The configured tenant the body names (the default when it names none); the
    /// attempt's audit event is then the tenant's.
    fn route_for(
        &self,
        requested: Option<&str>,
        trail: &mut Trail,
    ) -> Result<Arc<TenantRoute>, VendError> {
        let route = match requested {
            None => self.tenants.default_route(),
            Some(name) => {
                // Checked before the name reaches a log line or the audit detail.
                // Until a configured tenant is found, the event records what was asked
                // (clipped), never the default tenant's name.
                trail.event.tenant = asked_tenant(name);
                trail.event.environment = String::new();
                let tenant = Tenant::parse(name)
                    .map_err(|e| VendError::InvalidRequest(format!("tenant {e}")))?;
                self.tenants
                    .get(&tenant)
                    .ok_or(VendError::UnknownTenant(tenant))?
            }
        };
        trail.event.tenant = route.tenant().to_string();
        trail.event.environment = route.environment().as_str().to_owned();
        trail.tenant = Some(route.tenant().clone());
        Ok(route.clone())
    }

    fn check_not_denied(&self, session: &Session) -> Result<(), VendError> {
        match self.deny.denies(session.subject.as_str()) {
            None => Ok(()),
            Some(denial) => {
                self.metrics.denied_vend();
                Err(VendError::Denied(denial))
            }
        }
    }

    /// Drops the cached tokens of subjects that became denied, at every tenant, here
    /// and in Redis, so none is handed out again, even once the subject is lifted.
    pub async fn forget_denied(&self, denied: NewlyDenied) {
        match denied {
            NewlyDenied::Everyone => self.reuse.forget_everyone().await,
            NewlyDenied::Subjects(subjects) => {
                for raw in subjects {
                    // A line that is no valid subject names nobody who holds a token.
                    if let Ok(subject) = crate::session::Subject::parse(&raw) {
                        for route in self.tenants.iter() {
                            self.reuse.forget(&subject, route.tenant()).await;
                        }
                    }
                }
            }
        }
    }

    /// A live token of this user's, an identical call's result, or a new token, from
    /// one upstream call that spends the service's upstream budget.
    async fn token_for(
        &self,
        session: &Session,
        scope: RequestedScope,
        route: &TenantRoute,
        event: &mut AuditEvent,
    ) -> Result<Vended, VendError> {
        let tenant = route.tenant().clone();
        let key = ReuseKey {
            subject: session.subject.clone(),
            scope: scope.clone(),
            tenant: tenant.clone(),
        };
        // Built only when an upstream call starts (a reuse never builds it).
        let fetch = || {
            let limits = self.limits.clone();
            let upstream = route.upstream.clone();
            async move {
                let budget = limits.check_upstream(&tenant).await;
                if let Some(retry_after) = budget.retry_after {
                    return Err(FetchError::Budget { retry_after });
                }
                Ok(upstream.request_token(&scope).await?)
            }
        };
        let started = Instant::now();
        let result = self.reuse.get_or_fetch(key, fetch).await;
        let waited = Some(started.elapsed().as_millis() as u64);
        match result {
            Ok((token, source)) => {
                match source {
                    Source::Cached => self.metrics.reuse_hit(),
                    Source::Fleet => self.metrics.fleet_hit(),
                    Source::Joined => self.metrics.coalesced_waiter(),
                    Source::Fetched => {}
                }
                if source != Source::Cached {
                    event.upstream_ms = waited;
                }
                Ok(Vended {
                    token,
                    // A token shared with a concurrent request was handed out twice.
                    reused: source != Source::Fetched,
                })
            }
            Err(FetchError::Budget { retry_after }) => Err(VendError::RateLimited {
                kind: KeyKind::Upstream,
                retry_after,
            }),
            Err(FetchError::Upstream(e)) => {
                event.upstream_ms = waited;
                Err(e.into())
            }
        }
    }

    fn body(&self, vended: Vended, event: &mut AuditEvent) -> TokenBody {
        let token = vended.token;
        let secret = token.access_token.expose_secret();
        event.token_fingerprint = Some(self.fingerprinter.fingerprint(secret));
        event.token_expires_at = Some(token.expires_at);
        event.outcome = if vended.reused {
            Outcome::Reused
        } else {
            Outcome::Issued
        };
        let now = OffsetDateTime::now_utc();
        TokenBody {
            access_token: secret.to_owned(),
            token_type: "Bearer".into(),
            expires_in: (token.expires_at - now).whole_seconds().max(0),
            expires_at: token
                .expires_at
                .replace_nanosecond(0)
                .unwrap_or(token.expires_at)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            scope: token.scope,
            // The event's tenant is the one the token was requested from.
            tenant_name: event.tenant.clone(),
            environment: event.environment.clone(),
        }
    }
}

/// Records a limit's decision for the headers; a refusal ends the attempt.
fn admit(report: &mut RateLimitReport, decision: Decision) -> Result<(), VendError> {
    report.add(decision);
    match decision.retry_after {
        Some(retry_after) => Err(VendError::RateLimited {
            kind: decision.kind,
            retry_after,
        }),
        None => Ok(()),
    }
}

fn set_outcome(event: &mut AuditEvent, result: &Result<TokenBody, VendError>) {
    match result {
        // `body` already chose between issued and reused.
        Ok(_) => event.status = 200,
        Err(e) => {
            let class = e.class();
            event.outcome = class.outcome;
            event.status = class.problem.status();
            event.detail = Some(clip(&e.to_string(), 300));
        }
    }
}

/// The body, as JSON, once its content type and shape are right.
fn read_body(
    content_type: Option<&str>,
    body: Result<Vec<u8>, BodyError>,
) -> Result<VendBody, VendError> {
    if !is_json(content_type) {
        return Err(VendError::UnsupportedMediaType);
    }
    let body = body.map_err(|e| match e {
        BodyError::TooLarge => VendError::PayloadTooLarge,
        BodyError::Unreadable => VendError::InvalidRequest("request body could not be read".into()),
        BodyError::TimedOut => VendError::BodyTimedOut,
        BodyError::TooManyUnread => VendError::TooManyUnreadBodies,
    })?;
    // serde reads a struct from a JSON array too; the body must be an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(VendError::InvalidRequest(
            "body must be {\"scope\": \"transcribe\"}: not a JSON object".into(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        VendError::InvalidRequest(format!(
            "body must be {{\"scope\": \"transcribe\"}}: {}",
            clip(&e.to_string(), 120)
        ))
    })
}

/// Which tenants a user may get comes from the session's `corti_tenants` claim; without
/// it, only the default tenant.
fn check_user_may_use(
    session: &Session,
    tenant: &Tenant,
    default: &Tenant,
) -> Result<(), VendError> {
    let allowed = match &session.allowed_tenants {
        Some(allowed) => allowed.iter().any(|a| a == tenant.as_str()),
        None => tenant == default,
    };
    if allowed {
        Ok(())
    } else {
        Err(VendError::TenantNotAllowed(tenant.clone()))
    }
}

/// The app may narrow what a user can have with a `corti_scopes` claim in the session.
fn check_user_may_have(session: &Session, scope: &RequestedScope) -> Result<(), VendError> {
    let Some(allowed) = &session.allowed_scopes else {
        return Ok(());
    };
    for s in scope.iter() {
        if !allowed.iter().any(|a| a == s.as_str()) {
            return Err(VendError::ScopeNotAllowed(s.as_str().to_owned()));
        }
    }
    Ok(())
}

/// Whether a `Content-Type` names JSON (`application/json`, any parameters).
pub fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A tenant name as asked, fit for the audit record: at most 64 characters, and any
/// character a tenant name cannot hold (a control or bidirectional mark, a slash)
/// shown as U+FFFD, so the record cannot read differently than it is.
fn asked_tenant(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '\u{FFFD}'
            }
        })
        .collect()
}
