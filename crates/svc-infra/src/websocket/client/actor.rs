//! The connection actor: one task owns the socket; handles talk to it over bounded channels.
//!
//! The actor reads server frames with the protocol core's parser (`reader.rs`), writes
//! queued messages as masked frames in batches (deflated when permessage-deflate was
//! agreed on), answers pings, sends keepalive pings and checks their pongs, and runs the
//! closing handshake. No lock is held across an `.await`: the only locks guard small
//! records that are read and written synchronously.
//!
//! Backpressure: inbound messages go to a channel of `max_queue_size`; when it is full the
//! actor stops reading the socket (TCP then slows the peer down) and pauses the pong deadline,
//! because a pong that we do not read is our fault, not the peer's. Outbound messages come
//! through a channel of `max_queue_size`; while a write is blocked no new command is taken, so
//! senders wait. Frames the actor writes on its own (pongs, pings, close) go out with the
//! next write; a peer that sends pings but never reads our answers stops being read once
//! they pile up past [`write_limit`].
//!
//! Memory: an idle connection holds no read buffer (a read goes through the stack, only a
//! read that ends mid-event keeps its rest), no write buffer (released after every write)
//! and no codec state unless the server keeps a compression context (then an inflater or
//! deflater is allocated on the first compressed message).

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::AsyncWrite,
    sync::{mpsc, oneshot, watch},
    time::{Instant, sleep_until},
};

use super::{
    handshake::Connected,
    reader::{self, FrameReader, ReadError},
    transport::Transport,
};
use crate::websocket::{
    ConnectionState, Result, WebSocketConfig, WebSocketError, WebSocketMessage,
    protocol::{
        self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT,
        deflate::{self, DeflateParams, Deflater},
        parser::Event as Frame,
        put_masked_frame,
    },
};

/// How long a failed connection may take to write its close frame before it is dropped.
const FAIL_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Most messages written in one batch before the socket is flushed.
const MAX_BATCH: usize = 256;

/// A batch of messages stops growing past this many bytes.
const WRITE_BUFFER: usize = 64 * 1024;

/// How much unwritten output stops the reading: one batch (at most [`WRITE_BUFFER`] and one
/// message) and room for the control frames that answer the peer.
fn write_limit(max_message_size: usize) -> usize {
    WRITE_BUFFER
        .saturating_add(max_message_size)
        .saturating_add(64 * 1024)
}

/// Who ended a connection, which decides whether `websocket_connect` reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseOrigin {
    /// The peer sent a close frame.
    Peer,
    /// The application called `close()`.
    User,
    /// Every handle was dropped while the connection was open.
    Dropped,
    /// We failed the connection (keepalive timeout, message too large, protocol error) or it
    /// dropped without a close frame.
    Failure,
}

/// How a connection ended: the close code and reason as sent or received.
#[derive(Debug, Clone)]
pub(crate) struct CloseRecord {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) origin: CloseOrigin,
}

/// State shared by the actor and the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    state: watch::Sender<ConnectionState>,
    /// Last keepalive round trip in nanoseconds; 0 = none measured yet.
    latency_nanos: AtomicU64,
    close: Mutex<Option<CloseRecord>>,
    /// The error that ended the connection, reported once by `recv`/the stream.
    error: Mutex<Option<WebSocketError>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            state: watch::Sender::new(ConnectionState::Open),
            latency_nanos: AtomicU64::new(0),
            close: Mutex::new(None),
            error: Mutex::new(None),
        }
    }

    pub(crate) fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        match self.latency_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    pub(crate) fn close_record(&self) -> Option<CloseRecord> {
        self.close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `ConnectionClosed` with the recorded code and reason.
    pub(crate) fn closed_error(&self) -> WebSocketError {
        match self.close_record() {
            Some(r) => WebSocketError::closed(r.code, r.reason),
            None => WebSocketError::closed(1006, ""),
        }
    }

    /// The error that ended the connection, once.
    pub(crate) fn take_error(&self) -> Option<WebSocketError> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Records how the connection ended, unless that is already known.
    fn record(&self, code: u16, reason: &str, origin: CloseOrigin, error: Option<WebSocketError>) {
        let mut close = self.close.lock().unwrap_or_else(PoisonError::into_inner);
        if close.is_some() {
            return;
        }
        *close = Some(CloseRecord {
            code,
            reason: reason.to_owned(),
            origin,
        });
        drop(close);
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }
}

