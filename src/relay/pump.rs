//! One relayed stream: frames both ways through bounded buffers, until one side
//! closes, the upstream fails, a limit is met or the operator stops it.
//!
//! Each direction has a writer task fed through a queue whose payload bytes are
//! counted: a frame is queued only while the queue holds less than
//! [`BUFFER_BYTES`](super::BUFFER_BYTES), and a writer gives its bytes back only once
//! the receiving socket took them. A side that cannot keep up for that long ends the
//! stream with 1013 (try again later) instead of growing memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as UpCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as UpMessage;

use super::metrics::RelayMetrics;
use super::registry::{Slot, Stop};
use super::upstream::UpstreamSocket;
use super::BUFFER_BYTES;

/// Frames a queue may hold whatever their size (many tiny frames cost memory too).
const QUEUE_FRAMES: usize = 256;

/// How long closing handshakes may take once the stream has ended.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Who or what ended a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    Client,
    Upstream,
    /// The upstream socket failed (no close frame, a protocol error, a write error).
    UpstreamFailure,
    Deny,
    /// A buffer bound or the frame size cap.
    Limit,
    Idle,
    Duration,
    Shutdown,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Client => "client",
            EndedBy::Upstream => "upstream",
            EndedBy::UpstreamFailure => "upstream_failure",
            EndedBy::Deny => "deny",
            EndedBy::Limit => "limit",
            EndedBy::Idle => "idle",
            EndedBy::Duration => "duration",
            EndedBy::Shutdown => "shutdown",
        }
    }
}

/// A close frame's content, as sent or received (`code` absent: none was given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Close {
    pub code: Option<u16>,
    pub reason: String,
}

impl Close {
    fn new(code: u16, reason: &str) -> Self {
        Self {
            code: Some(code),
            reason: reason.to_owned(),
        }
    }
}

/// The close codes the service itself sends.
pub mod codes {
    /// Denied, idle or at its maximum duration: 1000 is the only code on which
    /// `@corti/sdk` does not reconnect, so the end is final for every client.
    pub const FINAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const UPSTREAM_FAILED: u16 = 1011;
    pub const SHUTDOWN: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// How a stream went: what the audit event and the metrics say of it.
#[derive(Debug, Clone)]
pub struct Report {
    pub ended_by: EndedBy,
    /// The close on the browser's side: received from it, or sent to it.
    pub client_close: Option<Close>,
    /// The close on Corti's side: received from it, or sent to it.
    pub upstream_close: Option<Close>,
    pub duration: Duration,
    pub bytes_up: u64,
    pub frames_up: u64,
    pub bytes_down: u64,
    pub frames_down: u64,
}

/// Per-stream limits.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub idle_timeout: Duration,
    pub max_duration: Duration,
}

/// A queue to one side's writer, bounded in bytes and frames.
struct Outbox<T> {
    queue: mpsc::Sender<(T, usize)>,
    queued: Arc<AtomicUsize>,
}

impl<T> Outbox<T> {
    /// Queues a frame unless the bound would be passed.
    fn push(&self, item: T, len: usize) -> bool {
        if self.queued.load(Ordering::Acquire) + len > BUFFER_BYTES {
            return false;
        }
        self.queued.fetch_add(len, Ordering::AcqRel);
        if self.queue.try_send((item, len)).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }
}

fn outbox<T>() -> (Outbox<T>, mpsc::Receiver<(T, usize)>, Arc<AtomicUsize>) {
    let (queue, rx) = mpsc::channel(QUEUE_FRAMES);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            queue,
            queued: queued.clone(),
        },
        rx,
        queued,
    )
}

enum Down {
    Binary(Bytes),
    Text(String),
}

