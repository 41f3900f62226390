//! A caller's W3C `traceparent` is honoured: its trace id is on every log line of the
//! request, and an invalid one is ignored.

use crate::support::*;
use crate::Captured;
use serde_json::Value;
use token_vendor::dev::random_hex;

#[tokio::test]
async fn the_traceparent_trace_id_is_on_every_log_line_of_its_request() {
    let captured = Captured::get();
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

    let logs = captured.text();
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