/// What a handle asks the actor to do.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        message: WebSocketMessage,
        ack: oneshot::Sender<Result<()>>,
    },
    Close {
        code: u16,
        reason: String,
        done: oneshot::Sender<()>,
    },
}

/// How outgoing messages are compressed (permessage-deflate, RFC 7692).
#[derive(Debug)]
enum Compressor {
    /// Not negotiated.
    Off,
    /// `client_no_context_takeover`: the compressor is reset after each message, so this
    /// thread's shared one for the window serves.
    Shared { window_bits: u8 },
    /// Context takeover: the connection's own compressor, allocated on first use.
    Context {
        window_bits: u8,
        deflater: Option<Box<Deflater>>,
    },
}

impl Compressor {
    fn new(params: Option<DeflateParams>) -> Self {
        match params {
            None => Self::Off,
            Some(p) if p.client_no_context_takeover => Self::Shared {
                window_bits: p.client_max_window_bits,
            },
            Some(p) => Self::Context {
                window_bits: p.client_max_window_bits,
                deflater: None,
            },
        }
    }

    /// Deflates `payload` into `out`; `false` when the message goes plain (no compression,
    /// or it would not shrink: a context compressor then starts afresh, see
    /// [`Deflater::compress`]).
    fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        match self {
            Self::Off => false,
            Self::Shared { window_bits } => deflate::deflate_shared(payload, *window_bits, out),
            Self::Context {
                window_bits,
                deflater,
            } => deflater
                .get_or_insert_with(|| Box::new(Deflater::new(*window_bits, false)))
                .compress(payload, out),
        }
    }
}

/// Starts the actor for a connection whose handshake succeeded; returns the command
/// sender, the inbound receiver and the shared state.
pub(crate) fn spawn(
    connected: Connected<Transport>,
    config: &WebSocketConfig,
) -> (
    mpsc::Sender<Command>,
    mpsc::Receiver<WebSocketMessage>,
    Arc<Shared>,
) {
    let (cmd_tx, cmd_rx) = mpsc::channel(config.max_queue_size);
    let (in_tx, in_rx) = mpsc::channel(config.max_queue_size);
    let shared = Arc::new(Shared::new());
    let now = Instant::now();
    let Connected {
        stream,
        read_ahead,
        deflate,
        ..
    } = connected;
    let actor = Actor {
        io: stream,
        reader: FrameReader::new(config.max_message_size, deflate, read_ahead),
        out: BytesMut::new(),
        write_limit: write_limit(config.max_message_size),
        compressor: Compressor::new(deflate),
        compress_min: config.compression_min_size,
        max_message_size: config.max_message_size,
        peer_closed: false,
        commands: cmd_rx,
        commands_open: true,
        inbound: Some(in_tx),
        pending: None,
        shared: Arc::clone(&shared),
        open: true,
        ping_interval: config.ping_interval,
        ping_timeout: config.ping_timeout,
        close_timeout: config.close_timeout,
        write_timeout: config.ping_timeout.unwrap_or(config.close_timeout),
        write_since: None,
        flushing: false,
        read_done: false,
        acks: Vec::new(),
        close_waiters: Vec::new(),
        close_deadline: None,
        next_ping: config.ping_interval.map(|i| after(now, i)),
        outstanding: None,
        ping_seq: 0,
    };
    tokio::spawn(actor.run());
    (cmd_tx, in_rx, shared)
}

