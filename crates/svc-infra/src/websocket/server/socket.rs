//! The server-side socket ([`WebSocket`]): the read and close state machine. One task
//! reads (the handler calling [`WebSocket::recv`]): it parses frames, answers pings and
//! performs the closing handshake. Sending never depends on it: anyone may send through
//! the connection's shared [`Outbound`] (see `outbound.rs`).

use std::{
    mem::MaybeUninit,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use tokio::io::ReadBuf;

use super::{
    budget::ReadBudget,
    clock::clock_origin,
    flush::Deferred,
    io::{Reader, Writer},
    outbound::{Outbound, Push, SlowConsumerPolicy},
};
use crate::websocket::protocol::{
    self, OP_PONG,
    deflate::{self, DeflateParams},
    parser::{Event, FrameParser, Violation},
};
use crate::websocket::{WebSocketConfig, WebSocketError, WebSocketMessage};

/// Stack buffer for one read; nothing is kept between reads unless a read ends mid-event.
const READ_CHUNK: usize = 8 * 1024;

/// The parts of a socket an open, healthy connection does not need.
#[derive(Debug, Default)]
struct Cold {
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The close code and reason, once known (received, sent, or 1006 for a drop).
    closed_with: Option<(u16, String)>,
    /// An error to hand out on the next `recv`.
    pending_error: Option<WebSocketError>,
    /// When reading may resume, while the connection is over its read budget.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// We sent a close frame and wait for the peer's (bounded by `close_timeout`).
    Closing,
    Closed,
}

/// A server-side WebSocket connection after the upgrade.
///
/// Call [`recv`](Self::recv) in a loop: it returns the next message and, while it waits,
/// answers pings and performs the closing handshake (sending never depends on it). It
/// returns `None` once the connection is closed; [`close_code`](Self::close_code) then says
/// how. Most applications hand the socket to
/// [`ConnectionManager::connect`](crate::websocket::ConnectionManager::connect) instead of
/// using it directly.
///
/// The handle is one pointer: futures that hold it (a handler's, for the life of the
/// connection) stay small, and a socket moved from one future into another is not copied.
pub struct WebSocket {
    s: Box<State>,
}

/// What a [`WebSocket`] holds, behind its one pointer.
struct State {
    reader: Reader,
    /// Bytes read but not parsed yet (only when a read ended mid-event).
    leftover: Option<Box<Bytes>>,
    parser: FrameParser,
    out: Arc<Outbound>,
    /// How fast the peer may send (`max_incoming_rate`).
    budget: ReadBudget,
    phase: Phase,
    /// The peer's close frame arrived (or we answered one): only the TCP close is left.
    peer_closed: bool,
    /// We failed the connection: send close, FIN, then discard input until EOF.
    draining: bool,
    fin_sent: bool,
    /// Over the read budget: nothing is read until `cold.throttle` fires.
    throttled: bool,
    /// State needed only once closing starts or after an error, allocated then.
    cold: Option<Box<Cold>>,
    /// This is the background close of a dropped socket.
    lingering: bool,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("phase", &self.s.phase)
            .field("protocol", &self.s.out.protocol)
            .field("cold", &self.s.cold)
            .finish_non_exhaustive()
    }
}

impl WebSocket {
    /// `buffered`: the writer keeps bytes until it is flushed (TLS), unlike a TCP socket;
    /// the last argument is what the handshake agreed on: the subprotocol and
    /// permessage-deflate.
    pub(crate) fn new(
        reader: Reader,
        writer: Writer,
        buffered: bool,
        already_read: Bytes,
        config: &WebSocketConfig,
        policy: SlowConsumerPolicy,
        (protocol, deflate): (Option<String>, Option<DeflateParams>),
    ) -> Self {
        let s = Box::new(State {
            reader,
            leftover: (!already_read.is_empty()).then(|| Box::new(already_read)),
            parser: FrameParser::new(config.max_message_size, deflate),
            out: Arc::new(Outbound::new(
                writer, buffered, config, policy, protocol, deflate,
            )),
            budget: ReadBudget::new(config.max_incoming_rate, config.max_incoming_burst),
            phase: Phase::Open,
            peer_closed: false,
            draining: false,
            fin_sent: false,
            throttled: false,
            cold: None,
            lingering: false,
        });
        Self { s }
    }

    fn cold(&mut self) -> &mut Cold {
        self.s.cold.get_or_insert_with(Box::default)
    }

    pub(crate) fn outbound(&self) -> &Arc<Outbound> {
        &self.s.out
    }

