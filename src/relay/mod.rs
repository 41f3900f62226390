//! Relay mode: the browser opens its speech socket through the service, which opens
//! Corti's with a token it holds and relays frames both ways, so no Corti token ever
//! reaches the browser. The upgrade passes the same checks as a vend
//! ([`crate::vend::Vendor::prepare`]) and is one audit event like a vend; the end of
//! each stream is another (`stream_ended`). The operator reaches live streams: a
//! subject added to the deny list has its streams closed, and a stopping replica
//! closes its streams with 1012 once `SHUTDOWN_GRACE` is over.
//!
//! The upgrade handlers are at the edge, in `http/relay.rs`; this folder is the engine
//! they hand a checked stream to.

pub mod metrics;
pub mod pump;
pub mod registry;
pub mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{CortiSettings, RelaySettings};
use crate::deny::NewlyDenied;

pub use registry::{Registry, Slot, Stop};

/// Payload bytes one direction may hold queued: about 2 s of 16 kHz 16-bit PCM.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// Largest message accepted from the browser (continuations included): a queue must
/// be able to hold it.
pub const MAX_FRAME_BYTES: usize = BUFFER_BYTES;

/// The relay of one replica.
pub struct Relay {
    pub(crate) registry: Arc<Registry>,
    /// Corti's speech API base of each configured tenant.
    pub(crate) api_urls: HashMap<String, String>,
    pub(crate) limits: pump::StreamLimits,
    /// How long opening Corti's socket may take.
    pub(crate) connect_timeout: Duration,
    pub(crate) draining: AtomicBool,
    pub(crate) metrics: metrics::RelayMetrics,
}

impl Relay {
    pub fn new(
        settings: &RelaySettings,
        tenants: &[CortiSettings],
        connect_timeout: Duration,
        metrics: metrics::RelayMetrics,
    ) -> Self {
        Self {
            registry: Registry::new(settings.max_streams_per_user, settings.max_streams),
            api_urls: tenants
                .iter()
                .map(|t| (t.tenant.as_str().to_owned(), t.api_url.clone()))
                .collect(),
            limits: pump::StreamLimits {
                idle_timeout: settings.idle_timeout,
                max_duration: settings.max_duration,
            },
            connect_timeout,
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    /// Streams open on this replica now.
    pub fn open_streams(&self) -> usize {
        self.registry.open()
    }

    /// Closes the open streams of subjects that became denied.
    pub fn deny(&self, denied: &NewlyDenied) {
        let stopped = self.registry.deny(denied);
        if stopped > 0 {
            tracing::warn!(streams = stopped, "deny list: open relay streams closed");
        }
    }

    /// No new streams from now on; the open ones are closed with 1012 once `grace`
    /// is over (a little before, so their closes and audit events are written while
    /// the server still waits for them).
    pub fn drain(self: &Arc<Self>, grace: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let margin = (grace / 4).min(Duration::from_secs(1));
        let relay = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace.saturating_sub(margin)).await;
            let stopped = relay.registry.stop_all(Stop::Shutdown);
            if stopped > 0 {
                tracing::info!(
                    streams = stopped,
                    "shutdown grace over: open relay streams closed"
                );
            }
        });
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
