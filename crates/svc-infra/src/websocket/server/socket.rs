//! The server-side socket: one task reads (the handler calling [`WebSocket::recv`]), and
//! anyone may send through the shared [`Outbound`], which writes straight to the socket
//! when nothing is queued, so a broadcast needs no writer task and no wake-up per recipient.
//! Only when a socket does not take a frame at once (most often because the sending task's
//! cooperative budget ran out) does the frame wait, for a short-lived flusher task: one per
//! [`Deferred`] set, or the manager's [`FlushQueue`] shared by its broadcasts; frames sent
//! meanwhile queue behind, bounded by the slow-consumer policy.

use std::{
    borrow::Cow,
    collections::VecDeque,
    io::{self, IoSlice},
    mem::MaybeUninit,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker, ready},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::websocket::protocol::{
    self, OP_PING, OP_PONG,
    parser::{Event, FrameParser, Violation},
};
use crate::websocket::{WebSocketConfig, WebSocketError, WebSocketMessage};

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Stack buffer for one read; nothing is kept between reads unless a read ends mid-event.
const READ_CHUNK: usize = 8 * 1024;
/// At most this many queued frames go into one vectored write.
const MAX_IOVECS: usize = 64;

/// What to do with a message for a connection whose outgoing queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1013 (Try Again Later). The default: a client that cannot
    /// keep up learns so, and reconnects when it can.
    #[default]
    Disconnect,
    /// Drop the message that does not fit; the client misses it.
    DropNewest,
    /// Drop the oldest queued message to make room; the client misses that one.
    DropOldest,
}

/// The result of handing a frame to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Written to the socket (or queued behind earlier frames).
    Accepted,
    /// The queue was full and the policy dropped a message (this one or an older one).
    Dropped,
    /// The queue was full and the connection is being closed with 1013.
    Overflow,
    /// The connection is closing or gone.
    Closed,
}

/// The sending side of a connection, shared by its reader, its flusher, the manager and
/// anyone who sends to it; also where keepalive keeps its timestamps.
#[derive(Debug)]
pub(crate) struct Outbound {
    state: Mutex<OutState>,
    max_queue: usize,
    policy: SlowConsumerPolicy,
    pub(crate) max_message_size: usize,
    close_timeout: Duration,
    /// The subprotocol selected in the handshake.
    protocol: Option<Box<str>>,
    /// Milliseconds since [`clock_origin`] of the last frame received from the peer.
    pub(crate) last_seen: AtomicU64,
    /// When our outstanding keepalive ping went out (µs since origin), 0 if none is.
    pub(crate) ping_sent: AtomicU64,
    /// Round trip of the last answered ping, microseconds.
    pub(crate) latency_us: AtomicU64,
}

