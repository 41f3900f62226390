//! OpenTelemetry traces from the real binary to a local OTLP/HTTP receiver: a vend's
//! spans (session check, limits, reuse, the Corti call, the audit commit) arrive under
//! the caller's `traceparent` trace id, carry no secret, are flushed on SIGTERM, and a
//! collector that never answers does not slow a vend.

use std::time::{Duration, Instant};

use crate::support::serve_process::ServeProcess;
use crate::support::{keycloak_claims, SessionSigner, TestKey, CERTS_PATH, TOKEN_PATH};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use token_vendor::dev::random_hex;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The spans one issued vend must export, by name.
const VEND_SPANS: [&str; 6] = [
    "session.verify",
    "limits.check",
    "reuse.lookup",
    "upstream",
    "corti.token",
    "audit.commit",
];

struct Setup {
    signer: SessionSigner,
    client_secret: String,
    /// The token the Corti stand-in grants: it must never reach a span.
    token: String,
    _dir: TempDir,
    _upstream: MockServer,
    env: Vec<(&'static str, String)>,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup(otel: &[(&'static str, String)]) -> Setup {
    let session_secret = format!("fake-session-secret-{}", random_hex(24));
    let client_secret = format!("fake-client-secret-{}", random_hex(12));
    let dir = std::env::temp_dir().join(format!("tv-otlp-{}", random_hex(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = TestKey::generate();
    let token = key.sign(&keycloak_claims("openid transcribe", 300));
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(CERTS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [key.jwk]})))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token, "expires_in": 300, "token_type": "Bearer",
            "scope": "openid transcribe",
        })))
        .mount(&upstream)
        .await;
    let mut env = vec![
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("CORTI_ENVIRONMENT", "eu".into()),
        ("CORTI_AUTH_URL", upstream.uri()),
        ("CORTI_CLIENT_ID", "test-client".into()),
        ("CORTI_CLIENT_SECRET", client_secret.clone()),
        ("SESSION_JWT_SECRET", session_secret.clone()),
        (
            "AUDIT_HMAC_KEY",
            format!("fake-audit-key-{}", random_hex(16)),
        ),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("audit.db").display()),
        ),
        ("TOKEN_REUSE_MIN_TTL", "0".into()),
    ];
    env.extend(otel.iter().cloned());
    Setup {
        signer: SessionSigner::new(&session_secret),
        client_secret,
        token,
        _dir: TempDir(dir),
        _upstream: upstream,
        env,
    }
}

/// A local OTLP/HTTP receiver: answers every `POST /v1/traces` with 200.
async fn collector() -> MockServer {
    let collector = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&collector)
        .await;
    collector
}

/// Every export the collector received, raw and decoded.
async fn exports(collector: &MockServer) -> Vec<(Vec<u8>, ExportTraceServiceRequest)> {
    collector
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            assert_eq!(
                r.headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/x-protobuf"),
                "OTLP over HTTP with protobuf"
            );
            let decoded =
                ExportTraceServiceRequest::decode(r.body.as_slice()).expect("an OTLP trace export");
            (r.body, decoded)
        })
        .collect()
}

async fn spans_of(collector: &MockServer) -> Vec<Span> {
    spans(&exports(collector).await)
}

fn spans(exports: &[(Vec<u8>, ExportTraceServiceRequest)]) -> Vec<Span> {
    exports
        .iter()
        .flat_map(|(_, e)| &e.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.iter().cloned())
        .collect()
}

fn text(value: &Option<AnyValue>) -> Option<String> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(&kv.value))
}

