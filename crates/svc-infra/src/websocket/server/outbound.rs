//! The sending side of a connection ([`Outbound`]): frames are written straight to the
//! socket when nothing is queued, so a broadcast needs no writer task and no wake-up per
//! recipient; what the socket does not take at once waits in a bounded queue, which a
//! flusher task (see [`super::flush`]) writes out. A full queue applies the
//! [`SlowConsumerPolicy`].

use std::{
    borrow::Cow,
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use bytes::Bytes;
use tokio::io::{AsyncWrite, ReadBuf};

use super::{
    clock::{now_ms, now_us},
    flush::Deferred,
    io::Writer,
};
use crate::websocket::{Compression, WebSocketConfig, protocol, protocol::deflate::DeflateParams};

mod write;

use write::ContextDeflate;

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
    /// `max_queue_size` (u32: every connection holds this struct; more frames than that
    /// are not queued on one connection).
    max_queue: u32,
    policy: SlowConsumerPolicy,
    pub(crate) max_message_size: usize,
    /// `close_timeout` in milliseconds ([`close_timeout`](Self::close_timeout)).
    close_timeout_ms: u32,
    /// The subprotocol selected in the handshake.
    pub(super) protocol: Option<Box<str>>,
    /// permessage-deflate without context takeover: the window the peer accepts from us
    /// (9 to 15), 0 when not negotiated or when this connection compresses with its own
    /// context ([`OutState::context`]). Any deflated frame made for this window or a
    /// smaller one is valid here.
    deflate_bits: u8,
    /// Messages shorter than this go plain (`compression_min_size`).
    compress_min: u32,
    /// Milliseconds since [`clock_origin`] of the last frame received from the peer.
    pub(crate) last_seen: AtomicU64,
    /// When our outstanding keepalive ping went out (µs since origin), 0 if none is.
    pub(crate) ping_sent: AtomicU64,
    /// Round trip of the last answered ping, microseconds.
    pub(crate) latency_us: AtomicU64,
}

