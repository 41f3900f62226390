//! Prometheus metrics of the service, rendered on `GET /metrics` in the OpenMetrics
//! text format or, when the scraper prefers it, the Prometheus text format 0.0.4.
//!
//! Per-request work is one hash lookup on a small fixed label set (`&'static str` and
//! integer labels only, never a string built per request) and atomic increments.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

mod process;

/// Content type of the OpenMetrics rendering.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format rendering.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The two exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// Picks the format by an `Accept` header: the one with the higher `q`; OpenMetrics
    /// when there is no header, on a tie, or when neither is acceptable.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Format::OpenMetrics;
        };
        let (mut openmetrics, mut text, mut any) = (None::<f32>, None::<f32>, None::<f32>);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut openmetrics,
                "text/plain" => &mut text,
                "*/*" => &mut any,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
        let openmetrics = openmetrics.or(any).unwrap_or(0.0);
        let text = text.or(any).unwrap_or(0.0);
        if text > openmetrics {
            Format::PrometheusText
        } else {
            Format::OpenMetrics
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => CONTENT_TYPE,
            Format::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendLabels {
    outcome: &'static str,
    scope: String,
    /// A configured tenant's name, or `none` before the vend's tenant is known.
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The commit the binary was built from: `TOKEN_VENDOR_COMMIT` at build time (the
/// image build passes it), else `unknown`.
pub const BUILD_COMMIT: &str = match option_env!("TOKEN_VENDOR_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceTenantLabels {
    source: &'static str,
    tenant: String,
}

/// State of the upstream circuit breaker, as the gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerGauge {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// 5 ms … 10 s.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The audit writer's own metrics; cheap to clone (each metric is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct AuditWriterMetrics {
    batch_size: Histogram,
    commit_duration: Histogram,
    commit_failures: Counter,
    queue_depth: Gauge,
    failing: Gauge,
    chain_conflicts: Counter,
    trail_findings: Counter,
}

impl Default for AuditWriterMetrics {
    /// Metrics not yet in any registry (a writer started outside the service).
    fn default() -> Self {
        Self {
            batch_size: Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 2048.0,
            ]),
            commit_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            commit_failures: Counter::default(),
            queue_depth: Gauge::default(),
            failing: Gauge::default(),
            chain_conflicts: Counter::default(),
            trail_findings: Counter::default(),
        }
    }
}

impl AuditWriterMetrics {
    /// Events waiting for a transaction right now.
    pub fn queue_depth(&self, events: usize) {
        self.queue_depth
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// One transaction of `events` events ended after `took`.
    pub fn commit(&self, events: usize, took: Duration, ok: bool) {
        self.batch_size.observe(events as f64);
        self.commit_duration.observe(took.as_secs_f64());
        if !ok {
            self.commit_failures.inc();
        }
        self.failing.set(i64::from(!ok));
    }

    /// The writer found its chain's head moved under it.
    pub fn chain_conflict(&self) {
        self.chain_conflicts.inc();
    }

    /// The background check of the trail found tampering.
    pub fn trail_finding(&self) {
        self.trail_findings.inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "audit_trail_findings",
            "Times the service's background check of its audit trail found events altered, removed or inserted since the last verified checkpoint",
            self.trail_findings.clone(),
        );
        registry.register(
            "audit_chain_conflicts",
            "Times the audit writer found its chain's stored head not the one it wrote (events removed or rewritten under the service)",
            self.chain_conflicts.clone(),
        );
        registry.register(
            "audit_commit_batch_size",
            "Events committed together in one audit transaction",
            self.batch_size.clone(),
        );
        registry.register(
            "audit_commit_duration_seconds",
            "Duration of one audit transaction, fsync included",
            self.commit_duration.clone(),
        );
        registry.register(
            "audit_commit_failures",
            "Audit transactions that failed or timed out (their tokens were withheld)",
            self.commit_failures.clone(),
        );
        registry.register(
            "audit_queue_depth",
            "Audit events waiting for a transaction",
            self.queue_depth.clone(),
        );
        registry.register(
            "audit_store_failing",
            "1 while the last audit transaction failed (vends answer 503), else 0",
            self.failing.clone(),
        );
    }
}

/// Each watched JWKS cache's "serving stale keys" flag, read at scrape time.
#[derive(Debug, Default)]
struct JwksCollector {
    caches: Mutex<Vec<(&'static str, Option<String>, Gauge)>>,
}

impl Collector for JwksCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let caches = crate::background::lock(&self.caches);
        let mut family = encoder.encode_descriptor(
            "jwks_stale",
            "1 while a key set could not be refreshed and its last good keys are used, else 0",
            None,
            MetricType::Gauge,
        )?;
        for (source, tenant, gauge) in caches.iter() {
            let value = ConstGauge::new(gauge.get());
            match tenant {
                None => value.encode(family.encode_family(&SourceLabels { source })?)?,
                Some(tenant) => value.encode(family.encode_family(&SourceTenantLabels {
                    source,
                    tenant: tenant.clone(),
                })?)?,
            }
        }
        Ok(())
    }
}