struct Actor {
    io: Transport,
    reader: FrameReader,
    /// Frames not written yet. Released once written, so an idle connection holds none.
    out: BytesMut,
    /// Reading pauses while `out` holds more than this.
    write_limit: usize,
    compressor: Compressor,
    /// Messages shorter than this go plain (`compression_min_size`).
    compress_min: usize,
    max_message_size: usize,
    /// The peer's close frame arrived: what follows it is ignored.
    peer_closed: bool,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    inbound: Option<mpsc::Sender<WebSocketMessage>>,
    /// An inbound message waiting for room in the channel; reading is paused meanwhile.
    pending: Option<WebSocketMessage>,
    shared: Arc<Shared>,
    /// Data can flow: neither side has started closing.
    open: bool,
    ping_interval: Option<Duration>,
    ping_timeout: Option<Duration>,
    close_timeout: Duration,
    /// With keepalive off nothing else notices a peer that stopped reading: a write still
    /// not done after this long fails the connection (`ping_timeout`, else `close_timeout`).
    write_timeout: Duration,
    /// Since when the current write has been waiting for the socket.
    write_since: Option<Instant>,
    /// `out` has frames that still have to reach the socket (or the flush is pending).
    flushing: bool,
    /// The read side is finished (end of stream or a read error).
    read_done: bool,
    /// Senders whose message is in the current write batch.
    acks: Vec<oneshot::Sender<Result<()>>>,
    close_waiters: Vec<oneshot::Sender<()>>,
    /// When closing, the moment we stop waiting for the peer.
    close_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    /// The keepalive ping awaiting its pong: sequence number and send time.
    outstanding: Option<(u64, Instant)>,
    ping_seq: u64,
}

enum Event {
    Flushed(io::Result<()>),
    Read(std::result::Result<Option<Frame>, ReadError>),
    /// The pending inbound message was handed over (or its receiver is gone).
    Delivered {
        receiver_gone: bool,
    },
    Command(Option<Command>),
    PingDue,
    PongOverdue,
    /// A write made no headway for `write_timeout` while keepalive is off.
    WriteStalled,
    CloseExpired,
}

/// A deadline far enough away to stand for "never" in a disabled `select!` branch.
fn never() -> Instant {
    after(Instant::now(), Duration::from_secs(365 * 24 * 3600))
}

/// `start + d`, saturating instead of panicking for absurdly long configured durations.
fn after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(start)
}

impl Actor {
    async fn run(mut self) {
        loop {
            let event = self.next_event().await;
            if !self.handle(event) {
                break;
            }
        }
        self.finish();
    }

    async fn next_event(&mut self) -> Event {
        let can_read =
            !self.read_done && self.pending.is_none() && self.out.len() <= self.write_limit;
        let flushing = self.flushing;
        let paused = self.pending.is_some();
        let keepalive_on = self.open && !paused;
        let ping_at = self
            .next_ping
            .filter(|_| keepalive_on && self.outstanding.is_none());
        let pong_deadline = match (self.outstanding, self.ping_timeout) {
            (Some((_, sent)), Some(timeout)) if keepalive_on => Some(after(sent, timeout)),
            _ => None,
        };
        let close_deadline = self.close_deadline;
        if flushing {
            self.write_since.get_or_insert_with(Instant::now);
        } else {
            self.write_since = None;
        }
        let write_deadline = match self.write_since {
            Some(since) if self.open && self.ping_interval.is_none() => {
                Some(after(since, self.write_timeout))
            }
            _ => None,
        };
        let accept_commands = self.commands_open && !flushing;
        let has_pending = self.pending.is_some();

        let (stream, out, reader) = (&mut self.io, &mut self.out, &mut self.reader);
        let io = poll_fn(|cx| {
            if flushing && let Poll::Ready(r) = poll_write_all(stream, out, cx) {
                return Poll::Ready(Event::Flushed(r));
            }
            if can_read && let Poll::Ready(r) = reader.poll_next(stream, cx) {
                return Poll::Ready(Event::Read(r));
            }
            Poll::Pending
        });
        let inbound = &self.inbound;
        let pending = &mut self.pending;
        let deliver = async {
            match inbound {
                Some(tx) => tx.reserve().await.ok(),
                None => None,
            }
        };

        tokio::select! {
            event = io, if flushing || can_read => event,
            permit = deliver, if has_pending => {
                let message = pending.take();
                match (permit, message) {
                    (Some(permit), Some(message)) => {
                        permit.send(message);
                        Event::Delivered { receiver_gone: false }
                    }
                    _ => Event::Delivered { receiver_gone: true },
                }
            }
            command = self.commands.recv(), if accept_commands => Event::Command(command),
            () = sleep_until(ping_at.unwrap_or_else(never)), if ping_at.is_some() => Event::PingDue,
            () = sleep_until(pong_deadline.unwrap_or_else(never)), if pong_deadline.is_some() => {
                Event::PongOverdue
            }
            () = sleep_until(write_deadline.unwrap_or_else(never)), if write_deadline.is_some() => {
                Event::WriteStalled
            }
            () = sleep_until(close_deadline.unwrap_or_else(never)), if close_deadline.is_some() => {
                Event::CloseExpired
            }
            // Nothing left to wait for (cannot happen by construction; never panic on it).
            else => Event::CloseExpired,
        }
    }

