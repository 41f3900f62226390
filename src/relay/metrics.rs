//! The relay's metrics: open streams, bytes and frames by direction, stream duration,
//! and closes by reason. Registered beside the service's own in [`crate::metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    /// `up` (browser → Corti) or `down` (Corti → browser).
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Cheap to clone: each metric is an `Arc` inside.
#[derive(Clone, Debug)]
pub struct RelayMetrics {
    open: Gauge,
    bytes: Family<DirectionLabels, Counter>,
    frames: Family<DirectionLabels, Counter>,
    duration: Histogram,
    closes: Family<ReasonLabels, Counter>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self {
            open: Gauge::default(),
            bytes: Family::default(),
            frames: Family::default(),
            // From a refused config (seconds) to a long consultation (hours).
            duration: Histogram::new([1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0]),
            closes: Family::default(),
        }
    }
}

impl RelayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "relay_open_streams",
            "Relayed speech streams open on this replica",
            self.open.clone(),
        );
        registry.register(
            "relay_bytes",
            "Payload bytes relayed, by direction (up: browser to Corti, down: Corti to browser)",
            self.bytes.clone(),
        );
        registry.register(
            "relay_frames",
            "WebSocket data frames relayed, by direction",
            self.frames.clone(),
        );
        registry.register(
            "relay_stream_duration_seconds",
            "How long relayed streams stayed open",
            self.duration.clone(),
        );
        registry.register(
            "relay_stream_closes",
            "Relayed streams ended, by who or what ended them (client, upstream, upstream_failure, deny, limit, idle, duration, shutdown)",
            self.closes.clone(),
        );
    }

    pub fn opened(&self) {
        self.open.inc();
    }

    pub fn closed(&self, reason: &'static str, seconds: f64) {
        self.open.dec();
        self.duration.observe(seconds);
        self.closes.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn relayed(&self, up: bool, bytes: usize) {
        let labels = DirectionLabels {
            direction: if up { "up" } else { "down" },
        };
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
        self.frames.get_or_create(&labels).inc();
    }
}
