//! The connection layer under actix-web. Some requests never reach a middleware or a
//! handler: actix's HTTP/1 parser answers them itself and closes the connection — 431
//! for a head over 96 header lines or 128 KiB, 400 for a head it cannot parse (a bad
//! request line, header or `Content-Length`), 408 when the first head is not complete
//! within actix's request-head timeout (5 s).
//!
//! Every connection's bytes pass through [`Traced`], which keeps just enough of them
//! ([`Sniffer`]) to tell such an answer from the service's own (those all carry
//! `X-Request-Id`) and to name the route of the refused request from its request line.
//! When the connection ends, [`Watched`] counts the refusal
//! (`token_vendor_http_parser_refusals_total`) and audits it, folded like every
//! refusal before the handler, when it may have been a `POST /v1/tokens` or a relay
//! upgrade.
//!
//! What the parser saw of a refused head is all there is: no header was parsed, so the
//! event has the peer's address (not an `X-Forwarded-For` client) and no user agent.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_http::error::DispatchError;
use actix_http::Protocol;
use actix_web::dev::{Service, ServiceFactory};
use actix_web::rt::net::TcpStream;
use actix_web::web;
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::AppState;
use crate::catalog::ProblemType;
use crate::text::{clip, escape_invisible};
use crate::vend::Caller;

/// The route a request line names, as far as the audit cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/tokens`.
    Vend,
    /// `GET /v1/relay/…`.
    Relay,
    /// A request line naming anything else, or bytes that are no request line at all
    /// (a TLS handshake, a port scanner's probe).
    Other,
    /// A request line that could not be read whole (cut off, glued to other bytes,
    /// percent-encoded): it may have been a vend.
    Unknown,
}

impl Route {
    /// Whether a refusal of this request is audited: everything that may have been a
    /// vend or a relay upgrade.
    pub fn audited(self) -> bool {
        self != Route::Other
    }

    /// The `route` label of the refusal metric.
    pub fn label(self) -> &'static str {
        match self {
            Route::Vend => "/v1/tokens",
            Route::Relay => "/v1/relay",
            Route::Other => "other",
            Route::Unknown => "unknown",
        }
    }
}

/// The route of a request: `method` and `target` as sent.
pub fn route_of(method: &[u8], target: &[u8]) -> Route {
    // actix decodes the path before routing; an encoded one is not guessed at.
    if target.contains(&b'%') {
        return Route::Unknown;
    }
    let path = origin_form(target);
    let path = path
        .split(|b| *b == b'?' || *b == b'#')
        .next()
        .unwrap_or_default();
    match method {
        b"POST" if path == b"/v1/tokens" => Route::Vend,
        b"GET" if path.starts_with(b"/v1/relay/") => Route::Relay,
        _ => Route::Other,
    }
}

/// The path part of an absolute-form target (`http://host/path`).
fn origin_form(target: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return rest
                .iter()
                .position(|b| *b == b'/')
                .map_or(&b"/"[..], |i| &rest[i..]);
        }
    }
    target
}

/// Methods a glued request line may start with (see [`Sniffer`]).
const METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"CONNECT", b"TRACE",
];

/// How much of a line's beginning is kept.
const START_KEEP: usize = 96;
/// How much of a line's end is kept (a request line is read from its end, because a
/// request that follows a body without a line break is glued to that body).
const TAIL_KEEP: usize = 256;

/// Where the connection is in its current request, as its bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Nothing read yet.
    Start,
    /// A request line was read, its head is not complete.
    Head(Route, String),
    /// The last head was complete: what follows is its body, then the next request.
    Body,
}

/// A refusal by actix's parser, seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParserRefusal {
    pub status: u16,
    pub route: Route,
    /// The refused request line as far as it was read, escaped and cut for a log.
    pub request_line: String,
}

