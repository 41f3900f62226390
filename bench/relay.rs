//! Helpers for `bench/relay.sh` (not a test, not shipped):
//!
//!     relay_bench upstream --port-file F
//!     relay_bench load --url ws://… --sessions FILE --streams 1000 --warmup 5 --measure 30 \
//!         --hz 100 --pid 123 --pid 124 --target nginx
//!
//! `upstream` is a speech socket shaped like Corti's as far as the relay needs: any path,
//! a `config` text message answered `{"type":"CONFIG_ACCEPTED"}`, then each binary audio
//! frame answered at once with a small JSON text message carrying the frame's sequence
//! number and send time (`{"type":"transcript","seq":…,"t":…}`), as a transcript would
//! come back. A close is answered with a close.
//!
//! `load` opens `--streams` sockets to `--url` (each with its own session JWT from
//! `--sessions`, one per line, as `Authorization: Bearer`), sends the config, waits for
//! `CONFIG_ACCEPTED`, then sends 16 kHz 16-bit mono PCM at real-time pace: a 3,200-byte
//! frame every 100 ms per stream, the streams' ticks spread evenly over the 100 ms. The
//! round trip of every frame sent in the measuring window (after `--warmup`) is recorded;
//! CPU (utime+stime) and RSS (`VmRSS`) of the `--pid` processes are read at the start and
//! end of the window. Every frame sent must come back: after the last one it waits up to
//! `--drain` seconds, then closes. One line `RESULT key=value …` goes to stdout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{interval_at, timeout, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// 100 ms of 16 kHz 16-bit mono PCM.
const FRAME_BYTES: usize = 3_200;
const FRAME_EVERY: Duration = Duration::from_millis(100);

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the echoing speech upstream.
    Upstream {
        /// Written with the port once the listener is bound.
        #[arg(long)]
        port_file: std::path::PathBuf,
    },
    /// Run N real-time streams against a URL and print one RESULT line.
    Load {
        #[arg(long)]
        url: String,
        /// Session JWTs, one per line; stream i uses line i (wrapping).
        #[arg(long)]
        sessions: std::path::PathBuf,
        #[arg(long)]
        streams: usize,
        /// Seconds of sending before the measuring window.
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        /// Seconds of the measuring window.
        #[arg(long, default_value_t = 30)]
        measure: u64,
        /// Seconds allowed after the last frame for every answer to arrive.
        #[arg(long, default_value_t = 5)]
        drain: u64,
        /// Sockets being opened at the same time.
        #[arg(long, default_value_t = 64)]
        connect_concurrency: usize,
        /// Processes whose CPU and RSS are read (e.g. nginx master and workers).
        #[arg(long)]
        pid: Vec<u32>,
        /// Clock ticks per second (`getconf CLK_TCK`).
        #[arg(long, default_value_t = 100)]
        hz: u64,
        /// Name printed in the RESULT line.
        #[arg(long, default_value = "target")]
        target: String,
    },
}

fn main() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Command::Upstream { port_file } => runtime.block_on(upstream(&port_file)),
        Command::Load {
            url,
            sessions,
            streams,
            warmup,
            measure,
            drain,
            connect_concurrency,
            pid,
            hz,
            target,
        } => {
            let sessions: Vec<String> = std::fs::read_to_string(&sessions)?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect();
            if sessions.is_empty() {
                return Err(std::io::Error::other("no session JWTs in --sessions"));
            }
            let plan = Plan {
                url,
                sessions,
                streams,
                warmup: Duration::from_secs(warmup),
                measure: Duration::from_secs(measure),
                drain: Duration::from_secs(drain),
                connect_concurrency: connect_concurrency.max(1),
                pids: pid,
                hz: hz.max(1),
                target,
            };
            runtime.block_on(load(plan))
        }
    }
}

// --- the upstream ------------------------------------------------------------------------

async fn upstream(port_file: &std::path::Path) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    std::fs::write(port_file, format!("{port}\n"))?;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: wait and go on.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                echo(ws).await;
            }
        });
    }
}