struct OutState {
    writer: Option<BoxWrite>,
    queue: VecDeque<Bytes>,
    /// The reading task, woken for a kill, or when the flusher is done (closing waits).
    waker: Option<Waker>,
    /// A flusher task is writing the queue (the socket was full); others only append.
    flushing: bool,
    /// The reader waits for the queue to drain (closing): the flusher wakes it when done.
    drain_waiter: bool,
    /// The writer supports vectored writes (asked once: behind `tokio::io::split` asking
    /// takes a lock).
    vectored: bool,
    /// The flusher's waker, to end it when the connection is released.
    flusher: Option<Waker>,
    /// A close frame went into the queue; nothing else may follow it.
    close_queued: bool,
    /// Set by others (manager disconnect, keepalive, overflow, shutdown): close with this.
    kill: Option<(u16, Cow<'static, str>)>,
    /// The write side failed; the connection is dead.
    broken: bool,
}

impl std::fmt::Debug for OutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutState")
            .field("queued", &self.queue.len())
            .field("close_queued", &self.close_queued)
            .field("kill", &self.kill)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// The instant all millisecond timestamps count from.
pub(crate) fn clock_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since [`clock_origin`] (at least 1, so 0 can mean "never").
pub(crate) fn now_ms() -> u64 {
    clock_origin().elapsed().as_millis() as u64 + 1
}

/// Microseconds since [`clock_origin`] (at least 1).
pub(crate) fn now_us() -> u64 {
    clock_origin().elapsed().as_micros() as u64 + 1
}

impl Outbound {
    pub(crate) fn new(
        writer: BoxWrite,
        config: &WebSocketConfig,
        policy: SlowConsumerPolicy,
        protocol: Option<String>,
    ) -> Self {
        let vectored = writer.is_write_vectored();
        Self {
            state: Mutex::new(OutState {
                writer: Some(writer),
                queue: VecDeque::new(),
                waker: None,
                flushing: false,
                drain_waiter: false,
                vectored,
                flusher: None,
                close_queued: false,
                kill: None,
                broken: false,
            }),
            max_queue: config.max_queue_size,
            policy,
            max_message_size: config.max_message_size,
            close_timeout: config.close_timeout,
            protocol: protocol.map(String::into_boxed_str),
            last_seen: AtomicU64::new(now_ms()),
            ping_sent: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutState> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the connection, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a complete frame to the connection without ever waiting: written now if
    /// nothing is queued and the socket takes it, else queued behind the frames the
    /// flusher is writing. A full queue (the socket took nothing for `max_queue` frames)
    /// applies the slow-consumer policy.
    pub(crate) fn push(self: &Arc<Self>, frame: Bytes) -> Push {
        self.push_deferred(frame, &mut Deferred::default())
    }

    /// [`push`](Self::push) for one of many recipients: a frame the socket does not take
    /// at once joins `deferred`, which the caller spawns once for all of them.
    pub(crate) fn push_deferred(self: &Arc<Self>, frame: Bytes, deferred: &mut Deferred) -> Push {
        let mut st = self.lock();
        if st.close_queued || st.broken || st.kill.is_some() {
            return Push::Closed;
        }
        if !st.flushing {
            return match st.write_now(frame, self, deferred) {
                Ok(()) => Push::Accepted,
                Err(()) => Push::Closed,
            };
        }
        if st.queue.len() >= self.max_queue {
            match self.policy {
                SlowConsumerPolicy::DropNewest => return Push::Dropped,
                SlowConsumerPolicy::DropOldest => {
                    // The front frame may be partly written: it must go out whole.
                    if st.queue.len() > 1 {
                        st.queue.remove(1);
                    }
                    st.queue.push_back(frame);
                    return Push::Dropped;
                }
                SlowConsumerPolicy::Disconnect => {
                    st.kill = Some((1013, Cow::Borrowed("slow consumer")));
                    st.wake();
                    return Push::Overflow;
                }
            }
        }
        st.queue.push_back(frame);
        Push::Accepted
    }

    /// Queues a control frame (pong, ping). When the queue is already full the frame is
    /// skipped: RFC 6455 §5.5.3 lets us answer only the latest ping, and a peer that floods
    /// pings without reading must not grow our memory. Returns false if closing.
    pub(crate) fn push_control(self: &Arc<Self>, frame: Bytes, deferred: &mut Deferred) -> bool {
        let mut st = self.lock();
        if st.close_queued || st.broken {
            return false;
        }
        if !st.flushing {
            return st.write_now(frame, self, deferred).is_ok();
        }
        if st.queue.len() < self.max_queue {
            st.queue.push_back(frame);
        }
        true
    }

    /// Asks the reading task to close the connection with `code`; the first request wins.
    pub(crate) fn kill(&self, code: u16, reason: impl Into<Cow<'static, str>>) {
        let mut st = self.lock();
        if st.kill.is_none() && !st.close_queued {
            st.kill = Some((code, reason.into()));
        }
        st.wake();
    }

    /// Queues the close frame, once; later calls do nothing.
    fn queue_close(self: &Arc<Self>, code: u16, reason: &str) {
        self.queue_close_frame(protocol::encode_close(code, reason));
    }

    /// Queues a close frame without a status code (the reply to an empty close).
    fn queue_close_empty(self: &Arc<Self>) {
        self.queue_close_frame(protocol::encode_frame(protocol::OP_CLOSE, &[]));
    }

    fn queue_close_frame(self: &Arc<Self>, frame: Bytes) {
        let mut deferred = Deferred::default();
        let mut st = self.lock();
        if st.close_queued || st.broken {
            return;
        }
        st.close_queued = true;
        if st.flushing {
            st.queue.push_back(frame);
        } else {
            let _ = st.write_now(frame, self, &mut deferred);
        }
        drop(st); // before `deferred` starts the flusher
    }

    fn take_kill(&self) -> Option<(u16, Cow<'static, str>)> {
        self.lock().kill.take()
    }

    /// Registers the reading task, so kills and the flusher's completion wake it.
    /// Returns whether the write side has failed.
    fn register_reader(&self, waker: &Waker) -> bool {
        let mut st = self.lock();
        match &st.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => st.waker = Some(waker.clone()),
        }
        st.broken
    }

    /// Ready once everything queued is written (or the write side failed: `Err`).
    fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        if st.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if st.flushing {
            st.waker = Some(cx.waker().clone());
            st.drain_waiter = true;
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends FIN after everything queued was written.
    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drained(cx))?;
        let mut st = self.lock();
        match st.writer.as_mut() {
            Some(w) => Pin::new(w).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Drops the write half: the socket closes once the read half is gone too.
    pub(crate) fn release(&self) {
        let mut st = self.lock();
        st.writer = None;
        st.queue = VecDeque::new();
        st.broken = true;
        if let Some(w) = st.flusher.take() {
            w.wake();
        }
    }

    /// Whether the connection has started closing or failed.
    pub(crate) fn is_closing(&self) -> bool {
        let st = self.lock();
        st.close_queued || st.broken || st.kill.is_some()
    }
}

/// Connections holding frames their socket did not take at once (most often because the
/// sending task's cooperative budget ran out after 128 writes, not because the socket is
/// full). Dropping it starts one task that writes them all, in order; a
/// [`FlushQueue`] takes them instead when many senders should share one such task.
#[derive(Debug, Default)]
pub(crate) struct Deferred(Vec<Arc<Outbound>>);

impl Drop for Deferred {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let outs = std::mem::take(&mut self.0);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(flush(outs))),
            Err(_) => fail(&outs),
        }
    }
}

