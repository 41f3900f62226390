//! The end of the service's life: on SIGTERM (or SIGINT) readiness turns false first,
//! then the listener closes, in-flight requests get `SHUTDOWN_GRACE` to finish, and the
//! audit events still pending are committed before the process exits 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once a stop signal has arrived; `/readyz` answers 503 from then on, so a load
/// balancer stops sending work before the listener goes away.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed on the first
/// poll, so a supervisor's SIGTERM after that is always a graceful stop.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully")
            }
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal can be received at all: never stop by signal.
        std::future::pending::<()>().await;
    }
}
