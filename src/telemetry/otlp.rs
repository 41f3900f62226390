//! OpenTelemetry traces over OTLP/HTTP (protobuf), off unless an OTLP endpoint is set.
//!
//! Configured by the standard variables only: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_BSP_*`; `OTEL_SDK_DISABLED=true` turns it off.
//!
//! A request never waits for the collector: an ended span goes into the SDK's bounded
//! queue (`OTEL_BSP_MAX_QUEUE_SIZE`, dropped when full) and the SDK's batch thread hands
//! each export to the service's Tokio runtime, on its own async `reqwest` client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use bytes::Bytes;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
const TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Shown by `check-config` as they are (none of them holds a secret).
const PLAIN: [&str; 9] = [
    SERVICE_NAME,
    RESOURCE_ATTRIBUTES,
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    TIMEOUT,
    TRACES_TIMEOUT,
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
];
const DEFAULT_SERVICE_NAME: &str = "token-vendor";
/// The exporter's own default for `OTEL_EXPORTER_OTLP_TIMEOUT`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed exports are logged at most this often, with what was lost since.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Set once traces are exported: the request middleware skips all trace-context work
/// while it is false.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
#[error("{name} {problem}")]
pub struct OtlpError {
    pub name: &'static str,
    pub problem: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the settings ask for traces: an endpoint set and the SDK not disabled.
fn wanted() -> bool {
    let disabled = var(SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (var(TRACES_ENDPOINT).is_some() || var(ENDPOINT).is_some())
}

/// Only OTLP over HTTP with protobuf, uncompressed, is built in; another protocol or a
/// compression is refused rather than spoken wrongly to a collector.
fn check_protocol() -> Result<(), OtlpError> {
    for name in [TRACES_PROTOCOL, PROTOCOL] {
        if let Some(p) = var(name) {
            if p.trim() != "http/protobuf" {
                return Err(OtlpError {
                    name,
                    problem: format!("is {p:?}: only \"http/protobuf\" is supported"),
                });
            }
            break;
        }
    }
    for name in [TRACES_COMPRESSION, COMPRESSION] {
        if let Some(c) = var(name) {
            return Err(OtlpError {
                name,
                problem: format!("is {c:?}: exports are not compressed (unset it)"),
            });
        }
    }
    Ok(())
}

/// The trace settings for `check-config`, in its `NAME=value` form; header values
/// (often an API key) are never shown.
pub fn redacted_lines() -> Vec<String> {
    if !wanted() {
        let why = if var(SDK_DISABLED).is_some() && var(ENDPOINT).or(var(TRACES_ENDPOINT)).is_some()
        {
            "OTEL_SDK_DISABLED: OpenTelemetry traces off"
        } else {
            "unset: OpenTelemetry traces off"
        };
        return vec![format!("{ENDPOINT}=({why})")];
    }
    let mut lines = Vec::new();
    for name in [ENDPOINT, TRACES_ENDPOINT, PROTOCOL, TRACES_PROTOCOL]
        .into_iter()
        .chain(PLAIN)
    {
        if let Some(v) = var(name) {
            let v = if name == ENDPOINT || name == TRACES_ENDPOINT {
                crate::config::redact_url(&v)
            } else {
                v
            };
            lines.push(format!("{name}={v}"));
        }
    }
    for name in [HEADERS, TRACES_HEADERS] {
        if let Some(v) = var(name) {
            let names: Vec<&str> = v
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim()))
                .collect();
            lines.push(format!("{name}=(set, redacted: {})", names.join(", ")));
        }
    }
    if var(SERVICE_NAME).is_none() && !has_service_name_attribute() {
        lines.push(format!("{SERVICE_NAME}={DEFAULT_SERVICE_NAME} (default)"));
    }
    lines
}

/// The checks `serve` makes of the trace settings before it starts exporting.
pub fn check() -> Result<(), OtlpError> {
    if wanted() {
        check_protocol()?;
        export_timeout()?;
    }
    Ok(())
}

fn has_service_name_attribute() -> bool {
    var(RESOURCE_ATTRIBUTES).is_some_and(|attrs| {
        attrs.split(',').any(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, _)| k.trim() == "service.name")
        })
    })
}