pub(super) struct OutState {
    writer: Option<Writer>,
    queue: VecDeque<Bytes>,
    /// The reading task, woken for a kill, or when the flusher is done (closing waits).
    waker: Option<Waker>,
    /// A flusher task is writing the queue (the socket was full); others only append.
    flushing: bool,
    /// The reader waits for the queue to drain (closing): the flusher wakes it when done.
    drain_waiter: bool,
    /// A sender waits for room in the queue (`push_waiting`): the flusher wakes the task in
    /// `waker` whenever it has written something.
    room_waiter: bool,
    /// permessage-deflate with context takeover (`WS_COMPRESSION=dedicated`): the
    /// connection's own compressor, which every data frame goes through as it is written.
    context: Option<Box<ContextDeflate>>,
    /// The writer supports vectored writes (asked once: behind `tokio::io::split` asking
    /// takes a lock).
    vectored: bool,
    /// The writer may keep bytes it took until it is flushed (TLS: the encrypted records
    /// the socket did not take yet), so every write that empties the queue ends with a
    /// flush. A plain TCP socket never does, and is spared the call.
    buffered: bool,
    /// The flusher's waker, to end it when the connection is released.
    pub(super) flusher: Option<Waker>,
    /// A close frame went into the queue; nothing else may follow it.
    close_queued: bool,
    /// Set by others (manager disconnect, keepalive, overflow, shutdown): close with this.
    /// Boxed: rare, and every connection's state holds the slot.
    kill: Option<Box<(u16, Cow<'static, str>)>>,
    /// The write side failed; the connection is dead.
    pub(super) broken: bool,
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

impl Outbound {
    /// `buffered`: the writer keeps bytes until flushed (see [`OutState`]).
    pub(crate) fn new(
        writer: Writer,
        buffered: bool,
        config: &WebSocketConfig,
        policy: SlowConsumerPolicy,
        protocol: Option<String>,
        deflate: Option<DeflateParams>,
    ) -> Self {
        let vectored = writer.is_write_vectored();
        let min = u32::try_from(config.compression_min_size).unwrap_or(u32::MAX);
        // Context takeover only where the mode asks for it and the peer allowed it.
        let context = deflate.filter(|p| {
            config.compression == Compression::Dedicated && !p.server_no_context_takeover
        });
        let deflate_bits = match (deflate, context) {
            (Some(p), None) => p.server_max_window_bits.max(9),
            _ => 0,
        };
        let context = context.map(|p| {
            Box::new(ContextDeflate {
                bits: p.server_max_window_bits.min(config.compression_window_bits),
                min,
                deflater: None,
                sealed: 0,
            })
        });
        Self {
            state: Mutex::new(OutState {
                writer: Some(writer),
                queue: VecDeque::new(),
                waker: None,
                flushing: false,
                drain_waiter: false,
                room_waiter: false,
                context,
                vectored,
                buffered,
                flusher: None,
                close_queued: false,
                kill: None,
                broken: false,
            }),
            max_queue: u32::try_from(config.max_queue_size).unwrap_or(u32::MAX),
            policy,
            max_message_size: config.max_message_size,
            close_timeout_ms: u32::try_from(config.close_timeout.as_millis()).unwrap_or(u32::MAX),
            protocol: protocol.map(String::into_boxed_str),
            deflate_bits,
            compress_min: min,
            last_seen: AtomicU64::new(now_ms()),
            ping_sent: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
        }
    }

    /// The window to deflate a message of `len()` bytes for this peer with, or `None` when
    /// it goes plain (no permessage-deflate, or too short to be worth it). `len` is asked
    /// only of peers that negotiated compression: a broadcast's other recipients cost a
    /// byte's test.
    pub(crate) fn deflate_for(&self, len: impl FnOnce() -> usize) -> Option<u8> {
        (self.deflate_bits != 0 && len() >= self.compress_min as usize).then_some(self.deflate_bits)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, OutState> {
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
        if st.queue.len() >= self.max_queue as usize {
            match self.policy {
                SlowConsumerPolicy::DropNewest => return Push::Dropped,
                SlowConsumerPolicy::DropOldest => {
                    // The front frame may be partly written, and frames already deflated
                    // with the connection's context are part of its stream: they go out
                    // whole. The oldest of the others makes room, or, if none, this one.
                    let keep = st.sealed().max(1);
                    if st.queue.len() > keep {
                        st.queue.remove(keep);
                    } else {
                        return Push::Dropped;
                    }
                    st.queue.push_back(frame);
                    return Push::Dropped;
                }
                SlowConsumerPolicy::Disconnect => {
                    st.kill = Some(Box::new((1013, Cow::Borrowed("slow consumer"))));
                    st.wake();
                    return Push::Overflow;
                }
            }
        }
        st.queue.push_back(frame);
        Push::Accepted
    }

    /// [`push`](Self::push) that waits for room instead of applying the slow-consumer
    /// policy when the queue is full: for answers to the peer's own requests, so a peer
    /// that sends faster than it reads is slowed down (its requests wait unread, and TCP
    /// pushes back) instead of losing its connection. `frame` is taken once it is handed
    /// over. The waiting task is woken as the flusher makes progress, or by a kill.
    pub(crate) fn poll_push_waiting(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        frame: &mut Option<Bytes>,
    ) -> Poll<Push> {
        let mut deferred = Deferred::default();
        let mut st = self.lock();
        if st.close_queued || st.broken || st.kill.is_some() {
            return Poll::Ready(Push::Closed);
        }
        let Some(bytes) = frame.take() else {
            return Poll::Ready(Push::Accepted);
        };
        if !st.flushing {
            let written = st.write_now(bytes, self, &mut deferred);
            drop(st); // before `deferred` starts the flusher
            return Poll::Ready(if written.is_ok() {
                Push::Accepted
            } else {
                Push::Closed
            });
        }
        if st.queue.len() >= self.max_queue as usize {
            *frame = Some(bytes);
            match &st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.waker = Some(cx.waker().clone()),
            }
            st.room_waiter = true;
            return Poll::Pending;
        }
        st.queue.push_back(bytes);
        Poll::Ready(Push::Accepted)
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
        if st.queue.len() < self.max_queue as usize {
            st.queue.push_back(frame);
        }
        true
    }

    /// How long closing may take (`close_timeout`).
    pub(super) fn close_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.close_timeout_ms))
    }

    /// Asks the reading task to close the connection with `code`; the first request wins.
    pub(crate) fn kill(&self, code: u16, reason: impl Into<Cow<'static, str>>) {
        let mut st = self.lock();
        if st.kill.is_none() && !st.close_queued {
            st.kill = Some(Box::new((code, reason.into())));
        }
        st.wake();
    }

    /// Queues the close frame, once; later calls do nothing.
    pub(super) fn queue_close(self: &Arc<Self>, code: u16, reason: &str) {
        self.queue_close_frame(protocol::encode_close(code, reason));
    }

    /// Queues a close frame without a status code (the reply to an empty close).
    pub(super) fn queue_close_empty(self: &Arc<Self>) {
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

    /// How this connection is closing, as far as the sending side knows: a kill not yet
    /// carried out, or 1006 once the write side failed (for the log line of a removal
    /// decided elsewhere).
    pub(super) fn known_close(&self) -> Option<(u16, Cow<'static, str>)> {
        let st = self.lock();
        match &st.kill {
            Some(kill) => Some((**kill).clone()),
            None if st.broken => Some((1006, Cow::Borrowed(""))),
            None => None,
        }
    }

    pub(super) fn take_kill(&self) -> Option<(u16, Cow<'static, str>)> {
        self.lock().kill.take().map(|kill| *kill)
    }

    /// Registers the reading task, so kills and the flusher's completion wake it.
    /// Returns whether the write side has failed.
    pub(super) fn register_reader(&self, waker: &Waker) -> bool {
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
    pub(super) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drained(cx))?;
        let mut st = self.lock();
        match st.writer.as_mut() {
            Some(w) => Pin::new(w).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Reads the TCP stream the writer holds ([`Reader::Tcp`](super::io::Reader::Tcp));
    /// at its end once the writer is released.
    pub(super) fn poll_read_tcp(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.lock().writer.as_mut() {
            Some(writer) => writer.poll_read_tcp(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Drops the write half: a TCP connection closes (its reader then finds the end of the
    /// stream); another stream closes once its read half is gone too.
    pub(crate) fn release(&self) {
        let mut st = self.lock();
        st.writer = None;
        st.queue = VecDeque::new();
        st.context = None;
        st.broken = true;
        if let Some(w) = st.flusher.take() {
            w.wake();
        }
        // A reader waiting on the TCP stream is not woken by its closing (tokio drops the
        // stream's wakers): it learns of it here.
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }

    /// Whether the connection has started closing or failed.
    pub(crate) fn is_closing(&self) -> bool {
        let st = self.lock();
        st.close_queued || st.broken || st.kill.is_some()
    }
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
    pub(super) fn pong_received(&self) {
        let sent = self.ping_sent.swap(0, Ordering::Relaxed);
        if sent != 0 {
            let rtt = now_us().saturating_sub(sent).max(1);
            self.latency_us.store(rtt, Ordering::Relaxed);
        }
    }
}

/// The keepalive ping frame every connection gets (empty payload), built once.
pub(crate) fn ping_frame() -> Bytes {
    protocol::encode_frame(protocol::OP_PING, &[])
}

#[cfg(test)]
mod tests;
