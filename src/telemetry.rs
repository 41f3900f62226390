//! Logging: JSON lines on stdout, filtered by `RUST_LOG`, each carrying its request id;
//! and, when an OTLP endpoint is set, the same spans exported as traces ([`otlp`]).

pub mod otlp;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The filter: `RUST_LOG` when set, else `info` for this service and warnings elsewhere.
/// Whatever it says, the WebSocket client's handshake is never traced: its trace line
/// is the raw request, whose URL carries a relayed stream's Corti token.
pub fn env_filter(default: &str) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    NEVER_TRACED
        .iter()
        .fold(filter, |filter, directive| match directive.parse() {
            Ok(d) => filter.add_directive(d),
            Err(_) => filter,
        })
}

/// Targets held at `info` or less, since their debug or trace lines can hold secrets.
const NEVER_TRACED: [&str; 2] = ["tungstenite=info", "tokio_tungstenite=info"];

/// The spans a log line lists: the request's (its id and trace id) and a relayed
/// stream's. The spans inside a vend (`vend`, `session.verify`, `limits.check`,
/// `reuse.lookup`, `upstream`, `audit.commit`) are for traces only: formatting seven
/// spans into every line cost about a tenth of the reuse path's CPU (issue 24).
const LOGGED_SPANS: [&str; 2] = ["request", "relay_stream"];

/// Installs the global JSON subscriber writing to `writer`. Returns false if one was
/// already installed (tests install one per process).
pub fn init<W>(filter: EnvFilter, writer: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    init_with_traces(filter, writer, None)
}

/// [`init`], with the spans also exported when `traces` is given.
pub fn init_with_traces<W>(filter: EnvFilter, writer: W, traces: Option<&otlp::Traces>) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_target(true)
        .with_writer(writer)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            !meta.is_span() || LOGGED_SPANS.contains(&meta.name())
        }));
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(traces.map(|t| t.layer()))
        .try_init()
        .is_ok()
}

/// The default filter string for the service.
pub const DEFAULT_FILTER: &str =
    "info,token_vendor=info,audit=info,actix_server=warn,sqlx=warn,hyper=warn,reqwest=warn";