    /// The subprotocol selected in the handshake, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.s.out.protocol.as_deref()
    }

    /// The close code and reason once the connection is closed: as received from the peer,
    /// as we sent it, or `(1006, "")` when the peer vanished without a close frame.
    pub fn close_code(&self) -> Option<(u16, &str)> {
        let closed_with = self.s.cold.as_ref()?.closed_with.as_ref()?;
        Some((closed_with.0, closed_with.1.as_str()))
    }

    /// Whether the connection is open (no close started on either side).
    pub fn is_open(&self) -> bool {
        self.s.phase == Phase::Open && !self.s.out.is_closing()
    }

    /// Round trip of the last answered keepalive ping.
    pub fn latency(&self) -> Option<Duration> {
        match self.s.out.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Receives the next message. `None` once the connection is closed. An `Err` reports
    /// why we closed it (message too large: 1009; invalid UTF-8: 1007; protocol
    /// violation: 1002; slow consumer: 1013); the close is already done when it is returned.
    ///
    /// The future is one pointer (a handler waits in it for most of its life).
    pub fn recv(
        &mut self,
    ) -> impl Future<Output = Option<Result<WebSocketMessage, WebSocketError>>> + Send + '_ {
        std::future::poll_fn(move |cx| self.poll_recv(cx))
    }

    /// Sends a message. Never waits for the socket: the frame is written now or queued; a
    /// full queue applies the slow-consumer policy (`Disconnect`: an error, and the
    /// connection closes with 1013; `DropNewest`/`DropOldest`: `Ok`, a message is dropped;
    /// through a manager's [`Connection`](crate::websocket::Connection) drops are counted).
    pub fn send(&self, message: impl Into<WebSocketMessage>) -> Result<(), WebSocketError> {
        let frame = self.encode(message.into())?;
        self.send_frame(frame).map(drop)
    }

    /// Sends a message, waiting for room in the outgoing queue when it is full instead of
    /// applying the slow-consumer policy. Meant for answers to the peer's own requests:
    /// while the answer waits, the peer's next requests are not read, so TCP slows a peer
    /// that sends faster than it reads instead of it losing its connection. A peer that
    /// stops reading altogether is ended by the keepalive (`WS_PING_TIMEOUT`), which wakes
    /// this with an error.
    pub async fn reply(
        &mut self,
        message: impl Into<WebSocketMessage>,
    ) -> Result<(), WebSocketError> {
        let frame = self.encode(message.into())?;
        self.reply_frame(frame).await.map(drop)
    }

    fn encode(&self, message: WebSocketMessage) -> Result<Bytes, WebSocketError> {
        if message.len() > self.s.out.max_message_size {
            return Err(WebSocketError::MessageTooLarge {
                size: message.len(),
                limit: self.s.out.max_message_size,
            });
        }
        let opcode = if message.is_text() {
            protocol::OP_TEXT
        } else {
            protocol::OP_BINARY
        };
        let payload = message.as_bytes();
        let deflated = self
            .s
            .out
            .deflate_for(|| payload.len())
            .and_then(|bits| deflate::deflate_frame(opcode, payload, bits));
        Ok(deflated.unwrap_or_else(|| protocol::encode_frame(opcode, payload)))
    }

    /// Hands a frame to the connection, waiting for room in the queue (see [`reply`](Self::reply)).
    pub(crate) async fn reply_frame(&mut self, frame: Bytes) -> Result<bool, WebSocketError> {
        let mut frame = Some(frame);
        let pushed = std::future::poll_fn(|cx| self.s.out.poll_push_waiting(cx, &mut frame)).await;
        self.pushed(pushed)
    }

    /// Hands a frame to the connection; `Ok(false)` when the slow-consumer policy dropped
    /// a message (this one, or an older one under `DropOldest`).
    pub(crate) fn send_frame(&self, frame: Bytes) -> Result<bool, WebSocketError> {
        self.pushed(self.s.out.push(frame))
    }

    fn pushed(&self, pushed: Push) -> Result<bool, WebSocketError> {
        match pushed {
            Push::Accepted => Ok(true),
            Push::Dropped => Ok(false),
            Push::Overflow => Err(WebSocketError::closed(1013, "slow consumer")),
            Push::Closed => Err(WebSocketError::closed(
                self.close_code().map_or(1006, |c| c.0),
                "connection is closing",
            )),
        }
    }

    /// Closes the connection: sends the close frame, waits (up to `close_timeout`) for the
    /// peer's, then closes the socket. Messages still arriving meanwhile are discarded.
    pub async fn close(&mut self, code: u16, reason: &str) {
        if self.s.phase == Phase::Open {
            self.start_close(code, reason);
        }
        while self.recv().await.is_some() {}
    }

    fn start_close(&mut self, code: u16, reason: &str) {
        self.s.out.queue_close(code, reason);
        let timeout = self.s.out.close_timeout();
        let cold = self.cold();
        if cold.closed_with.is_none() {
            cold.closed_with = Some((code, reason.to_owned()));
        }
        cold.close_deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        self.s.phase = Phase::Closing;
    }

    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            let mut buf = ReadBuf::uninit(&mut chunk);
            match self.s.reader.poll_read(&self.s.out, cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(()),
            }
        }
    }

    fn fail(&mut self, violation: Violation) {
        let limit = self.s.out.max_message_size;
        self.cold().pending_error = Some(match violation.code {
            1009 => WebSocketError::MessageTooLarge {
                size: limit + 1,
                limit,
            },
            _ => WebSocketError::Protocol(violation.reason.to_owned()),
        });
        self.start_close(violation.code, violation.reason);
        self.s.leftover = None;
        self.s.draining = true;
    }

    fn finish(&mut self) -> Poll<Option<Result<WebSocketMessage, WebSocketError>>> {
        self.s.phase = Phase::Closed;
        self.s.leftover = None;
        self.s.reader = Reader::empty();
        self.s.out.release();
        let cold = self.cold();
        cold.close_deadline = None;
        if cold.closed_with.is_none() {
            cold.closed_with = Some((1006, String::new()));
        }
        Poll::Ready(cold.pending_error.take().map(Err))
    }

    pub(super) fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<WebSocketMessage, WebSocketError>>> {
        loop {
            // An error that started a close is reported at once; later calls finish the
            // close (or `Drop` does, in the background).
            if let Some(e) = self.s.cold.as_mut().and_then(|c| c.pending_error.take()) {
                return Poll::Ready(Some(Err(e)));
            }
            match self.s.phase {
                Phase::Closed => return Poll::Ready(None),
                Phase::Open => {
                    if let Some((code, reason)) = self.s.out.take_kill() {
                        if code == 1013 {
                            self.cold().pending_error =
                                Some(WebSocketError::closed(1013, reason.clone()));
                        }
                        self.start_close(code, &reason);
                        continue;
                    }
                }
                Phase::Closing => {
                    let expired = self
                        .s
                        .cold
                        .as_mut()
                        .and_then(|c| c.close_deadline.as_mut())
                        .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                    if expired {
                        return self.finish();
                    }
                }
            }

            if self.s.out.register_reader(cx.waker()) {
                return self.finish(); // the write side failed: the peer is gone
            }

            if self.s.peer_closed || self.s.draining {
                // The server closes TCP first (RFC 6455 §7.1.1): FIN once everything is out.
                if !self.s.fin_sent {
                    if self.s.out.poll_shutdown(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.s.fin_sent = true;
                }
                if self.s.peer_closed {
                    return self.finish();
                }
                // After a protocol violation the input is garbage: discard it until the
                // peer closes too (or the close deadline passes), so it sees a clean close.
                return match self.poll_discard(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => self.finish(),
                };
            }

            // Over the read budget: read nothing until it allows the next frame.
            if self.s.throttled {
                if self.s.phase == Phase::Open {
                    let throttle = self.s.cold.as_mut().and_then(|c| c.throttle.as_mut());
                    if throttle.is_some_and(|t| t.as_mut().poll(cx).is_pending()) {
                        return Poll::Pending;
                    }
                }
                self.s.throttled = false;
            }

            // Parse what was read before, then read more.
            let event = if let Some(left) = self.s.leftover.as_mut() {
                match self.s.parser.feed(left) {
                    Ok((n, ev)) => {
                        left.advance(n);
                        if left.is_empty() {
                            self.s.leftover = None;
                        }
                        ev
                    }
                    Err(v) => {
                        self.s.leftover = None;
                        self.fail(v);
                        continue;
                    }
                }
            } else {
                match self.poll_read_event(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(ev))) => Some(ev),
                    // EOF or a read error: the peer is gone.
                    Poll::Ready(Ok(None) | Err(ReadError::Io)) => {
                        return self.finish();
                    }
                    Poll::Ready(Err(ReadError::Violation(v))) => {
                        self.fail(v);
                        continue;
                    }
                }
            };
            let Some(event) = event else { continue };
            if let Some(message) = self.on_event(event) {
                return Poll::Ready(Some(Ok(message)));
            }
        }
    }

    /// Handles one parsed event: a data message while open is returned; control frames
    /// are answered here (pong, the close echo); anything else is dropped.
    fn on_event(&mut self, event: Event) -> Option<WebSocketMessage> {
        let now = clock_origin().elapsed();
        self.s
            .out
            .last_seen
            .store(now.as_millis() as u64 + 1, Ordering::Relaxed);
        if let Some(resume_ns) = self.s.budget.charge(now.as_nanos() as u64) {
            self.pause_reading(resume_ns);
        }
        match event {
            Event::Text(bytes) if self.s.phase == Phase::Open => {
                match WebSocketMessage::text_from_bytes(bytes) {
                    Ok(m) => return Some(m.received_now()),
                    Err(_) => self.fail(Violation {
                        code: 1007,
                        reason: "invalid UTF-8 in a text message",
                    }),
                }
            }
            Event::Binary(bytes) if self.s.phase == Phase::Open => {
                return Some(WebSocketMessage::binary(bytes).received_now());
            }
            Event::Text(_) | Event::Binary(_) => {} // closing: discard
            Event::Ping(payload) => {
                if self.s.phase == Phase::Open {
                    self.s.out.push_control(
                        protocol::encode_frame(OP_PONG, &payload),
                        &mut Deferred::default(),
                    );
                }
            }
            Event::Pong(_) => self.s.out.pong_received(),
            Event::Close(frame) => {
                if self.s.phase == Phase::Open {
                    // Echo the peer's code (RFC 6455 §5.5.1).
                    match &frame {
                        Some((code, _)) => self.s.out.queue_close(*code, ""),
                        None => self.s.out.queue_close_empty(),
                    }
                    let timeout = self.s.out.close_timeout();
                    let cold = self.cold();
                    cold.closed_with = Some(frame.unwrap_or((1005, String::new())));
                    cold.close_deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                    self.s.phase = Phase::Closing;
                }
                self.s.peer_closed = true;
            }
        }
        None
    }

    /// Stops reading until `resume_ns` (nanoseconds since the clock origin): the peer
    /// sends faster than `max_incoming_rate`.
    #[cold]
    fn pause_reading(&mut self, resume_ns: u64) {
        let deadline =
            tokio::time::Instant::from_std(clock_origin() + Duration::from_nanos(resume_ns));
        match &mut self.cold().throttle {
            Some(sleep) => sleep.as_mut().reset(deadline),
            slot => *slot = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.s.throttled = true;
        metrics::counter!("svc_ws_read_pauses_total").increment(1);
    }

    fn poll_read_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Event>, ReadError>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            let mut buf = ReadBuf::uninit(&mut chunk);
            match self.s.reader.poll_read(&self.s.out, cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(ReadError::Io)),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            if data.is_empty() {
                return Poll::Ready(Ok(None));
            }
            let mut pos = 0;
            while pos < data.len() {
                let (n, event) = self
                    .s
                    .parser
                    .feed(&data[pos..])
                    .map_err(ReadError::Violation)?;
                pos += n;
                if let Some(event) = event {
                    if pos < data.len() {
                        self.s.leftover = Some(Box::new(Bytes::copy_from_slice(&data[pos..])));
                    }
                    return Poll::Ready(Ok(Some(event)));
                }
            }
            // The whole chunk went into a partial frame: read on.
        }
    }
}