    /// Handles one event; `false` ends the actor.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Flushed(Ok(())) => {
                self.flushing = false;
                self.out = BytesMut::new();
                for ack in self.acks.drain(..) {
                    let _ = ack.send(Ok(()));
                }
                !self.read_done
            }
            Event::Flushed(Err(e)) => {
                tracing::debug!(error = %e, "websocket write failed");
                self.flushing = false;
                self.abnormal();
                false
            }
            Event::Read(Ok(None)) => {
                self.read_done = true;
                self.abnormal();
                self.keep_flushing()
            }
            Event::Read(Ok(Some(frame))) => {
                self.on_frame(frame);
                if self.read_done {
                    return self.keep_flushing();
                }
                true
            }
            Event::Read(Err(ReadError::Violation(v, size))) => {
                self.read_done = true;
                let error = reader::violation_error(&v, size, self.max_message_size);
                self.fail(v.code, v.reason, error);
                self.keep_flushing()
            }
            Event::Read(Err(ReadError::Io(e))) => {
                tracing::debug!(error = %e, "websocket read failed");
                self.read_done = true;
                self.abnormal();
                self.keep_flushing()
            }
            Event::Delivered { receiver_gone } => {
                if receiver_gone {
                    self.inbound = None;
                }
                // Reading resumes: restart keepalive, since pongs were not read while paused.
                self.outstanding = None;
                self.next_ping = self.ping_interval.map(|i| after(Instant::now(), i));
                true
            }
            Event::Command(None) => {
                // Every handle is gone: close politely.
                self.commands_open = false;
                self.begin_close(1000, "", CloseOrigin::Dropped);
                true
            }
            Event::Command(Some(command)) => {
                self.on_commands(command);
                true
            }
            Event::PingDue => {
                self.send_ping();
                true
            }
            Event::PongOverdue => {
                tracing::debug!("keepalive pong overdue; failing the connection with 1011");
                let reason = "keepalive ping timeout";
                self.fail(1011, reason, WebSocketError::closed(1011, reason));
                // The peer is unresponsive: do not wait for its close frame.
                self.read_done = true;
                self.keep_flushing()
            }
            Event::WriteStalled => {
                tracing::debug!("write stalled with keepalive off; failing the connection");
                let reason = "write timed out";
                self.fail(1011, reason, WebSocketError::closed(1011, reason));
                self.read_done = true;
                self.keep_flushing()
            }
            Event::CloseExpired => {
                tracing::debug!("closing handshake timed out; dropping the connection");
                false
            }
        }
    }

    /// After the read side ended: go on only to finish a write, bounded by a deadline.
    fn keep_flushing(&mut self) -> bool {
        if self.flushing && self.close_deadline.is_none() {
            self.close_deadline = Some(after(Instant::now(), self.close_timeout));
        }
        self.flushing
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Text(_) | Frame::Binary(_) => {
                if self.peer_closed {
                    return; // nothing counts after a close frame
                }
                match reader::message(frame) {
                    Some(Ok(message)) => self.deliver(message),
                    Some(Err(v)) => {
                        self.read_done = true;
                        let error = reader::violation_error(&v, 0, self.max_message_size);
                        self.fail(v.code, v.reason, error);
                    }
                    None => {}
                }
            }
            Frame::Ping(payload) => {
                // Answered while data can flow; after a close frame only close is sent.
                if self.open {
                    self.put_frame(OP_PONG, &payload);
                }
            }
            Frame::Pong(payload) => {
                if let Some((seq, sent)) = self.outstanding
                    && payload.as_ref() == seq.to_be_bytes()
                {
                    let rtt = sent.elapsed();
                    let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
                    self.shared.latency_nanos.store(nanos, Ordering::Relaxed);
                    self.outstanding = None;
                    self.next_ping = self.ping_interval.map(|i| after(sent, i));
                }
            }
            Frame::Close(close) => {
                if std::mem::replace(&mut self.peer_closed, true) {
                    return;
                }
                if !self.open {
                    // The answer to our close frame: receivers see the end now. The server
                    // closes the TCP connection next (RFC 6455 §7.1.1): we read on until it
                    // does, within the close deadline.
                    self.inbound = None;
                    return;
                }
                let (code, reason) = close.unwrap_or((1005, String::new()));
                let error = (!matches!(code, 1000 | 1001 | 1005))
                    .then(|| WebSocketError::closed(code, reason.clone()));
                self.shared.record(code, &reason, CloseOrigin::Peer, error);
                self.stop_data();
                // Echo the peer's close frame (RFC 6455 §5.5.1): its code and reason; a
                // close without a code gets none.
                if code == 1005 {
                    self.put_frame(OP_CLOSE, &[]);
                } else {
                    self.send_close(code, &reason);
                }
                self.close_deadline = Some(after(Instant::now(), self.close_timeout));
            }
        }
    }

    fn deliver(&mut self, message: WebSocketMessage) {
        let Some(tx) = &self.inbound else {
            return; // nobody receives any more
        };
        match tx.try_send(message.received_now()) {
            Ok(()) => {}
            // While we close, messages still in flight are delivered if there is room,
            // never waited for: the closing handshake must not stall.
            Err(mpsc::error::TrySendError::Full(message)) if self.open => {
                self.pending = Some(message);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.inbound = None,
        }
    }

    /// Queues a control frame (masked with a fresh key) for the next write.
    fn put_frame(&mut self, opcode: u8, payload: &[u8]) {
        put_masked_frame(&mut self.out, opcode, false, payload, rand::random());
        self.flushing = true;
    }

    /// Queues a data message for the next write: deflated when permessage-deflate was
    /// agreed on, the message is at least `compression_min_size` bytes and deflate makes it
    /// smaller; plain otherwise. Masked with a fresh key either way.
    fn put_message(&mut self, message: &WebSocketMessage) {
        let opcode = if message.is_text() {
            OP_TEXT
        } else {
            OP_BINARY
        };
        let payload = message.as_bytes();
        let mask = rand::random();
        if payload.len() >= self.compress_min && !matches!(self.compressor, Compressor::Off) {
            let mut deflated = Vec::new();
            if self.compressor.compress(payload, &mut deflated) {
                put_masked_frame(&mut self.out, opcode, true, &deflated, mask);
                self.flushing = true;
                return;
            }
        }
        put_masked_frame(&mut self.out, opcode, false, payload, mask);
        self.flushing = true;
    }

    /// The connection is gone without a close frame: 1006.
    fn abnormal(&mut self) {
        if self.open {
            self.shared.record(
                1006,
                "",
                CloseOrigin::Failure,
                Some(WebSocketError::closed(1006, "")),
            );
            self.stop_data();
            self.fail_acks();
        }
    }

    /// Fails the connection (RFC 6455 §7.1.7): records `error`, sends a close frame with
    /// `code` and gives it at most [`FAIL_FLUSH_LIMIT`] to go out; the peer's answer is not
    /// awaited.
    fn fail(&mut self, code: u16, reason: &str, error: WebSocketError) {
        if !self.open {
            return;
        }
        self.shared
            .record(code, reason, CloseOrigin::Failure, Some(error));
        self.stop_data();
        self.fail_acks();
        self.send_close(code, reason);
        self.close_deadline = Some(after(
            Instant::now(),
            self.close_timeout.min(FAIL_FLUSH_LIMIT),
        ));
    }

    /// Senders waiting on the current write learn at once that the connection failed.
    fn fail_acks(&mut self) {
        for ack in self.acks.drain(..) {
            let _ = ack.send(Err(self.shared.closed_error()));
        }
    }

    /// Starts the closing handshake on our side. Messages the peer sent before it saw our
    /// close frame are still delivered, until its close frame arrives.
    fn begin_close(&mut self, code: u16, reason: &str, origin: CloseOrigin) {
        if !self.open {
            return;
        }
        self.shared.record(code, reason, origin, None);
        self.open = false;
        if let Some(message) = self.pending.take()
            && let Some(tx) = &self.inbound
        {
            let _ = tx.try_send(message);
        }
        self.shared.set_state(ConnectionState::Closing);
        self.send_close(code, reason);
    }

    fn send_close(&mut self, code: u16, reason: &str) {
        let reason = protocol::close_reason(reason);
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.put_frame(OP_CLOSE, &payload);
        self.close_deadline = Some(after(Instant::now(), self.close_timeout));
    }

    /// No more data either way: the state becomes `Closing` and receivers see the end.
    fn stop_data(&mut self) {
        self.open = false;
        self.inbound = None;
        self.pending = None;
        self.shared.set_state(ConnectionState::Closing);
    }

    fn on_commands(&mut self, first: Command) {
        let mut batched = 0usize;
        let mut commands = 0usize;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            commands += 1;
            match command {
                Command::Send { message, ack } => {
                    if !self.open {
                        let _ = ack.send(Err(self.shared.closed_error()));
                    } else {
                        batched += message.len();
                        self.put_message(&message);
                        self.acks.push(ack);
                    }
                }
                Command::Close { code, reason, done } => {
                    self.close_waiters.push(done);
                    self.begin_close(code, &reason, CloseOrigin::User);
                }
            }
            // One batch is at most ~WRITE_BUFFER bytes or MAX_BATCH messages, so reads and
            // timers get their turn and the ack list stays small.
            if batched < WRITE_BUFFER && commands < MAX_BATCH {
                next = self.commands.try_recv().ok();
            }
        }
    }

    fn send_ping(&mut self) {
        self.ping_seq = self.ping_seq.wrapping_add(1);
        // Queued even behind a write that a non-reading peer stalled: then no pong comes
        // and the deadline fails the connection.
        self.put_frame(OP_PING, &self.ping_seq.to_be_bytes());
        self.outstanding = Some((self.ping_seq, Instant::now()));
    }

    fn finish(mut self) {
        self.abnormal();
        self.shared.set_state(ConnectionState::Closed);
        for ack in self.acks.drain(..) {
            let _ = ack.send(Err(self.shared.closed_error()));
        }
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Send { ack, .. } => {
                    let _ = ack.send(Err(self.shared.closed_error()));
                }
                Command::Close { done, .. } => self.close_waiters.push(done),
            }
        }
        for done in self.close_waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes all of `out` to `stream`, then flushes it (TLS keeps bytes until flushed).
fn poll_write_all(
    stream: &mut Transport,
    out: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !out.is_empty() {
        let n = ready!(Pin::new(&mut *stream).poll_write(cx, out))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        out.advance(n);
    }
    Pin::new(stream).poll_flush(cx)
}