/// Relays until the stream ends, closes both sides and reports how it went.
pub async fn run(
    client: Session,
    mut from_client: AggregatedMessageStream,
    upstream: UpstreamSocket,
    mut slot: Slot,
    limits: StreamLimits,
    metrics: RelayMetrics,
) -> Report {
    let started = Instant::now();
    let (mut up_sink, mut from_upstream) = upstream.split();
    let (to_upstream, mut up_rx, up_queued) = outbox::<UpMessage>();
    let (to_client, mut down_rx, down_queued) = outbox::<Down>();

    // Writers: each gives its bytes back once the socket took them.
    let mut up_writer = tokio::spawn(async move {
        while let Some((msg, len)) = up_rx.recv().await {
            let sent = up_sink.send(msg).await;
            up_queued.fetch_sub(len, Ordering::AcqRel);
            sent?;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(up_sink)
    });
    let mut client_sink = client.clone();
    let mut down_writer = actix_web::rt::spawn(async move {
        while let Some((msg, len)) = down_rx.recv().await {
            let sent = match msg {
                Down::Binary(b) => client_sink.binary(b).await,
                Down::Text(t) => client_sink.text(t).await,
            };
            down_queued.fetch_sub(len, Ordering::AcqRel);
            sent?;
        }
        Ok::<_, actix_ws::Closed>(())
    });

    let (mut bytes_up, mut frames_up, mut bytes_down, mut frames_down) = (0u64, 0u64, 0u64, 0u64);
    let idle = tokio::time::sleep(limits.idle_timeout);
    let deadline = tokio::time::sleep(limits.max_duration);
    tokio::pin!(idle, deadline);
    let mut client_alive = true;
    // A finished writer must not be awaited again.
    let mut up_writer_done = false;

    // One relayed frame: queued for the other side (or the stream ends with 1013 when the
    // bound is reached), counted, and the idle timer restarted.
    macro_rules! forward {
        ($queue:ident, $msg:expr, $len:expr, $up:expr, $bytes:ident, $frames:ident, $full:expr) => {
            if !$queue.push($msg, $len) {
                break (
                    EndedBy::Limit,
                    None,
                    None,
                    Some(Close::new(codes::TRY_AGAIN_LATER, $full)),
                );
            }
            $bytes += $len as u64;
            $frames += 1;
            metrics.relayed($up, $len);
            idle.as_mut()
                .reset(tokio::time::Instant::now() + limits.idle_timeout);
        };
    }

    // What ended it, the close received (if any) and which side it came from.
    let (ended_by, received_client, received_upstream, own): (
        EndedBy,
        Option<Close>,
        Option<Close>,
        Option<Close>,
    ) = loop {
        tokio::select! {
            msg = from_client.next() => match msg {
                Some(Ok(AggregatedMessage::Binary(b))) => {
                    let len = b.len();
                    forward!(to_upstream, UpMessage::Binary(b), len, true, bytes_up, frames_up, "relay buffer full: Corti is not keeping up");
                }
                Some(Ok(AggregatedMessage::Text(t))) => {
                    let len = t.len();
                    forward!(to_upstream, UpMessage::Text(t.to_string().into()), len, true, bytes_up, frames_up, "relay buffer full: Corti is not keeping up");
                }
                Some(Ok(AggregatedMessage::Ping(p))) => {
                    let mut s = client.clone();
                    let _ = s.pong(&p).await;
                }
                Some(Ok(AggregatedMessage::Pong(_))) => {}
                Some(Ok(AggregatedMessage::Close(reason))) => {
                    let close = reason.map(|r| Close {
                        code: Some(u16::from(r.code)),
                        reason: r.description.unwrap_or_default(),
                    }).unwrap_or_default();
                    break (EndedBy::Client, Some(close), None, None);
                }
                Some(Err(e)) => {
                    let own = match e {
                        actix_ws::ProtocolError::Overflow => {
                            Close::new(codes::TOO_BIG, "frame larger than the relay accepts")
                        }
                        _ => Close::new(1002, "protocol error"),
                    };
                    let by = if own.code == Some(codes::TOO_BIG) { EndedBy::Limit } else { EndedBy::Client };
                    break (by, None, None, Some(own));
                }
                None => {
                    client_alive = false;
                    break (EndedBy::Client, Some(Close::default()), None, None);
                }
            },
            msg = from_upstream.next() => match msg {
                Some(Ok(UpMessage::Binary(b))) => {
                    let len = b.len();
                    forward!(to_client, Down::Binary(b), len, false, bytes_down, frames_down, "relay buffer full: the client is not keeping up");
                }
                Some(Ok(UpMessage::Text(t))) => {
                    let len = t.len();
                    forward!(to_client, Down::Text(t.as_str().to_owned()), len, false, bytes_down, frames_down, "relay buffer full: the client is not keeping up");
                }
                Some(Ok(UpMessage::Close(frame))) => {
                    let close = frame.map(|f| Close {
                        code: Some(u16::from(f.code)),
                        reason: f.reason.as_str().to_owned(),
                    }).unwrap_or_default();
                    break (EndedBy::Upstream, None, Some(close), None);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    break (EndedBy::UpstreamFailure, None, None,
                        Some(Close::new(codes::UPSTREAM_FAILED, "Corti's speech socket failed")));
                }
            },
            _ = &mut up_writer => {
                up_writer_done = true;
                break (EndedBy::UpstreamFailure, None, None,
                    Some(Close::new(codes::UPSTREAM_FAILED, "Corti's speech socket failed")));
            }
            _ = &mut down_writer => {
                client_alive = false;
                break (EndedBy::Client, Some(Close::default()), None, None);
            }
            _ = &mut idle => {
                break (EndedBy::Idle, None, None, Some(Close::new(codes::FINAL, "idle timeout (RELAY_IDLE_TIMEOUT)")));
            }
            _ = &mut deadline => {
                break (EndedBy::Duration, None, None, Some(Close::new(codes::FINAL, "maximum stream duration reached (RELAY_MAX_DURATION)")));
            }
            Ok(()) = slot.stop.changed() => {
                let stop = *slot.stop.borrow_and_update();
                match stop {
                    Some(Stop::Deny) => break (EndedBy::Deny, None, None,
                        Some(Close::new(codes::FINAL, "stopped by the operator (deny list)"))),
                    Some(Stop::Shutdown) => break (EndedBy::Shutdown, None, None,
                        Some(Close::new(codes::SHUTDOWN, "token-vendor is restarting; connect again"))),
                    None => {}
                }
            }
        }
    };

    // What each side is told: a side's own close goes to the other as it was; the
    // service's own close goes to both (an upstream that failed is told nothing).
    let to_client_close = match (&received_client, &received_upstream, &own) {
        (Some(c), _, _) => c.clone(), // echoed back to the client
        (_, Some(u), _) => u.clone(),
        (_, _, Some(o)) => o.clone(),
        _ => Close::default(),
    };
    let to_upstream_close = match (&received_client, &received_upstream, &own) {
        (Some(c), _, _) if c.code.is_some() => Some(c.clone()),
        // The browser vanished without a close frame.
        (Some(_), _, _) => Some(Close::new(codes::GOING_AWAY, "the client went away")),
        (_, Some(_), _) => None, // tungstenite answers Corti's close itself
        _ if ended_by == EndedBy::UpstreamFailure => None,
        (_, _, Some(o)) if ended_by == EndedBy::Limit && o.code == Some(codes::TOO_BIG) => Some(
            Close::new(codes::GOING_AWAY, "the client sent a frame too large"),
        ),
        (_, _, Some(o)) => Some(o.clone()),
        _ => None,
    };

    // Corti gets its close after the audio already queued for it.
    drop(to_client);
    if let Some(close) = &to_upstream_close {
        let frame = close.code.map(|code| CloseFrame {
            code: UpCode::from(code),
            reason: clip_reason(&close.reason).into(),
        });
        let _ = to_upstream.queue.try_send((UpMessage::Close(frame), 0));
    }
    drop(to_upstream);
    let up_closing = async {
        if up_writer_done {
            return;
        }
        if let Ok(Ok(mut sink)) = (&mut up_writer).await {
            let _ = sink.close().await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, up_closing).await;
    up_writer.abort();
    down_writer.abort();
    if client_alive {
        let reason = to_client_close.code.map(|code| CloseReason {
            code: CloseCode::from(code),
            description: Some(clip_reason(&to_client_close.reason)),
        });
        let _ = tokio::time::timeout(CLOSE_WAIT, client.close(reason)).await;
    }

    let report = Report {
        ended_by,
        client_close: Some(received_client.unwrap_or(to_client_close)),
        upstream_close: received_upstream.or(to_upstream_close),
        duration: started.elapsed(),
        bytes_up,
        frames_up,
        bytes_down,
        frames_down,
    };
    metrics.closed(ended_by.as_str(), report.duration.as_secs_f64());
    report
}

/// A close reason fits in 123 bytes.
fn clip_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}