/// Every metric the service keeps. Cheap to share: each metric is an `Arc` inside.
pub struct Metrics {
    registry: Registry,
    vends: Family<VendLabels, Counter>,
    upstream_calls: Family<ResultLabels, Counter>,
    upstream_latency: Family<TenantLabels, Histogram>,
    reuse_hits: Counter,
    coalesced_waiters: Counter,
    refusals: Family<KindLabels, Counter>,
    breaker_state: Family<TenantLabels, Gauge>,
    redis_fallback: Gauge,
    redis_fallbacks: Counter,
    http_requests: Family<RouteLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    parser_refusals: Family<RouteLabels, Counter>,
    audit_writer: AuditWriterMetrics,
    jwks: std::sync::Arc<JwksCollector>,
    fleet_hits: Counter,
    token_cache_fallback: Gauge,
    token_cache_fallbacks: Counter,
    deny_list_entries: Gauge,
    denied_vends: Counter,
    relay: crate::relay::metrics::RelayMetrics,
    reloads_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered at zero.
    pub fn new() -> Self {
        let mut root = Registry::default();
        // Prometheus' standard process metrics carry no service prefix.
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("token_vendor");
        let vends = Family::<VendLabels, Counter>::default();
        registry.register(
            "vends",
            "POST /v1/tokens attempts by audit outcome, scope and tenant",
            vends.clone(),
        );
        let upstream_calls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "upstream_calls",
            "Token requests sent to Corti auth, by result and tenant (each retry counts)",
            upstream_calls.clone(),
        );
        // Keycloak usually answers in tens of milliseconds.
        let upstream_latency =
            Family::<TenantLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "upstream_call_duration_seconds",
            "Duration of one token request to Corti auth, by tenant",
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
        let breaker_state = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "upstream_breaker_state",
            "Circuit breaker in front of each tenant's Corti auth: 0 closed, 1 open, 2 half-open",
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
        let http_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route and status",
            http_duration.clone(),
        );
        let parser_refusals = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_parser_refusals",
            "Requests actix's HTTP/1 parser answered itself (431, 400, 408) before any route \
             saw them, by the route their request line names (/v1/tokens, /v1/relay, other, unknown)",
            parser_refusals.clone(),
        );
        let audit_writer = AuditWriterMetrics::default();
        audit_writer.register(registry);
        let jwks = std::sync::Arc::new(JwksCollector::default());
        registry.register_collector(Box::new(jwks.clone()));
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
        let deny_list_entries = Gauge::default();
        registry.register(
            "deny_list_entries",
            "Lines in force in DENY_LIST_FILE (a `*` line counts as one)",
            deny_list_entries.clone(),
        );
        let denied_vends = Counter::default();
        registry.register(
            "denied_vends",
            "POST /v1/tokens attempts refused because the subject is on the deny list",
            denied_vends.clone(),
        );
        let relay = crate::relay::metrics::RelayMetrics::default();
        relay.register(registry);
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: BUILD_COMMIT,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which build runs (version, commit)",
            build_info,
        );
        let reloads_refused = Counter::default();
        registry.register(
            "reloads_refused",
            "Reloads (SIGHUP or a changed file) whose new value was refused; the old one stays in force",
            reloads_refused.clone(),
        );
        Self {
            registry: root,
            vends,
            upstream_calls,
            upstream_latency,
            reuse_hits,
            coalesced_waiters,
            refusals,
            breaker_state,
            redis_fallback,
            redis_fallbacks,
            http_requests,
            http_duration,
            parser_refusals,
            audit_writer,
            jwks,
            fleet_hits,
            token_cache_fallback,
            token_cache_fallbacks,
            deny_list_entries,
            denied_vends,
            relay,
            reloads_refused,
        }
    }

    /// The relay's metrics, to share with its streams.
    pub fn relay(&self) -> crate::relay::metrics::RelayMetrics {
        self.relay.clone()
    }

    /// The whole registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        self.render_as(Format::OpenMetrics)
    }

    /// The whole registry in `format`.
    pub fn render_as(&self, format: Format) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        };
        out
    }

    /// The metrics a group-commit writer reports into.
    pub fn audit_writer(&self) -> AuditWriterMetrics {
        self.audit_writer.clone()
    }

    /// Reports `stale` (1 while the key set `source` is served from its last good
    /// fetch after a failed refresh) as `token_vendor_jwks_stale{source}` (and
    /// `tenant`, for a Corti realm's keys).
    pub fn watch_jwks(&self, source: &'static str, tenant: Option<&str>, stale: Gauge) {
        crate::background::lock(&self.jwks.caches).push((source, tenant.map(str::to_owned), stale));
    }

    /// One answered HTTP request; `route` is one of the service's route names.
    pub fn http_request(&self, route: &'static str, status: u16, took: Duration) {
        let labels = RouteLabels { route, status };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One finished `POST /v1/tokens`; `scope` must come from a parsed scope and
    /// `tenant` be a configured tenant, or either be `"none"`, so the label set stays
    /// small.
    pub fn vend(&self, outcome: &'static str, scope: &str, tenant: &str) {
        self.vends
            .get_or_create(&VendLabels {
                outcome,
                scope: scope.to_owned(),
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    /// One request sent to a tenant's Corti auth and how it ended.
    pub fn upstream_call(&self, tenant: &str, result: &'static str, took: Duration) {
        self.upstream_calls
            .get_or_create(&ResultLabels {
                result,
                tenant: tenant.to_owned(),
            })
            .inc();
        self.upstream_latency
            .get_or_create(&TenantLabels {
                tenant: tenant.to_owned(),
            })
            .observe(took.as_secs_f64());
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

    /// Entries in force in the deny list.
    pub fn deny_list_entries(&self, entries: usize) {
        self.deny_list_entries.set(entries as i64);
    }

    /// A request answered by actix's HTTP/1 parser itself (see `http::connection`).
    pub fn parser_refusal(&self, status: u16, route: &'static str) {
        self.parser_refusals
            .get_or_create(&RouteLabels { route, status })
            .inc();
    }

    /// A reload refused its new value (the log line names the setting).
    pub fn reload_refused(&self) {
        self.reloads_refused.inc();
    }

    /// One vend refused by the deny list.
    pub fn denied_vend(&self) {
        self.denied_vends.inc();
    }

    pub fn coalesced_waiter(&self) {
        self.coalesced_waiters.inc();
    }

    pub fn refused(&self, kind: &'static str) {
        self.refusals.get_or_create(&KindLabels { kind }).inc();
    }

    /// A tenant's circuit breaker changed state.
    pub fn breaker(&self, tenant: &str, state: BreakerGauge) {
        self.breaker_state
            .get_or_create(&TenantLabels {
                tenant: tenant.to_owned(),
            })
            .set(state as i64);
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
        m.vend("issued", "openid transcribe", "base");
        m.refused("user");
        m.upstream_call("base", "ok", Duration::from_millis(12));
        m.breaker("acme", BreakerGauge::Closed);
        let text = m.render();
        assert!(text.contains(
            "token_vendor_vends_total{outcome=\"issued\",scope=\"openid transcribe\",tenant=\"base\"} 1"
        ), "{text}");
        assert!(text.contains("token_vendor_rate_limit_refusals_total{kind=\"user\"} 1"));
        assert!(text.contains("token_vendor_upstream_calls_total{result=\"ok\",tenant=\"base\"} 1"));
        assert!(
            text.contains("token_vendor_upstream_call_duration_seconds_count{tenant=\"base\"} 1")
        );
        assert!(text.contains("token_vendor_upstream_breaker_state{tenant=\"acme\"} 0"));
        assert!(text.contains("token_vendor_rate_limit_redis_fallback 0"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn red_metrics_are_kept_per_route_and_status() {
        let m = Metrics::new();
        m.http_request("/v1/tokens", 200, Duration::from_millis(30));
        m.http_request("/v1/tokens", 200, Duration::from_millis(3));
        m.http_request("/v1/tokens", 429, Duration::from_millis(1));
        let text = m.render();
        assert!(
            text.contains(
                "token_vendor_http_requests_total{route=\"/v1/tokens\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text
            .contains("token_vendor_http_requests_total{route=\"/v1/tokens\",status=\"429\"} 1"));
        assert!(text.contains(
            "token_vendor_http_request_duration_seconds_bucket{le=\"0.005\",route=\"/v1/tokens\",status=\"200\"} 1"
        ), "{text}");
    }

    #[test]
    fn prometheus_text_has_typed_total_families_and_no_eof() {
        let m = Metrics::new();
        m.refused("ip");
        let text = m.render_as(Format::PrometheusText);
        assert!(
            text.contains("# TYPE token_vendor_rate_limit_refusals_total counter"),
            "{text}"
        );
        assert!(text.contains("token_vendor_rate_limit_refusals_total{kind=\"ip\"} 1"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn accept_picks_the_preferred_format() {
        use Format::*;
        assert_eq!(Format::negotiate(None), OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain")), PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            PrometheusText
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")),
            OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2, text/plain;q=0.9")),
            PrometheusText
        );
        assert_eq!(Format::negotiate(Some("application/json")), OpenMetrics);
    }

    #[test]
    fn audit_writer_and_jwks_series_exist_before_any_event() {
        let m = Metrics::new();
        let stale = Gauge::default();
        m.watch_jwks("session", None, stale.clone());
        stale.set(1);
        m.audit_writer().commit(3, Duration::from_millis(2), false);
        let text = m.render();
        assert!(
            text.contains("token_vendor_jwks_stale{source=\"session\"} 1"),
            "{text}"
        );
        assert!(text.contains("token_vendor_audit_commit_failures_total 1"));
        assert!(text.contains("token_vendor_audit_commit_batch_size_count 1"));
        assert!(text.contains("token_vendor_audit_queue_depth 0"));
        assert!(text.contains("token_vendor_audit_store_failing 1"));
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(text.contains("process_open_fds"));
    }
}
