//! A caller's W3C `traceparent` is honoured: its trace id is on every log line of the
//! request, and an invalid one is ignored. One test per binary, since the subscriber
//! is global.

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::*;
use token_vendor::dev::random_hex;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_traceparent_trace_id_is_on_every_log_line_of_its_request() {
    let captured = Captured::default();
    let writer = captured.clone();
    assert!(token_vendor::telemetry::init(
        tracing_subscriber::EnvFilter::new("info"),
        move || writer.clone()
    ));
    let app = TestApp::builder().spawn().await;
    let session = app.session(&unique_user());
    let trace = random_hex(16);
    let (traced, untraced) = (new_request_id(), new_request_id());

    let response = app
        .post_tokens()
        .bearer_auth(&session)
        .header("X-Request-Id", &traced)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("Content-Type", "application/json")
        .body(r#"{"scope":"transcribe"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .post_tokens()
        .bearer_auth(&session)
        .header("X-Request-Id", &untraced)
        .header("traceparent", format!("00-{trace}-0000000000000000-01"))
        .header("Content-Type", "application/json")
        .body(r#"{"scope":"transcribe"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Each line lists its spans, outermost first: the request span is one of them.
    let request_spans = |request_id: &str| -> Vec<Value> {
        lines
            .iter()
            .filter_map(|l| l["spans"].as_array())
            .filter_map(|spans| spans.iter().find(|s| s["request_id"] == request_id))
            .cloned()
            .collect()
    };
    let traced_lines = request_spans(&traced);
    assert!(traced_lines.len() >= 2, "the request logs: {logs}");
    for span in traced_lines {
        assert_eq!(span["trace_id"], trace.as_str(), "{span}");
    }
    let untraced_lines = request_spans(&untraced);
    assert!(!untraced_lines.is_empty());
    for span in untraced_lines {
        assert!(span.get("trace_id").is_none(), "{span}");
    }
}