/// The exporting pipeline while traces are on; [`Traces::shutdown`] flushes it.
pub struct Traces {
    provider: SdkTracerProvider,
    failures: Arc<Failures>,
}

impl Traces {
    /// Starts exporting when the settings ask for it (`Ok(None)` when they do not).
    /// Exports run on `runtime`, which must outlive [`Traces::shutdown`].
    pub fn from_env(runtime: tokio::runtime::Handle) -> Result<Option<Self>, OtlpError> {
        if !wanted() {
            return Ok(None);
        }
        check_protocol()?;
        let timeout = export_timeout()?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| OtlpError {
                name: ENDPOINT,
                problem: format!("cannot build its HTTP client: {e}"),
            })?;
        // The endpoint and headers are read from the environment by the exporter.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_http_client(OnRuntime { client, runtime })
            .build()
            .map_err(|e| OtlpError {
                name: ENDPOINT,
                problem: e.to_string(),
            })?;
        let failures = Arc::new(Failures::default());
        let exporter = Counted {
            inner: exporter,
            failures: failures.clone(),
        };
        let mut resource = Resource::builder();
        if var(SERVICE_NAME).is_none() && !has_service_name_attribute() {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        // The batch processor reads OTEL_BSP_*, the provider OTEL_TRACES_SAMPLER(_ARG).
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some(Self { provider, failures }))
    }

    /// The layer that turns this service's spans into exported ones. Events (log lines)
    /// are not exported, except warnings and errors, which become span events.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer("token-vendor");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("token_vendor")
                    && !meta.target().starts_with(module_path!())
                    && (meta.is_span() || *meta.level() <= tracing::Level::WARN)
            }))
    }

    /// Exports the spans still queued, waiting at most `timeout`.
    pub fn shutdown(self, timeout: Duration) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "OTLP traces: the last spans could not be exported");
        }
        self.failures.report(true);
    }
}

fn export_timeout() -> Result<Duration, OtlpError> {
    for name in [TRACES_TIMEOUT, TIMEOUT] {
        if let Some(v) = var(name) {
            return v
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| OtlpError {
                    name,
                    problem: format!("is {v:?}: expected milliseconds"),
                });
        }
    }
    Ok(DEFAULT_TIMEOUT)
}

/// Makes the caller's W3C trace context (already found valid, see
/// [`crate::http::context::trace_id`]) the parent of `span`, so the exported trace
/// carries the trace id the JSON logs show.
pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

/// The trace id of `span`'s exported span, once it has started (this starts it).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Names the exported span (once the route is known, after the span has started).
pub fn rename(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt as _;
    span.context().span().update_name(name);
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The async `reqwest` client, driven by the service's runtime: the SDK's batch thread
/// has no reactor of its own.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}

/// The exporter, counting what it failed to deliver.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    failures: Arc<Failures>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            self.failures.add(spans, &e.to_string());
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Spans lost to failed exports since the last report; reported at most once per
/// [`REPORT_EVERY`], so an unreachable collector costs one log line a minute.
#[derive(Debug, Default)]
struct Failures(Mutex<FailureState>);

#[derive(Debug, Default)]
struct FailureState {
    spans: u64,
    batches: u64,
    last_error: String,
    reported: Option<Instant>,
}

impl Failures {
    fn add(&self, spans: u64, error: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.spans += spans;
            s.batches += 1;
            s.last_error = crate::text::clip(error, 300);
        }
        self.report(false);
    }

    fn report(&self, last: bool) {
        let Ok(mut s) = self.0.lock() else { return };
        let due = s.reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        if s.batches == 0 || !(due || last) {
            return;
        }
        tracing::warn!(
            lost_spans = s.spans,
            failed_exports = s.batches,
            error = %s.last_error,
            "OTLP traces: spans could not be exported to the collector (reported at most once a minute)"
        );
        *s = FailureState {
            reported: Some(Instant::now()),
            ..FailureState::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_exports_are_reported_once_per_interval_with_their_count() {
        let failures = Failures::default();
        failures.add(3, "connection refused");
        // Reported at once, then counted quietly until the interval has passed.
        failures.add(2, "connection refused");
        failures.add(4, "connection refused");
        let s = failures.0.lock().unwrap();
        assert_eq!((s.spans, s.batches), (6, 2));
        assert!(s.reported.is_some());
    }
}