/// What a connection's bytes say about the request being read, in bounded memory.
#[derive(Debug)]
pub struct Sniffer {
    phase: Phase,
    /// Heads read whole (a request line, headers, a blank line), and the route of the
    /// last one: when the parser refuses while fewer requests reached the service than
    /// this, the refused head is that last one.
    heads: u32,
    last_head: Option<(Route, String)>,
    /// The first bytes of the line being read.
    start: Vec<u8>,
    /// The last bytes of the line being read.
    tail: Vec<u8>,
    /// Bytes of the line being read.
    line_len: usize,
    /// The beginning of the first line after a complete head (or at the start) that was
    /// no request line (a malformed request line: the refused request).
    stray: Option<Vec<u8>>,
    /// A `101 Switching Protocols` went out: the rest is WebSocket frames.
    upgraded: bool,
    refused: Option<ParserRefusal>,
}

impl Default for Sniffer {
    fn default() -> Self {
        Self {
            phase: Phase::Start,
            heads: 0,
            last_head: None,
            start: Vec::with_capacity(START_KEEP),
            tail: Vec::new(),
            line_len: 0,
            stray: None,
            upgraded: false,
            refused: None,
        }
    }
}

impl Sniffer {
    /// Bytes the connection read from the client.
    pub fn read(&mut self, mut bytes: &[u8]) {
        if self.upgraded {
            return;
        }
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.extend_line(&bytes[..end]);
            self.line_done();
            bytes = &bytes[end + 1..];
        }
        self.extend_line(bytes);
    }

    /// Bytes the connection is writing to the client (the start of each write), when
    /// `accepted` requests of this connection have reached the service.
    pub fn wrote(&mut self, bytes: &[u8], accepted: u32) {
        if self.upgraded {
            return;
        }
        let Some(status) = status_of(bytes) else {
            return;
        };
        if status == 101 {
            self.upgraded = true;
            return;
        }
        if !matches!(status, 400 | 408 | 431) || !Self::is_parsers(bytes) {
            return;
        }
        // The parser answers in order: every request before the refused one has reached
        // the service by now.
        let refused = if self.heads > accepted {
            self.last_head.clone()
        } else {
            self.pending()
        };
        if let Some((route, request_line)) = refused {
            self.refused = Some(ParserRefusal {
                status,
                route,
                request_line,
            });
        }
    }

    /// The parser's refusal this connection ended with, if any.
    pub fn refusal(&self) -> Option<&ParserRefusal> {
        self.refused.as_ref()
    }

    /// Whether a response whose head starts `bytes` is actix's own: every response of
    /// the service carries `X-Request-Id`. A head not wholly in this write is not judged.
    fn is_parsers(bytes: &[u8]) -> bool {
        let Some(end) = find(bytes, b"\r\n\r\n") else {
            return false;
        };
        !bytes[..end]
            .split(|b| *b == b'\n')
            .any(|line| line.len() >= 13 && line[..13].eq_ignore_ascii_case(b"x-request-id:"))
    }

    /// The route and request line of the request whose head the parser is reading now;
    /// `None` when no byte of one has arrived (an idle connection timed out).
    fn pending(&self) -> Option<(Route, String)> {
        match &self.phase {
            Phase::Head(route, line) => Some((*route, line.clone())),
            Phase::Start | Phase::Body => {
                // A line still being read may go on, as may a kept beginning.
                let bytes = if self.line_len > 0 {
                    Some(&self.start[..])
                } else {
                    self.stray.as_deref()
                }?;
                let route = classify_start(bytes, true);
                // After a complete head, only a request line that clearly names a
                // vend is taken as the refused request: anything else may be the
                // previous request's body, whose handler answers for it.
                if self.phase == Phase::Body && route != Route::Vend && route != Route::Relay {
                    return Some((Route::Other, shown(bytes)));
                }
                Some((route, shown(bytes)))
            }
        }
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.line_len += bytes.len();
        let room = START_KEEP - self.start.len();
        self.start
            .extend_from_slice(&bytes[..room.min(bytes.len())]);
        let keep = &bytes[bytes.len().saturating_sub(TAIL_KEEP)..];
        self.tail.extend_from_slice(keep);
        if self.tail.len() > 2 * TAIL_KEEP {
            self.tail.drain(..self.tail.len() - TAIL_KEEP);
        }
    }

    fn line_done(&mut self) {
        let tail_from = self.tail.len().saturating_sub(TAIL_KEEP);
        let tail = &self.tail[tail_from..];
        let truncated = self.line_len > tail.len();
        let empty = tail.is_empty() || tail == b"\r";
        // After a body, a line may begin with some of it.
        let after_body = self.phase == Phase::Body;
        let request = (!empty)
            .then(|| classify_complete(tail, truncated || after_body, &self.start))
            .flatten();
        match (&self.phase, request) {
            (Phase::Head(route, line), _) if empty => {
                self.heads = self.heads.saturating_add(1);
                self.last_head = Some((*route, line.clone()));
                self.phase = Phase::Body;
            }
            // A request line inside a head: not a header; the request is not known.
            (Phase::Head(..), Some((_, line))) => self.phase = Phase::Head(Route::Unknown, line),
            (Phase::Head(..), None) => {}
            (Phase::Start | Phase::Body, Some((route, line))) => {
                self.phase = Phase::Head(route, line);
                self.stray = None;
            }
            // The first such line is where a request line was due.
            (Phase::Start | Phase::Body, None) => {
                if !empty && self.stray.is_none() {
                    self.stray = Some(self.start.clone());
                }
            }
        }
        self.start.clear();
        self.tail.clear();
        self.line_len = 0;
    }
}