enum ReadError {
    Io,
    Violation(Violation),
}

impl Drop for WebSocket {
    /// A socket dropped before it closed still closes properly: the close frame (1000 if
    /// none was sent) goes out and the closing handshake finishes in the background,
    /// bounded by `close_timeout`. Without a runtime the socket is just released.
    fn drop(&mut self) {
        if self.s.phase == Phase::Closed {
            return;
        }
        if self.s.lingering {
            // Already the background close, being dropped (runtime shutting down).
            self.s.out.release();
            return;
        }
        if self.s.phase == Phase::Open {
            self.start_close(1000, "");
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.s.out.release();
            return;
        };
        let mut rest = WebSocket {
            s: Box::new(State {
                reader: std::mem::replace(&mut self.s.reader, Reader::empty()),
                leftover: self.s.leftover.take(),
                parser: std::mem::replace(&mut self.s.parser, FrameParser::new(0, None)),
                out: self.s.out.clone(),
                phase: self.s.phase,
                peer_closed: self.s.peer_closed,
                budget: self.s.budget,
                draining: self.s.draining,
                fin_sent: self.s.fin_sent,
                throttled: false,
                cold: self.s.cold.take(),
                lingering: true,
            }),
        };
        self.s.phase = Phase::Closed;
        runtime.spawn(async move { while rest.recv().await.is_some() {} });
    }
}