/// Without a runtime to wait for writability, connections with queued frames fail.
fn fail(outs: &[Arc<Outbound>]) {
    for out in outs {
        let mut st = out.lock();
        st.broken = true;
        st.finish_flush(true);
    }
}

/// One first-in, first-out line of connections waiting to be flushed, worked by at most
/// one task at a time (started when the line fills, ended when it empties).
///
/// The manager's broadcasts share one, so that when broadcasts come faster than the
/// sockets can be written, the oldest frames go out first (several tasks taking turns
/// would delay every broadcast's last recipients behind the newer broadcasts), and a
/// connection still waiting when the next broadcast arrives gets both in one write. The
/// task yields whenever its budget is spent, so new broadcasts are read meanwhile.
#[derive(Debug, Default)]
pub(crate) struct FlushQueue {
    line: Mutex<Line>,
}

#[derive(Debug, Default)]
struct Line {
    waiting: VecDeque<Arc<Outbound>>,
    /// A task is working the line.
    running: bool,
}

impl FlushQueue {
    /// Puts `deferred`'s connections at the end of the line.
    pub(crate) fn extend(self: &Arc<Self>, mut deferred: Deferred) {
        if deferred.0.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return fail(&std::mem::take(&mut deferred.0));
        };
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        line.waiting.extend(deferred.0.drain(..));
        if !line.running {
            line.running = true;
            drop(runtime.spawn(self.clone().work()));
        }
    }

    async fn work(self: Arc<Self>) {
        /// Marks the line idle when the task ends, however it ends (a runtime shutting
        /// down drops it mid-way), so the next `extend` starts a new one.
        struct Idle<'a>(&'a FlushQueue);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                let mut line = self.0.line.lock().unwrap_or_else(|p| p.into_inner());
                line.running = false;
            }
        }
        let _idle = Idle(&self);
        let mut batch = VecDeque::new();
        loop {
            if batch.is_empty() {
                let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
                if line.waiting.is_empty() {
                    return;
                }
                std::mem::swap(&mut batch, &mut line.waiting);
            }
            if let Some(out) = batch.pop_front() {
                flush_one(out, true).await;
            }
        }
    }
}

/// Writes what is queued on each connection, in order, then ends. The task lives only
/// while some connection has more to send than its socket took at once, so neither the
/// handler nor a task per connection has to watch for writability.
async fn flush(outs: Vec<Arc<Outbound>>) {
    let last = outs.len().saturating_sub(1);
    for (i, out) in outs.into_iter().enumerate() {
        flush_one(out, i < last).await;
    }
}