/// A complete line (its last bytes) as a request line: its route and how to show it;
/// `None` when it is not one. `glued`: the line may begin with other bytes (it was cut,
/// or follows a body).
fn classify_complete(tail: &[u8], glued: bool, start: &[u8]) -> Option<(Route, String)> {
    let line = tail.strip_suffix(b"\r").unwrap_or(tail);
    let (rest, version) = rsplit_once(line, b' ')?;
    if !version.starts_with(b"HTTP/") || version.len() > 12 {
        return None;
    }
    let Some((prefix, target)) = rsplit_once(rest, b' ') else {
        // The target fills all that was kept: the line's beginning names it, unless
        // the line does not begin with it (glued to a body).
        return glued.then(|| {
            let glued = !start.first().is_some_and(u8::is_ascii_uppercase);
            let route = if glued {
                Route::Unknown
            } else {
                classify_start(start, true)
            };
            (route, shown(start))
        });
    };
    let run = prefix
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    if run == 0 || run > 16 || target.is_empty() {
        return None;
    }
    let method = &prefix[prefix.len() - run..];
    let glued = run < prefix.len() || glued;
    let route = if glued && !METHODS.contains(&method) {
        Route::Unknown
    } else {
        route_of(method, target)
    };
    Some((route, shown(&line[prefix.len() - run..])))
}

/// The route named by the beginning of a line that may be cut (`cut`: more followed).
/// A line that does not start like a request line is no request.
fn classify_start(start: &[u8], cut: bool) -> Route {
    let run = start.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if run == 0 || run > 16 || start.get(run) != Some(&b' ') {
        return Route::Other;
    }
    let target = &start[run + 1..];
    let ends = target
        .iter()
        .position(|b| matches!(b, b' ' | b'?' | b'#' | b'\r'));
    match ends {
        Some(end) => route_of(&start[..run], &target[..end]),
        // The path may go on: only one that cannot become an audited one is judged.
        None if cut => {
            if target.starts_with(b"/v1/") || b"/v1/".starts_with(target) {
                Route::Unknown
            } else {
                Route::Other
            }
        }
        None => route_of(&start[..run], target),
    }
}

/// Untrusted bytes as they may be shown in an audit detail.
fn shown(bytes: &[u8]) -> String {
    clip(&escape_invisible(&String::from_utf8_lossy(bytes)), 120)
}