async fn echo(mut ws: WebSocketStream<TcpStream>) {
    let mut configured = false;
    while let Some(Ok(msg)) = ws.next().await {
        let answer = match msg {
            Message::Text(text) if !configured => {
                if !text.contains("\"config\"") {
                    let _ = ws.close(None).await;
                    return;
                }
                configured = true;
                r#"{"type":"CONFIG_ACCEPTED"}"#.to_owned()
            }
            Message::Binary(frame) if configured && frame.len() >= 16 => {
                let (seq, t) = header(&frame);
                format!(r#"{{"type":"transcript","seq":{seq},"t":{t}}}"#)
            }
            Message::Close(_) => {
                // tungstenite has queued the close reply; flush it.
                let _ = ws.flush().await;
                return;
            }
            _ => continue,
        };
        if ws.send(Message::Text(answer.into())).await.is_err() {
            return;
        }
    }
}

fn header(frame: &[u8]) -> (u64, u64) {
    let mut seq = [0u8; 8];
    let mut t = [0u8; 8];
    seq.copy_from_slice(&frame[..8]);
    t.copy_from_slice(&frame[8..16]);
    (u64::from_le_bytes(seq), u64::from_le_bytes(t))
}

// --- the load ----------------------------------------------------------------------------

struct Plan {
    url: String,
    sessions: Vec<String>,
    streams: usize,
    warmup: Duration,
    measure: Duration,
    drain: Duration,
    connect_concurrency: usize,
    pids: Vec<u32>,
    hz: u64,
    target: String,
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Default)]
struct StreamStats {
    sent: u64,
    received: u64,
    /// Round trips in µs of the frames sent inside the measuring window.
    rtts: Vec<u32>,
    /// The socket ended (or failed) before the run did.
    broke: bool,
}

#[derive(Deserialize)]
struct Answer {
    t: u64,
}

async fn load(plan: Plan) -> std::io::Result<()> {
    let base = Instant::now();
    let idle_rss = rss_kib(&plan.pids);

    // Open every socket first (config sent, CONFIG_ACCEPTED received), a few at a time.
    let gate = Arc::new(Semaphore::new(plan.connect_concurrency));
    let mut opening = Vec::with_capacity(plan.streams);
    for i in 0..plan.streams {
        let gate = gate.clone();
        let url = plan.url.clone();
        let jwt = plan.sessions[i % plan.sessions.len()].clone();
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            open(&url, &jwt).await
        }));
    }
    let mut sockets = Vec::with_capacity(plan.streams);
    let mut failed_open = 0usize;
    let mut first_error = None;
    for handle in opening {
        match handle.await {
            Ok(Ok(ws)) => sockets.push(ws),
            Ok(Err(e)) => {
                failed_open += 1;
                first_error.get_or_insert(e);
            }
            Err(_) => failed_open += 1,
        }
    }
    let open_s = base.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        eprintln!(
            "{}: {failed_open} stream(s) did not open; first: {e}",
            plan.target
        );
    }
    let open_rss = rss_kib(&plan.pids);

    // Send: the streams' ticks spread evenly over one frame interval.
    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + plan.warmup;
    let window_end = window_start + plan.measure;
    let frames = ((plan.warmup + plan.measure).as_millis() / FRAME_EVERY.as_millis()) as u64;
    let n = sockets.len().max(1) as u32;
    let mut running = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets.into_iter().enumerate() {
        let first = start + FRAME_EVERY * i as u32 / n;
        let drain = plan.drain;
        running.push(tokio::spawn(async move {
            stream(ws, base, first, frames, (window_start, window_end), drain).await
        }));
    }

    tokio::time::sleep_until(window_start.into()).await;
    let cpu0 = cpu_ticks(&plan.pids);
    tokio::time::sleep_until(window_end.into()).await;
    let cpu1 = cpu_ticks(&plan.pids);
    let busy_rss = rss_kib(&plan.pids);

    let mut total = StreamStats::default();
    let mut broke = 0usize;
    for handle in running {
        let s = handle.await.unwrap_or_else(|_| StreamStats {
            broke: true,
            ..StreamStats::default()
        });
        total.sent += s.sent;
        total.received += s.received;
        total.rtts.extend(s.rtts);
        broke += usize::from(s.broke);
    }
    let mut rtts = total.rtts;
    rtts.sort_unstable();
    let pct = |p: f64| -> String {
        if rtts.is_empty() {
            return "-".into();
        }
        let i = ((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1;
        format!("{:.3}", f64::from(rtts[i]) / 1000.0)
    };
    let expected = frames * plan.streams as u64;
    println!(
        "RESULT target={} streams={} opened={} failed_open={} broke={} open_s={:.1} \
         expected={} sent={} received={} lost={} measured={} p50_ms={} p99_ms={} \
         p999_ms={} max_ms={} window_s={} cpu_s={:.3} rss_idle_kib={} rss_open_kib={} \
         rss_kib={}",
        plan.target,
        plan.streams,
        plan.streams - failed_open,
        failed_open,
        broke,
        open_s,
        expected,
        total.sent,
        total.received,
        total.sent.saturating_sub(total.received),
        rtts.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        plan.measure.as_secs(),
        cpu1.saturating_sub(cpu0) as f64 / plan.hz as f64,
        idle_rss,
        open_rss,
        busy_rss,
    );
    Ok(())
}

async fn open(url: &str, jwt: &str) -> Result<Client, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let bearer = HeaderValue::from_str(&format!("Bearer {jwt}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert("authorization", bearer);
    let (mut ws, _) = timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async_with_config(request, None, true),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let config = r#"{"type":"config","configuration":{"primaryLanguage":"en","mode":{"type":"transcription"}}}"#;
    ws.send(Message::Text(config.into()))
        .await
        .map_err(|e| e.to_string())?;
    let accepted = timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) if t.contains("CONFIG_ACCEPTED") => return Ok(()),
                Ok(Message::Text(t)) => return Err(format!("config answered {t}")),
                Ok(Message::Close(frame)) => return Err(format!("closed: {frame:?}")),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("closed before CONFIG_ACCEPTED".to_owned())
    })
    .await
    .map_err(|_| "no CONFIG_ACCEPTED within 10 s".to_owned())?;
    accepted.map(|()| ws)
}

