//! Resilience around the Corti auth client: retries with jittered backoff for
//! connection errors and 5xx inside one total deadline (`UPSTREAM_TIMEOUT`), an upstream
//! 429's `Retry-After` honoured by pausing every call until then, and a circuit breaker
//! that fails fast while the auth server is down and lets one probe through to bring it
//! back.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::corti::{CortiClient, GrantedToken, UpstreamError};
use crate::metrics::{BreakerGauge, Metrics};
use crate::scope::RequestedScope;

/// How retries and the breaker behave.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamPolicy {
    /// Total time for one token request, retries included (`UPSTREAM_TIMEOUT`).
    pub deadline: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff; doubled each retry, with jitter, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Consecutive failed requests (after their retries) that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open the first time; doubled after each failed probe.
    pub open_for: Duration,
    pub max_open_for: Duration,
    /// Pause after an upstream 429 without `Retry-After`.
    pub default_retry_after: Duration,
}

impl UpstreamPolicy {
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            deadline,
            max_attempts: 4,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            default_retry_after: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        open_for: Duration,
    },
    /// One probe is out; it may be declared lost after `deadline`.
    HalfOpen {
        since: Instant,
        open_for: Duration,
    },
}

#[derive(Debug)]
struct Gate {
    breaker: Breaker,
    /// Set by an upstream 429: no call before this instant.
    paused_until: Option<Instant>,
}

/// Whether this call is the half-open breaker's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    Probe,
}

/// The Corti client behind retries, a pause on 429 and a circuit breaker.
pub struct ResilientUpstream {
    client: Arc<CortiClient>,
    policy: UpstreamPolicy,
    gate: Mutex<Gate>,
    metrics: Arc<Metrics>,
}

impl ResilientUpstream {
    /// The tenant's client behind this breaker.
    pub fn client(&self) -> &Arc<CortiClient> {
        &self.client
    }

    pub fn new(client: Arc<CortiClient>, policy: UpstreamPolicy, metrics: Arc<Metrics>) -> Self {
        metrics.breaker(client.tenant().as_str(), BreakerGauge::Closed);
        Self {
            client,
            policy,
            gate: Mutex::new(Gate {
                breaker: Breaker::Closed { failures: 0 },
                paused_until: None,
            }),
            metrics,
        }
    }

    /// A token for `scope`, or why there is none, within the policy's deadline.
    #[tracing::instrument(name = "upstream", skip_all, fields(scope = %scope))]
    pub async fn request_token(
        &self,
        scope: &RequestedScope,
    ) -> Result<GrantedToken, UpstreamError> {
        let admission = self.admit()?;
        let result = self.with_retries(scope).await;
        self.settle(admission, &result);
        result
    }

