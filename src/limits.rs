//! Rate limits: per client IP (checked before the session, so garbage is refused
//! cheaply), per user (after the session check, so a failed check spends nobody's
//! quota), and a global budget of calls to Corti auth that protects the app's
//! credentials.
//!
//! Each limit is a GCRA with a burst of `N` and one unit back every `period / N`.
//! [`Limits`] asks Redis first when `RATE_LIMIT_REDIS_URL` is set, so every replica
//! enforces the same limit ([`redis`]), and decides in-process otherwise or while Redis
//! cannot be reached (`local`). The `RateLimit` headers are written in
//! `http::rate_limit`.

mod local;
pub mod rate;
pub mod redis;

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::address::address_group;
use crate::background::spawn_while_alive;
use crate::config::Settings;
use crate::corti::Tenant;
use crate::metrics::Metrics;

use self::local::LocalLimiter;
pub use self::rate::Rate;
pub use self::redis::RedisLimits;

/// How often idle keys are dropped from the in-process state.
pub const PRUNE_EVERY: Duration = Duration::from_secs(15);

/// What a limit is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The client's address (IPv6 by its /64, which is what one host usually gets).
    Ip,
    /// The session's `sub`.
    User,
    /// One budget for the whole service: calls to Corti auth.
    Upstream,
    /// The client's address again, in a bucket of its own, for the side endpoints
    /// (readiness, metrics, the audit API, CORS preflights).
    Side,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Ip => "ip",
            KeyKind::User => "user",
            KeyKind::Upstream => "upstream",
            KeyKind::Side => "side",
        }
    }
}

/// The outcome of one check against one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub kind: KeyKind,
    pub rate: Rate,
    /// Requests that could still be made right now.
    pub remaining: u32,
    /// Time until the full quota is back.
    pub reset: Duration,
    /// `Some` when refused: how long until one request will be let through.
    pub retry_after: Option<Duration>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }
}

/// The limits one request was checked against, the client-facing ones only (the
/// upstream budget is the service's own), for the `RateLimit` headers.
#[derive(Debug, Clone, Default)]
pub struct RateLimitReport {
    decisions: Vec<Decision>,
}

impl RateLimitReport {
    /// Adds a decision, replacing an earlier one of the same kind.
    pub fn add(&mut self, decision: Decision) {
        if decision.kind != KeyKind::Upstream {
            self.decisions.retain(|d| d.kind != decision.kind);
            self.decisions.push(decision);
        }
    }

    /// The decisions, in the order the limits were checked.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }
}

/// The three rates.
#[derive(Debug, Clone, Copy)]
pub struct LimitRates {
    pub per_ip: Rate,
    pub per_user: Rate,
    pub upstream: Rate,
}

impl LimitRates {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            per_ip: settings.limits.per_ip,
            per_user: settings.limits.per_user,
            upstream: settings.limits.upstream,
        }
    }
}

/// Every limit of the service.
pub struct Limits {
    ip: LocalLimiter,
    user: LocalLimiter,
    upstream: LocalLimiter,
    side: LocalLimiter,
    /// Keys the in-process state by a per-process random 64-bit hash: 16 bytes a key
    /// whatever the subject's length. Two users colliding would share a quota, which at
    /// a million keys happens with a probability of about 3e-8.
    hasher: RandomState,
    redis: Option<Arc<RedisLimits>>,
    metrics: Arc<Metrics>,
}

impl Limits {
    /// Builds the limits and, inside a Tokio runtime, starts pruning idle keys every
    /// [`PRUNE_EVERY`] for as long as the limits are in use.
    pub fn new(
        rates: LimitRates,
        redis: Option<Arc<RedisLimits>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let limits = Arc::new(Self {
            ip: LocalLimiter::new(KeyKind::Ip, rates.per_ip),
            user: LocalLimiter::new(KeyKind::User, rates.per_user),
            upstream: LocalLimiter::new(KeyKind::Upstream, rates.upstream),
            // The per-IP rate, so a probe or scrape never spends a user's vends and a
            // flood of them is bounded as tightly as vends are.
            side: LocalLimiter::new(KeyKind::Side, rates.per_ip),
            hasher: RandomState::new(),
            redis,
            metrics,
        });
        let weak = Arc::downgrade(&limits);
        spawn_while_alive(PRUNE_EVERY, move || {
            let limits = weak.upgrade()?;
            // Pruning walks every shard; keep it off the async worker threads.
            Some(async move {
                let _ = tokio::task::spawn_blocking(move || limits.prune()).await;
            })
        });
        limits
    }

    /// Checks and spends one request of the client address's quota.
    pub async fn check_ip(&self, ip: IpAddr) -> Decision {
        let bucket = address_group(ip);
        let local = self.hasher.hash_one(bucket);
        self.decide(&self.ip, local, || bucket.to_string()).await
    }

    /// Checks and spends one side-endpoint request of the client address's quota.
    pub async fn check_side(&self, ip: IpAddr) -> Decision {
        let bucket = address_group(ip);
        let local = self.hasher.hash_one(bucket);
        self.decide(&self.side, local, || bucket.to_string()).await
    }

    /// Checks and spends one request of the user's quota at `tenant`: each tenant's
    /// quota is the user's own.
    pub async fn check_user(&self, tenant: &Tenant, subject: &str) -> Decision {
        let local = self.hasher.hash_one((tenant.as_str(), subject));
        self.decide(&self.user, local, || {
            format!("{tenant}:{}", subject_digest(subject))
        })
        .await
    }