/// Waits until the collector holds spans with every name in `names`.
async fn wait_for_spans(collector: &MockServer, names: &[&str], limit: Duration) -> Vec<Span> {
    let started = Instant::now();
    loop {
        let got = spans(&exports(collector).await);
        if names.iter().all(|n| got.iter().any(|s| s.name == *n)) || started.elapsed() > limit {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn vend(address: &str, session: &str, traceparent: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{address}/v1/tokens"))
        .bearer_auth(session)
        .header("Content-Type", "application/json")
        .body(r#"{"scope":"transcribe"}"#)
        .timeout(Duration::from_secs(20));
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let response = request.send().await.expect("the vend is answered");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vend_exports_its_spans_under_the_callers_trace_id_without_secrets() {
    let _turn = crate::shared_turn().await;
    // Arrange
    let collector = collector().await;
    let setup = setup(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.uri()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ])
    .await;
    let service = ServeProcess::start(&setup.env);
    let session = setup.signer.session(&format!("user-{}", random_hex(6)));
    let (trace, parent) = (random_hex(16), random_hex(8));

    // Act
    let (status, body) = vend(
        &service.address,
        &session,
        Some(&format!("00-{trace}-{parent}-01")),
    )
    .await;

    // Assert
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&setup.token), "the vend hands out the token");
    let mut names: Vec<&str> = VEND_SPANS.to_vec();
    names.push("POST /v1/tokens");
    let spans = wait_for_spans(&collector, &names, Duration::from_secs(15)).await;
    for name in &names {
        assert!(
            spans.iter().any(|s| s.name == *name),
            "span {name} exported; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
    }
    for span in &spans {
        assert_eq!(
            hex(&span.trace_id),
            trace,
            "span {} in the caller's trace",
            span.name
        );
    }
    let request = spans
        .iter()
        .find(|s| s.name == "POST /v1/tokens")
        .expect("the request span");
    assert_eq!(
        hex(&request.parent_span_id),
        parent,
        "the caller's span is the parent"
    );
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(&request.attributes, "http.route").as_deref(),
        Some("/v1/tokens")
    );
    assert_eq!(
        attribute(&request.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    let corti = spans
        .iter()
        .find(|s| s.name == "corti.token")
        .expect("corti span");
    assert_eq!(corti.kind, SpanKind::Client as i32);
    assert_eq!(
        attribute(&corti.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    let exports = exports(&collector).await;
    let resource = &exports[0].1.resource_spans[0].resource;
    let service_name = resource
        .as_ref()
        .and_then(|r| attribute(&r.attributes, "service.name"));
    assert_eq!(
        service_name.as_deref(),
        Some("token-vendor"),
        "the default service name"
    );

    // A vend without a traceparent starts a trace of its own, whose id its log lines show.
    let (status, _) = vend(&service.address, &session, None).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let own_trace = loop {
        let requests = spans_of(&collector).await;
        if let Some(s) = requests
            .iter()
            .find(|s| s.name == "POST /v1/tokens" && hex(&s.trace_id) != trace)
        {
            break hex(&s.trace_id);
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the second vend's trace is exported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        service.log_has(&format!(r#""trace_id":"{own_trace}""#)),
        "the new trace's id is on the vend's log lines"
    );
    // Nothing secret in any export, attributes, events or otherwise.
    for (raw, _) in &exports {
        for (what, secret) in [
            ("client secret", &setup.client_secret),
            ("access token", &setup.token),
            ("session JWT", &session),
        ] {
            assert!(
                !contains(raw, secret.as_bytes()),
                "the {what} was exported in a span"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_are_exported_on_sigterm() {
    let _turn = crate::shared_turn().await;
    // Arrange: a batch delay far longer than the test, so only the shutdown flushes.
    let collector = collector().await;
    let setup = setup(&[
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", collector.uri()),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
        ("OTEL_SERVICE_NAME", "vendor-under-test".into()),
    ])
    .await;
    let mut service = ServeProcess::start(&setup.env);
    let session = setup.signer.session(&format!("user-{}", random_hex(6)));
    let trace = random_hex(16);
    let (status, _) = vend(
        &service.address,
        &session,
        Some(&format!("00-{trace}-{}-01", random_hex(8))),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        exports(&collector).await.is_empty(),
        "nothing exported before the stop"
    );

    // Act
    service.sigterm();
    let exit = tokio::task::block_in_place(|| service.wait_exit(Duration::from_secs(15)));

    // Assert
    let (status, _) = exit.expect("the service exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let exports = exports(&collector).await;
    let spans = spans(&exports);
    for name in VEND_SPANS {
        assert!(
            spans
                .iter()
                .any(|s| s.name == name && hex(&s.trace_id) == trace),
            "span {name} flushed at shutdown"
        );
    }
    let resource = &exports[0].1.resource_spans[0].resource;
    assert_eq!(
        resource
            .as_ref()
            .and_then(|r| attribute(&r.attributes, "service.name"))
            .as_deref(),
        Some("vendor-under-test"),
        "OTEL_SERVICE_NAME names the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_neither_slows_nor_fails_a_vend() {
    let _turn = crate::alone().await;
    // Arrange: a listener nobody accepts on: connections open, no answer ever comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    let setup = setup(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16".into()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8".into()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "300".into()),
    ])
    .await;
    let mut service = ServeProcess::start(&setup.env);

    // Act: enough vends to fill the queue many times over.
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let session = setup.signer.session(&format!("user-{i}-{}", random_hex(4)));
        let started = Instant::now();
        let (status, body) = vend(&service.address, &session, None).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{body}");
    }

    // Assert: every vend answered promptly, the loss is logged, the stop is bounded.
    assert!(slowest < Duration::from_secs(2), "slowest vend {slowest:?}");
    let started = Instant::now();
    while !service.log_has("spans could not be exported")
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        service.log_has("spans could not be exported"),
        "failed exports are logged"
    );
    service.sigterm();
    let exit = tokio::task::block_in_place(|| service.wait_exit(Duration::from_secs(15)));
    let (status, took) = exit.expect("the service exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(8),
        "the last flush is bounded: {took:?}"
    );
    drop(silent);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