    async fn with_retries(&self, scope: &RequestedScope) -> Result<GrantedToken, UpstreamError> {
        let deadline = Instant::now() + self.policy.deadline;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(UpstreamError::Timeout);
            }
            let started = Instant::now();
            let result = tokio::time::timeout(left, self.client.request_token(scope))
                .await
                .unwrap_or(Err(UpstreamError::Timeout));
            self.metrics.upstream_call(
                self.client.tenant().as_str(),
                result_label(&result),
                started.elapsed(),
            );
            let error = match result {
                Ok(token) => return Ok(token),
                Err(e) => e,
            };
            let wait = match &error {
                UpstreamError::RateLimited { retry_after } => {
                    let wait = retry_after.unwrap_or(self.policy.default_retry_after);
                    self.pause(wait);
                    wait
                }
                e if e.is_transient() => self.backoff(attempt),
                _ => return Err(error),
            };
            let in_time = Instant::now() + wait < deadline;
            if attempt >= self.policy.max_attempts || !in_time {
                return Err(match error {
                    // The client is told when our pause ends.
                    UpstreamError::RateLimited { .. } => UpstreamError::RateLimited {
                        retry_after: Some(wait),
                    },
                    other => other,
                });
            }
            tracing::debug!(error = %error, attempt, wait_ms = wait.as_millis() as u64, "retrying Corti auth");
            tokio::time::sleep(wait).await;
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so retries
    /// from many replicas spread out but never come back immediately.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .policy
            .base_backoff
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.policy.max_backoff);
        let half = exp / 2;
        let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }

    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut gate = self.lock();
        if gate.paused_until.is_none_or(|p| p < until) {
            tracing::warn!(
                retry_after_s = wait.as_secs(),
                "Corti auth is rate limiting this client; pausing token requests"
            );
            gate.paused_until = Some(until);
        }
    }

    fn admit(&self) -> Result<Admission, UpstreamError> {
        let now = Instant::now();
        let mut gate = self.lock();
        if let Some(until) = gate.paused_until {
            if now < until {
                return Err(UpstreamError::RateLimited {
                    retry_after: Some(until - now),
                });
            }
            gate.paused_until = None;
        }
        match gate.breaker {
            Breaker::Closed { .. } => Ok(Admission::Normal),
            Breaker::Open { until, open_for } if now >= until => {
                gate.breaker = Breaker::HalfOpen {
                    since: now,
                    open_for,
                };
                self.metrics
                    .breaker(self.client.tenant().as_str(), BreakerGauge::HalfOpen);
                tracing::info!("Corti auth breaker half-open: probing");
                Ok(Admission::Probe)
            }
            Breaker::Open { until, .. } => Err(UpstreamError::CircuitOpen {
                retry_after: until - now,
            }),
            Breaker::HalfOpen { since, open_for } => {
                if now.duration_since(since) > self.policy.deadline + Duration::from_secs(1) {
                    // The probe never reported back; send another.
                    gate.breaker = Breaker::HalfOpen {
                        since: now,
                        open_for,
                    };
                    Ok(Admission::Probe)
                } else {
                    Err(UpstreamError::CircuitOpen {
                        retry_after: Duration::from_secs(1),
                    })
                }
            }
        }
    }

    fn settle(&self, admission: Admission, result: &Result<GrantedToken, UpstreamError>) {
        let down = matches!(result, Err(e) if counts_against_breaker(e));
        let mut gate = self.lock();
        let now = Instant::now();
        match (gate.breaker, admission, down) {
            (Breaker::HalfOpen { open_for, .. }, Admission::Probe, true) => {
                let open_for = (open_for * 2).min(self.policy.max_open_for);
                gate.breaker = Breaker::Open {
                    until: now + open_for,
                    open_for,
                };
                self.metrics
                    .breaker(self.client.tenant().as_str(), BreakerGauge::Open);
                tracing::warn!(
                    open_for_s = open_for.as_secs(),
                    "Corti auth still failing; breaker open again"
                );
            }
            (Breaker::HalfOpen { .. }, Admission::Probe, false) => {
                gate.breaker = Breaker::Closed { failures: 0 };
                self.metrics
                    .breaker(self.client.tenant().as_str(), BreakerGauge::Closed);
                tracing::info!("Corti auth answers again; breaker closed");
            }
            (Breaker::Closed { failures }, _, true) => {
                let failures = failures + 1;
                if failures >= self.policy.failure_threshold {
                    let open_for = self.policy.open_for;
                    gate.breaker = Breaker::Open {
                        until: now + open_for,
                        open_for,
                    };
                    self.metrics
                        .breaker(self.client.tenant().as_str(), BreakerGauge::Open);
                    tracing::warn!(
                        failures,
                        open_for_s = open_for.as_secs(),
                        "Corti auth keeps failing; breaker open, failing fast"
                    );
                } else {
                    gate.breaker = Breaker::Closed { failures };
                }
            }
            (Breaker::Closed { .. }, _, false) => {
                gate.breaker = Breaker::Closed { failures: 0 };
            }
            // A call admitted before the breaker opened says nothing new.
            _ => {}
        }
    }

    fn lock(&self) -> MutexGuard<'_, Gate> {
        crate::background::lock(&self.gate)
    }
}

/// Failures that mean the auth server is down, not that it said no.
fn counts_against_breaker(e: &UpstreamError) -> bool {
    e.is_transient() || matches!(e, UpstreamError::Timeout | UpstreamError::KeysUnavailable)
}

fn result_label(result: &Result<GrantedToken, UpstreamError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(UpstreamError::Unreachable(_)) => "unreachable",
        Err(UpstreamError::Timeout) => "timeout",
        Err(UpstreamError::Refused { .. }) => "refused",
        Err(UpstreamError::RateLimited { .. }) => "rate_limited",
        Err(UpstreamError::ServerError { .. }) => "server_error",
        Err(UpstreamError::BadResponse(_) | UpstreamError::Scope(_)) => "bad_response",
        Err(UpstreamError::KeysUnavailable) => "keys_unavailable",
        Err(UpstreamError::CircuitOpen { .. }) => "circuit_open",
    }
}