/// The status of a response head starting `bytes` (`HTTP/1.x NNN …`).
fn status_of(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 13 || !bytes.starts_with(b"HTTP/1.") || bytes[8] != b' ' {
        return None;
    }
    std::str::from_utf8(&bytes[9..12]).ok()?.parse().ok()
}

fn rsplit_once(bytes: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().rposition(|b| *b == sep)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Requests of one connection that reached the service (counted by
/// `context::request_id_middleware`, which every request passes first).
#[derive(Debug, Clone, Default)]
pub struct Accepted(Rc<Cell<u32>>);

impl Accepted {
    pub fn count(&self) {
        self.0.set(self.0.get().saturating_add(1));
    }

    fn get(&self) -> u32 {
        self.0.get()
    }
}

/// A connection's stream, its bytes shown to a [`Sniffer`] on the way.
pub struct Traced<T> {
    io: T,
    sniffer: Rc<RefCell<Sniffer>>,
    accepted: Accepted,
}

impl<T> Traced<T> {
    /// The connection's request counter, for the request extensions (`on_connect_ext`).
    pub fn accepted(&self) -> Accepted {
        self.accepted.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Traced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Some(new) = buf.filled().get(before..).filter(|b| !b.is_empty()) {
                this.sniffer.borrow_mut().read(new);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Traced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.sniffer
                    .borrow_mut()
                    .wrote(&buf[..n], this.accepted.get());
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What [`Watched`] hands the HTTP service: the traced stream, HTTP/1, the peer.
pub type TracedConnection = (Traced<TcpStream>, Protocol, Option<SocketAddr>);

/// Wraps the HTTP service of one worker: each connection is [`Traced`], and a refusal
/// by actix's parser is counted and, when it may have been a vend or a relay upgrade,
/// audited once the connection ends.
pub struct WatchedFactory<F> {
    pub http: F,
    pub state: web::Data<AppState>,
}

impl<F> ServiceFactory<TcpStream> for WatchedFactory<F>
where
    F: ServiceFactory<
        TracedConnection,
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >,
    F::Service: 'static,
    F::Future: 'static,
{
    type Response = ();
    type Error = DispatchError;
    type Config = ();
    type Service = Watched<F::Service>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Service, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let http = self.http.new_service(());
        let state = self.state.clone();
        Box::pin(async move {
            Ok(Watched {
                http: Rc::new(http.await?),
                state,
            })
        })
    }
}

/// See [`WatchedFactory`].
pub struct Watched<S> {
    http: Rc<S>,
    state: web::Data<AppState>,
}

impl<S> Service<TcpStream> for Watched<S>
where
    S: Service<TracedConnection, Response = (), Error = DispatchError> + 'static,
{
    type Response = ();
    type Error = DispatchError;
    type Future = LocalBoxFuture<'static, Result<(), DispatchError>>;

    actix_web::dev::forward_ready!(http);

    fn call(&self, io: TcpStream) -> Self::Future {
        let peer = io.peer_addr().ok();
        let sniffer = Rc::new(RefCell::new(Sniffer::default()));
        let traced = Traced {
            io,
            sniffer: sniffer.clone(),
            accepted: Accepted::default(),
        };
        let served = self.http.call((traced, Protocol::Http1, peer));
        let state = self.state.clone();
        Box::pin(async move {
            let result = served.await;
            let refusal = sniffer.borrow_mut().refused.take();
            if let Some(refusal) = refusal {
                report(&state, peer, refusal).await;
            }
            result
        })
    }
}

/// Counts a refusal by the parser and audits it when it may have been a vend or a relay
/// upgrade (folded like every refusal before the handler).
async fn report(state: &AppState, peer: Option<SocketAddr>, refusal: ParserRefusal) {
    state
        .vendor
        .metrics
        .parser_refusal(refusal.status, refusal.route.label());
    if !refusal.route.audited() {
        return;
    }
    let (problem, what) = match refusal.status {
        431 => (
            ProblemType::HeadersTooLarge,
            "request head refused by the HTTP parser (over 96 header lines or 128 KiB)",
        ),
        408 => (
            ProblemType::RequestTimeout,
            "request head not complete within 5 s; connection closed by the HTTP parser",
        ),
        _ => (
            ProblemType::InvalidRequest,
            "malformed request head refused by the HTTP parser",
        ),
    };
    let caller = Caller {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_ip: peer.map(|p| p.ip()),
        user_agent: None,
        origin: None,
    };
    let detail = format!("{what}: {}", refusal.request_line);
    state
        .vendor
        .refuse_before_handler(&caller, problem, &detail)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a sniffer makes of these reads and then `reply`, when `accepted` requests
    /// reached the service.
    fn sniff_after(accepted: u32, reads: &[&[u8]], reply: &[u8]) -> Option<ParserRefusal> {
        let mut s = Sniffer::default();
        for r in reads {
            s.read(r);
        }
        s.wrote(reply, accepted);
        s.refusal().cloned()
    }

    fn sniff(reads: &[&[u8]], reply: &[u8]) -> Option<ParserRefusal> {
        sniff_after(0, reads, reply)
    }

    const REFUSED_431: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
    const REFUSED_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    const TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n";
    const OWN_400: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\nx-request-id: abc\r\n\r\n{}";

    #[test]
    fn a_refused_head_is_attributed_to_its_request_line() {
        let r = sniff(
            &[b"POST /v1/tokens HTTP/1.1\r\nHost: a\r\n", b"X-1: a\r\nX-2"],
            REFUSED_431,
        )
        .expect("a refusal");
        assert_eq!((r.status, r.route), (431, Route::Vend));
        assert_eq!(r.request_line, "POST /v1/tokens HTTP/1.1");
        let r = sniff(&[b"GET /healthz HTTP/1.1\r\nX: y\r\n"], REFUSED_400).expect("a refusal");
        assert_eq!(r.route, Route::Other);
        let r = sniff(
            &[b"GET /v1/relay/transcribe?tenant=a HTTP/1.1\r\n"],
            REFUSED_400,
        )
        .expect("a refusal");
        assert_eq!(r.route, Route::Relay);
        // A head read whole that the parser refused (a `Content-Length` that is no
        // number): no request reached the service, so it is that head.
        let r = sniff(
            &[b"POST /v1/tokens HTTP/1.1\r\nContent-Length: abc\r\n\r\n"],
            REFUSED_400,
        )
        .expect("a refusal");
        assert_eq!((r.status, r.route), (400, Route::Vend));
        // The same after a kept-alive request the service answered.
        let r = sniff_after(
            1,
            &[b"GET /healthz HTTP/1.1\r\n\r\nPOST /v1/tokens HTTP/1.1\r\nBad Header: x\r\n\r\n"],
            REFUSED_400,
        )
        .expect("a refusal");
        assert_eq!(r.route, Route::Vend);
    }

    #[test]
    fn the_service_s_own_answers_are_not_the_parser_s() {
        assert_eq!(
            sniff(&[b"POST /v1/tokens HTTP/1.1\r\nHost: a\r\n\r\n{"], OWN_400),
            None
        );
        // An idle connection closed by the head timeout asked for nothing.
        assert_eq!(sniff(&[], TIMED_OUT), None);
        // A head cut mid-line by the timeout.
        let r = sniff(&[b"POST /v1/tok"], TIMED_OUT).expect("a refusal");
        assert_eq!((r.status, r.route), (408, Route::Unknown));
    }

    #[test]
    fn the_request_after_a_kept_alive_one_is_the_refused_one() {
        let r = sniff_after(
            1,
            &[
                b"POST /v1/tokens HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"a\"}",
                b"GET /healthz HTTP/1.1\r\nBad Header\r\n",
            ],
            REFUSED_400,
        )
        .expect("a refusal");
        assert_eq!(r.route, Route::Other, "{r:?}");
        assert_eq!(r.request_line, "GET /healthz HTTP/1.1");
        let r = sniff_after(
            1,
            &[b"GET /healthz HTTP/1.1\r\n\r\nPOST /v1/tokens?x=1 HTTP/1.1\r\nX: y\r\n"],
            REFUSED_431,
        )
        .expect("a refusal");
        assert_eq!(r.route, Route::Vend);
    }

    #[test]
    fn a_malformed_request_line_is_judged_by_its_beginning() {
        let r = sniff(
            &[b"POST /v1/tokens HTTP/1.1 junk\r\nHost: a\r\n\r\n"],
            REFUSED_400,
        )
        .expect("a refusal");
        assert_eq!(r.route, Route::Vend);
        let r = sniff(&[b"POST /v1/tokens\r\n"], REFUSED_400).expect("a refusal");
        assert_eq!(r.route, Route::Vend);
        // A TLS handshake (or any bytes that are no request line) is no vend.
        let r = sniff(&[b"\x16\x03\x01\x02\x00garbage\r\n"], REFUSED_400).expect("a refusal");
        assert_eq!(r.route, Route::Other);
        assert!(!r.request_line.contains('\u{16}'), "{r:?}");
    }

    #[test]
    fn a_request_line_hidden_in_a_head_makes_the_request_unknown() {
        // A body that looks like a request line would otherwise let the next request
        // pass for another route.
        let r = sniff(
            &[b"GET /x HTTP/1.1\r\nPOST /v1/tokens HTTP/1.1\r\n"],
            REFUSED_431,
        )
        .expect("a refusal");
        assert_eq!(r.route, Route::Unknown);
    }

    #[test]
    fn long_and_encoded_targets_are_not_guessed() {
        let long = format!("POST /v1/tokens?{} HTTP/1.1\r\nX: y\r\n", "a".repeat(1000));
        let r = sniff(&[long.as_bytes()], REFUSED_431).expect("a refusal");
        assert_eq!(r.route, Route::Vend);
        let r = sniff(&[b"POST /v1/%74okens HTTP/1.1\r\n"], REFUSED_400).expect("a refusal");
        assert_eq!(r.route, Route::Unknown);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(1000));
        let r = sniff(&[long.as_bytes()], REFUSED_400).expect("a refusal");
        assert_eq!(r.route, Route::Other);
        // An unfinished line longer than what is kept: judged by its beginning.
        let cut = format!("POST /v1/tokens?{}", "a".repeat(200_000));
        let r = sniff(&[cut.as_bytes()], REFUSED_431).expect("a refusal");
        assert_eq!(r.route, Route::Vend);
    }

    #[test]
    fn a_request_glued_to_a_body_is_found() {
        let r = sniff_after(
            1,
            &[b"POST /v1/tokens HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}POST /v1/tokens HTTP/1.1\r\nX\r\n"],
            REFUSED_400,
        )
        .expect("a refusal");
        assert_eq!(r.route, Route::Vend);
        let r = sniff_after(
            1,
            &[b"POST /v1/tokens HTTP/1.1\r\n\r\nABCGET /healthz HTTP/1.1\r\nX\r\n"],
            REFUSED_400,
        )
        .expect("a refusal");
        assert_eq!(r.route, Route::Unknown);
    }

    #[test]
    fn nothing_is_read_after_an_upgrade() {
        let mut s = Sniffer::default();
        s.read(b"GET /v1/relay/transcribe HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        s.wrote(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            1,
        );
        s.read(b"POST /v1/tokens HTTP/1.1\r\nX\r\n");
        s.wrote(REFUSED_400, 1);
        assert_eq!(s.refusal(), None);
        assert!(s.tail.is_empty() && s.start.is_empty());
    }

    #[test]
    fn memory_stays_bounded() {
        let mut s = Sniffer::default();
        for _ in 0..1000 {
            s.read(&[b'a'; 4096]);
        }
        assert!(s.start.len() <= START_KEEP && s.tail.len() <= 2 * TAIL_KEEP);
    }
}
