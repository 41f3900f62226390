//! Prometheus metrics of the service, rendered on `GET /metrics` in the OpenMetrics
//! text format (which Prometheus scrapes natively).

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendLabels {
    outcome: &'static str,
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// State of the upstream circuit breaker, as the gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerGauge {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// Every metric the service keeps. Cheap to share: each metric is an `Arc` inside.
pub struct Metrics {
    registry: Registry,
    vends: Family<VendLabels, Counter>,
    upstream_calls: Family<ResultLabels, Counter>,
    upstream_latency: Histogram,
    reuse_hits: Counter,
    coalesced_waiters: Counter,
    refusals: Family<KindLabels, Counter>,
    breaker_state: Gauge,
    redis_fallback: Gauge,
    redis_fallbacks: Counter,
    fleet_hits: Counter,
    token_cache_fallback: Gauge,
    token_cache_fallbacks: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("token_vendor");
        let vends = Family::<VendLabels, Counter>::default();
        registry.register(
            "vends",
            "POST /v1/tokens attempts by audit outcome and scope",
            vends.clone(),
        );
        let upstream_calls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "upstream_calls",
            "Token requests sent to Corti auth, by result (each retry counts)",
            upstream_calls.clone(),
        );
        // 5 ms … ~10 s: Keycloak usually answers in tens of milliseconds.
        let upstream_latency = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "upstream_call_duration_seconds",
            "Duration of one token request to Corti auth",
            upstream_latency.clone(),
        );
        let reuse_hits = Counter::default();
        registry.register(
            "token_reuse_hits",
            "Requests answered with a live token already held for the same user and scope",
            reuse_hits.clone(),
        );
        let coalesced_waiters = Counter::default();
        registry.register(
            "coalesced_waiters",
            "Requests that waited on an identical request's upstream call instead of making their own",
            coalesced_waiters.clone(),
        );
        let refusals = Family::<KindLabels, Counter>::default();
        registry.register(
            "rate_limit_refusals",
            "Requests refused by a rate limit, by key kind (ip, user, upstream, side)",
            refusals.clone(),
        );
        let breaker_state = Gauge::default();
        registry.register(
            "upstream_breaker_state",
            "Circuit breaker in front of Corti auth: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let redis_fallback = Gauge::default();
        registry.register(
            "rate_limit_redis_fallback",
            "1 while Redis cannot decide (unreachable or refusing the limit script) and limits are enforced per replica, else 0",
            redis_fallback.clone(),
        );
        let redis_fallbacks = Counter::default();
        registry.register(
            "rate_limit_redis_fallbacks",
            "Times the limits fell back from Redis to in-process state",
            redis_fallbacks.clone(),
        );
        let fleet_hits = Counter::default();
        registry.register(
            "token_cache_fleet_hits",
            "Requests answered with a live token another replica fetched, read from Redis",
            fleet_hits.clone(),
        );
        let token_cache_fallback = Gauge::default();
        registry.register(
            "token_cache_redis_fallback",
            "1 while Redis is unreachable and token reuse and single-flight are per replica, else 0",
            token_cache_fallback.clone(),
        );
        let token_cache_fallbacks = Counter::default();
        registry.register(
            "token_cache_redis_fallbacks",
            "Times token reuse fell back from Redis to per-replica state",
            token_cache_fallbacks.clone(),
        );
        Self {
            registry,
            vends,
            upstream_calls,
            upstream_latency,
            reuse_hits,
            coalesced_waiters,
            refusals,
            breaker_state,
            redis_fallback,
            redis_fallbacks,
            fleet_hits,
            token_cache_fallback,
            token_cache_fallbacks,
        }
    }

    /// The whole registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// One finished `POST /v1/tokens`; `scope` must come from a parsed scope or be
    /// `"none"`, so the label set stays small.
    pub fn vend(&self, outcome: &'static str, scope: &str) {
        self.vends
            .get_or_create(&VendLabels {
                outcome,
                scope: scope.to_owned(),
            })
            .inc();
    }

    /// One request sent to Corti auth and how it ended.
    pub fn upstream_call(&self, result: &'static str, took: Duration) {
        self.upstream_calls
            .get_or_create(&ResultLabels { result })
            .inc();
        self.upstream_latency.observe(took.as_secs_f64());
    }

    pub fn reuse_hit(&self) {
        self.reuse_hits.inc();
    }

    pub fn fleet_hit(&self) {
        self.fleet_hits.inc();
    }

    /// Token reuse left Redis (`true`) or came back to it (`false`).
    pub fn token_cache_fallback(&self, active: bool) {
        self.token_cache_fallback.set(i64::from(active));
        if active {
            self.token_cache_fallbacks.inc();
        }
    }

    pub fn coalesced_waiter(&self) {
        self.coalesced_waiters.inc();
    }

    pub fn refused(&self, kind: &'static str) {
        self.refusals.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn breaker(&self, state: BreakerGauge) {
        self.breaker_state.set(state as i64);
    }

    /// Limits left Redis (`true`) or came back to it (`false`).
    pub fn redis_fallback(&self, active: bool) {
        self.redis_fallback.set(i64::from(active));
        if active {
            self.redis_fallbacks.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_the_service_prefix() {
        let m = Metrics::new();
        m.vend("issued", "openid transcribe");
        m.refused("user");
        m.upstream_call("ok", Duration::from_millis(12));
        let text = m.render();
        assert!(text.contains(
            "token_vendor_vends_total{outcome=\"issued\",scope=\"openid transcribe\"} 1"
        ));
        assert!(text.contains("token_vendor_rate_limit_refusals_total{kind=\"user\"} 1"));
        assert!(text.contains("token_vendor_upstream_call_duration_seconds_count 1"));
        assert!(text.contains("token_vendor_upstream_breaker_state 0"));
        assert!(text.contains("token_vendor_rate_limit_redis_fallback 0"));
        assert!(text.ends_with("# EOF\n"));
    }
}
