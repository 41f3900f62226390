//! The service's log lines, captured in this process: the tracing subscriber is global,
//! so these suites share one, installed once at TRACE, in a test binary of their own
//! (no other binary's tests may log into it or find it already taken).

#[path = "../support/mod.rs"]
mod support;

/// No secret, session or token in any log line.
mod no_secrets;
/// A caller's `traceparent` on every log line of its request.
mod trace_context;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Every line the service logged so far in this binary.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// The subscriber, installed on first use; all tests of this binary share it.
    pub fn get() -> Self {
        static CAPTURED: OnceLock<Captured> = OnceLock::new();
        CAPTURED
            .get_or_init(|| {
                let captured = Captured::default();
                let writer = captured.clone();
                assert!(token_vendor::telemetry::init(
                    tracing_subscriber::EnvFilter::new("trace"),
                    move || writer.clone()
                ));
                captured
            })
            .clone()
    }

    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).expect("log lines are UTF-8")
    }
}

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