    /// Checks and spends one call of the tenant's upstream budget (its client
    /// credentials are what the budget protects).
    pub async fn check_upstream(&self, tenant: &Tenant) -> Decision {
        let local = self.hasher.hash_one(tenant.as_str());
        self.decide(&self.upstream, local, || tenant.to_string())
            .await
    }

    #[tracing::instrument(
        name = "limits.check",
        skip_all,
        fields(limit = limiter.kind.as_str(), allowed = tracing::field::Empty)
    )]
    async fn decide(
        &self,
        limiter: &LocalLimiter,
        local_key: u64,
        shared_key: impl FnOnce() -> String,
    ) -> Decision {
        let shared = match &self.redis {
            Some(redis) => redis.check(limiter.kind, &shared_key(), limiter.rate).await,
            None => None,
        };
        let decision = shared.unwrap_or_else(|| limiter.check(local_key));
        tracing::Span::current().record("allowed", decision.allowed());
        if !decision.allowed() {
            self.metrics.refused(limiter.kind.as_str());
        }
        decision
    }

    /// Drops keys whose state is back to "fresh" and returns their memory.
    pub fn prune(&self) {
        self.ip.prune();
        self.user.prune();
        self.upstream.prune();
        self.side.prune();
    }

    /// Keys currently held in-process: (IPs, users).
    pub fn tracked_keys(&self) -> (usize, usize) {
        (self.ip.tracked(), self.user.tracked())
    }

    /// Whether limits are currently shared through Redis.
    pub fn shared(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.healthy())
    }
}

/// A fixed-size, replica-independent name for a subject in Redis keys.
fn subject_digest(subject: &str) -> String {
    hex::encode(&Sha256::digest(subject.as_bytes())[..16])
}

/// A rate for tests and benchmarks: `count` per `period`.
pub fn rate(count: u32, period: Duration) -> Rate {
    Rate::new(
        NonZeroU32::MIN.saturating_add(count.saturating_sub(1)),
        period,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: Rate, per_user: Rate) -> Arc<Limits> {
        Limits::new(
            LimitRates {
                per_ip,
                per_user,
                upstream: rate(50, Duration::from_secs(1)),
            },
            None,
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn user_quota_counts_down_then_refuses_with_a_retry_time() {
        let l = limits(
            rate(100, Duration::from_secs(60)),
            rate(3, Duration::from_secs(60)),
        );
        let base = Tenant::parse("base").unwrap();
        let first = l.check_user(&base, "alice").await;
        assert_eq!(first.remaining, 2);
        assert_eq!(first.reset, Duration::from_secs(20));
        l.check_user(&base, "alice").await;
        let third = l.check_user(&base, "alice").await;
        assert!(third.allowed());
        assert_eq!(third.remaining, 0);
        let fourth = l.check_user(&base, "alice").await;
        let wait = fourth.retry_after.expect("refused");
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20));
        assert!(
            l.check_user(&base, "bob").await.allowed(),
            "other users are not affected"
        );
        assert!(
            l.check_user(&Tenant::parse("acme").unwrap(), "alice")
                .await
                .allowed(),
            "the user's quota at another tenant is its own"
        );
    }

    #[tokio::test]
    async fn each_tenant_has_an_upstream_budget_of_its_own() {
        let l = Limits::new(
            LimitRates {
                per_ip: rate(100, Duration::from_secs(60)),
                per_user: rate(100, Duration::from_secs(60)),
                upstream: rate(1, Duration::from_secs(60)),
            },
            None,
            Arc::new(Metrics::new()),
        );
        let (base, acme) = (
            Tenant::parse("base").unwrap(),
            Tenant::parse("acme").unwrap(),
        );
        assert!(l.check_upstream(&base).await.allowed());
        assert!(!l.check_upstream(&base).await.allowed());
        assert!(
            l.check_upstream(&acme).await.allowed(),
            "acme's budget is its own"
        );
    }

    #[tokio::test]
    async fn ipv6_addresses_share_their_slash_64() {
        let l = limits(
            rate(1, Duration::from_secs(60)),
            rate(1, Duration::from_secs(60)),
        );
        assert!(l
            .check_ip("2001:db8:1:2::1".parse().unwrap())
            .await
            .allowed());
        assert!(!l
            .check_ip("2001:db8:1:2::ffff".parse().unwrap())
            .await
            .allowed());
        assert!(l
            .check_ip("2001:db8:1:3::1".parse().unwrap())
            .await
            .allowed());
        assert!(l.check_ip("192.0.2.1".parse().unwrap()).await.allowed());
        assert!(!l
            .check_ip("::ffff:192.0.2.1".parse().unwrap())
            .await
            .allowed());
    }

    #[tokio::test]
    async fn pruning_forgets_idle_keys() {
        let l = limits(
            rate(1000, Duration::from_secs(1)),
            rate(1000, Duration::from_millis(1000)),
        );
        for i in 0..1000 {
            l.check_user(&Tenant::parse("base").unwrap(), &format!("user-{i}"))
                .await;
        }
        assert_eq!(l.tracked_keys().1, 1000);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        l.prune();
        assert_eq!(l.tracked_keys().1, 0);
    }
}