/// Writes `out`'s queue. When this task's budget runs out it yields and carries on; a
/// socket that is really full is waited for here, or, with `hand_over`, by a task of its
/// own so that it holds up no one behind it.
async fn flush_one(out: Arc<Outbound>, hand_over: bool) {
    let mut handed_over = false;
    std::future::poll_fn(|cx| {
        let mut st = out.lock();
        match st.poll_drain(cx) {
            Poll::Ready(result) => {
                st.finish_flush(result.is_err());
                Poll::Ready(())
            }
            Poll::Pending if hand_over && tokio::task::coop::has_budget_remaining() => {
                handed_over = true;
                Poll::Ready(())
            }
            Poll::Pending => {
                st.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
    if handed_over {
        drop(Deferred(vec![out]));
    }
}

impl OutState {
    fn wake(&mut self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// The queue is written out (or the write side failed): senders write directly again.
    /// Only a reader waiting for the drain (closing) or one that must learn of the failure
    /// is woken; a wake-up per flush would cost a task poll per recipient of a broadcast.
    fn finish_flush(&mut self, failed: bool) {
        self.flushing = false;
        self.flusher = None;
        if std::mem::take(&mut self.drain_waiter) || failed {
            self.wake();
        }
    }

    /// Writes `frame` now; whatever the socket does not take is queued and the connection
    /// joins `deferred`, whose flusher task takes over until the queue is empty.
    fn write_now(
        &mut self,
        mut frame: Bytes,
        out: &Arc<Outbound>,
        deferred: &mut Deferred,
    ) -> Result<(), ()> {
        let Some(writer) = self.writer.as_mut() else {
            self.broken = true;
            return Err(());
        };
        let mut cx = Context::from_waker(Waker::noop());
        while !frame.is_empty() {
            match Pin::new(&mut *writer).poll_write(&mut cx, &frame) {
                Poll::Ready(Ok(0) | Err(_)) => {
                    self.broken = true;
                    self.wake();
                    return Err(());
                }
                Poll::Ready(Ok(n)) => frame.advance(n),
                Poll::Pending => {
                    self.queue.push_back(frame);
                    self.flushing = true;
                    deferred.0.push(out.clone());
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let Some(writer) = self.writer.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !self.queue.is_empty() {
            let result = if self.queue.len() == 1 || !self.vectored {
                Pin::new(&mut *writer).poll_write(cx, &self.queue[0])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let n = self.queue.len().min(MAX_IOVECS);
                for (slot, frame) in slices.iter_mut().zip(self.queue.iter()) {
                    *slot = IoSlice::new(frame);
                }
                Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..n])
            };
            match result {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.broken = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Err(e)) => {
                    self.broken = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(mut n)) => {
                    while n > 0 {
                        let front = &mut self.queue[0];
                        if n >= front.len() {
                            n -= front.len();
                            self.queue.pop_front();
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
            }
        }
        if self.queue.capacity() > 16 {
            self.queue = VecDeque::new(); // give a burst's memory back
        }
        Poll::Ready(Ok(()))
    }
}

/// The parts of a socket an open, healthy connection does not need.
#[derive(Debug, Default)]
struct Cold {
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The close code and reason, once known (received, sent, or 1006 for a drop).
    closed_with: Option<(u16, String)>,
    /// An error to hand out on the next `recv`.
    pending_error: Option<WebSocketError>,
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
pub struct WebSocket {
    reader: BoxRead,
    /// Bytes read but not parsed yet (only when a read ended mid-event).
    leftover: Bytes,
    parser: FrameParser,
    out: Arc<Outbound>,
    phase: Phase,
    /// The peer's close frame arrived (or we answered one): only the TCP close is left.
    peer_closed: bool,
    /// We failed the connection: send close, FIN, then discard input until EOF.
    draining: bool,
    fin_sent: bool,
    /// State needed only once closing starts or after an error, allocated then.
    cold: Option<Box<Cold>>,
    /// This is the background close of a dropped socket.
    lingering: bool,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("phase", &self.phase)
            .field("protocol", &self.out.protocol)
            .field("cold", &self.cold)
            .finish_non_exhaustive()
    }
}

impl WebSocket {
    pub(crate) fn new(
        reader: BoxRead,
        writer: BoxWrite,
        already_read: Bytes,
        config: &WebSocketConfig,
        policy: SlowConsumerPolicy,
        protocol: Option<String>,
    ) -> Self {
        Self {
            reader,
            leftover: already_read,
            parser: FrameParser::new(config.max_message_size),
            out: Arc::new(Outbound::new(writer, config, policy, protocol)),
            phase: Phase::Open,
            peer_closed: false,
            draining: false,
            fin_sent: false,
            cold: None,
            lingering: false,
        }
    }

    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    pub(crate) fn outbound(&self) -> &Arc<Outbound> {
        &self.out
    }

    /// The subprotocol selected in the handshake, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.out.protocol.as_deref()
    }

    /// The close code and reason once the connection is closed: as received from the peer,
    /// as we sent it, or `(1006, "")` when the peer vanished without a close frame.
    pub fn close_code(&self) -> Option<(u16, &str)> {
        let closed_with = self.cold.as_ref()?.closed_with.as_ref()?;
        Some((closed_with.0, closed_with.1.as_str()))
    }

    /// Whether the connection is open (no close started on either side).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open && !self.out.is_closing()
    }

    /// Round trip of the last answered keepalive ping.
    pub fn latency(&self) -> Option<Duration> {
        match self.out.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Receives the next message. `None` once the connection is closed. An `Err` reports
    /// why we closed it (message too large: 1009; invalid UTF-8: 1007; protocol
    /// violation: 1002; slow consumer: 1013); the close is already done when it is returned.
    pub async fn recv(&mut self) -> Option<Result<WebSocketMessage, WebSocketError>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Sends a message. Never waits for the socket: the frame is written now or queued; a
    /// full queue applies the slow-consumer policy (`Disconnect`: an error, and the
    /// connection closes with 1013; `DropNewest`/`DropOldest`: `Ok`, a message is dropped;
    /// through a manager's [`Connection`](crate::websocket::Connection) drops are counted).
    pub fn send(&self, message: impl Into<WebSocketMessage>) -> Result<(), WebSocketError> {
        let message = message.into();
        if message.len() > self.out.max_message_size {
            return Err(WebSocketError::MessageTooLarge {
                size: message.len(),
                limit: self.out.max_message_size,
            });
        }
        let opcode = if message.is_text() {
            protocol::OP_TEXT
        } else {
            protocol::OP_BINARY
        };
        let frame = protocol::encode_frame(opcode, message.as_bytes());
        self.send_frame(frame).map(drop)
    }

    /// Hands a frame to the connection; `Ok(false)` when the slow-consumer policy dropped
    /// a message (this one, or an older one under `DropOldest`).
    pub(crate) fn send_frame(&self, frame: Bytes) -> Result<bool, WebSocketError> {
        match self.out.push(frame) {
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
        if self.phase == Phase::Open {
            self.start_close(code, reason);
        }
        while self.recv().await.is_some() {}
    }

    fn start_close(&mut self, code: u16, reason: &str) {
        self.out.queue_close(code, reason);
        let timeout = self.out.close_timeout;
        let cold = self.cold();
        if cold.closed_with.is_none() {
            cold.closed_with = Some((code, reason.to_owned()));
        }
        cold.close_deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        self.phase = Phase::Closing;
    }

    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut self.reader).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(()),
            }
        }
    }

    fn fail(&mut self, violation: Violation) {
        let limit = self.out.max_message_size;
        self.cold().pending_error = Some(match violation.code {
            1009 => WebSocketError::MessageTooLarge {
                size: limit + 1,
                limit,
            },
            _ => WebSocketError::Protocol(violation.reason.to_owned()),
        });
        self.start_close(violation.code, violation.reason);
        self.leftover = Bytes::new();
        self.draining = true;
    }

    fn finish(&mut self) -> Poll<Option<Result<WebSocketMessage, WebSocketError>>> {
        self.phase = Phase::Closed;
        self.leftover = Bytes::new();
        self.reader = Box::new(tokio::io::empty());
        self.out.release();
        let cold = self.cold();
        cold.close_deadline = None;
        if cold.closed_with.is_none() {
            cold.closed_with = Some((1006, String::new()));
        }
        Poll::Ready(cold.pending_error.take().map(Err))
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<WebSocketMessage, WebSocketError>>> {
        loop {
            // An error that started a close is reported at once; later calls finish the
            // close (or `Drop` does, in the background).
            if let Some(e) = self.cold.as_mut().and_then(|c| c.pending_error.take()) {
                return Poll::Ready(Some(Err(e)));
            }
            match self.phase {
                Phase::Closed => return Poll::Ready(None),
                Phase::Open => {
                    if let Some((code, reason)) = self.out.take_kill() {
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
                        .cold
                        .as_mut()
                        .and_then(|c| c.close_deadline.as_mut())
                        .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                    if expired {
                        return self.finish();
                    }
                }
            }

            if self.out.register_reader(cx.waker()) {
                return self.finish(); // the write side failed: the peer is gone
            }

            if self.peer_closed || self.draining {
                // The server closes TCP first (RFC 6455 §7.1.1): FIN once everything is out.
                if !self.fin_sent {
                    if self.out.poll_shutdown(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.fin_sent = true;
                }
                if self.peer_closed {
                    return self.finish();
                }
                // After a protocol violation the input is garbage: discard it until the
                // peer closes too (or the close deadline passes), so it sees a clean close.
                return match self.poll_discard(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => self.finish(),
                };
            }

            // Parse what was read before, then read more.
            let event = if !self.leftover.is_empty() {
                match self.parser.feed(&self.leftover) {
                    Ok((n, ev)) => {
                        self.leftover.advance(n);
                        ev
                    }
                    Err(v) => {
                        self.leftover = Bytes::new();
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
            self.out.last_seen.store(now_ms(), Ordering::Relaxed);
            match event {
                Event::Text(bytes) if self.phase == Phase::Open => {
                    match WebSocketMessage::text_from_bytes(bytes) {
                        Ok(m) => return Poll::Ready(Some(Ok(m.received_now()))),
                        Err(_) => self.fail(Violation {
                            code: 1007,
                            reason: "invalid UTF-8 in a text message",
                        }),
                    }
                }
                Event::Binary(bytes) if self.phase == Phase::Open => {
                    return Poll::Ready(Some(Ok(WebSocketMessage::binary(bytes).received_now())));
                }
                Event::Text(_) | Event::Binary(_) => {} // closing: discard
                Event::Ping(payload) => {
                    if self.phase == Phase::Open {
                        self.out.push_control(
                            protocol::encode_frame(OP_PONG, &payload),
                            &mut Deferred::default(),
                        );
                    }
                }
                Event::Pong(_) => self.out.pong_received(),
                Event::Close(frame) => {
                    if self.phase == Phase::Open {
                        // Echo the peer's code (RFC 6455 §5.5.1).
                        match &frame {
                            Some((code, _)) => {
                                self.out.queue_close(*code, "");
                            }
                            None => self.out.queue_close_empty(),
                        }
                        let timeout = self.out.close_timeout;
                        let cold = self.cold();
                        cold.closed_with = Some(frame.unwrap_or((1005, String::new())));
                        cold.close_deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                        self.phase = Phase::Closing;
                    }
                    self.peer_closed = true;
                }
            }
        }
    }

    fn poll_read_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Event>, ReadError>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut self.reader).poll_read(cx, &mut buf) {
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
                    .parser
                    .feed(&data[pos..])
                    .map_err(ReadError::Violation)?;
                pos += n;
                if let Some(event) = event {
                    if pos < data.len() {
                        self.leftover = Bytes::copy_from_slice(&data[pos..]);
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

impl Outbound {
    /// Sends a keepalive ping (a shared, pre-built frame) unless one is outstanding.
    pub(crate) fn send_ping(self: &Arc<Self>, frame: &Bytes, deferred: &mut Deferred) -> bool {
        let now = now_us();
        if self
            .ping_sent
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return true; // still waiting for the last one
        }
        self.push_control(frame.clone(), deferred)
    }

    /// A pong arrived: the round trip of the outstanding ping, if any, is the latency.
    fn pong_received(&self) {
        let sent = self.ping_sent.swap(0, Ordering::Relaxed);
        if sent != 0 {
            let rtt = now_us().saturating_sub(sent).max(1);
            self.latency_us.store(rtt, Ordering::Relaxed);
        }
    }
}

/// The keepalive ping frame every connection gets (empty payload), built once.
pub(crate) fn ping_frame() -> Bytes {
    protocol::encode_frame(OP_PING, &[])
}

impl Drop for WebSocket {
    /// A socket dropped before it closed still closes properly: the close frame (1000 if
    /// none was sent) goes out and the closing handshake finishes in the background,
    /// bounded by `close_timeout`. Without a runtime the socket is just released.
    fn drop(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.lingering {
            // Already the background close, being dropped (runtime shutting down).
            self.out.release();
            return;
        }
        if self.phase == Phase::Open {
            self.start_close(1000, "");
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.out.release();
            return;
        };
        let mut rest = WebSocket {
            reader: std::mem::replace(&mut self.reader, Box::new(tokio::io::empty())),
            leftover: std::mem::take(&mut self.leftover),
            parser: std::mem::replace(&mut self.parser, FrameParser::new(0)),
            out: self.out.clone(),
            phase: self.phase,
            peer_closed: self.peer_closed,
            draining: self.draining,
            fin_sent: self.fin_sent,
            cold: self.cold.take(),
            lingering: true,
        };
        self.phase = Phase::Closed;
        runtime.spawn(async move { while rest.recv().await.is_some() {} });
    }
}