async fn stream(
    mut ws: Client,
    base: Instant,
    first: Instant,
    frames: u64,
    window: (Instant, Instant),
    drain: Duration,
) -> StreamStats {
    let mut stats = StreamStats::default();
    let mut ticks = interval_at(first.into(), FRAME_EVERY);
    // Keep the real-time schedule: a late tick is sent at once, not dropped.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let pcm = vec![0u8; FRAME_BYTES];
    let window = (
        window.0.duration_since(base).as_nanos() as u64,
        window.1.duration_since(base).as_nanos() as u64,
    );
    let mut drain_until = None;
    loop {
        if stats.sent >= frames {
            if stats.received >= stats.sent {
                break;
            }
            let until = *drain_until.get_or_insert_with(|| Instant::now() + drain);
            if Instant::now() >= until {
                break;
            }
        }
        tokio::select! {
            _ = ticks.tick(), if stats.sent < frames => {
                let mut frame = pcm.clone();
                let t = base.elapsed().as_nanos() as u64;
                frame[..8].copy_from_slice(&stats.sent.to_le_bytes());
                frame[8..16].copy_from_slice(&t.to_le_bytes());
                if ws.send(Message::Binary(Bytes::from(frame))).await.is_err() {
                    stats.broke = true;
                    return stats;
                }
                stats.sent += 1;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let now = base.elapsed().as_nanos() as u64;
                    if let Ok(answer) = serde_json::from_str::<Answer>(&text) {
                        stats.received += 1;
                        if answer.t >= window.0 && answer.t < window.1 {
                            let us = now.saturating_sub(answer.t) / 1_000;
                            stats.rtts.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    stats.broke = true;
                    return stats;
                }
            },
            () = tokio::time::sleep_until(drain_until.unwrap_or(first).into()), if drain_until.is_some() => {}
        }
    }
    let _ = timeout(Duration::from_secs(5), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    stats
}

/// utime + stime of the processes, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let rest = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14 and stime 15 (proc(5)).
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Sum of `VmRSS` of the processes, in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}
