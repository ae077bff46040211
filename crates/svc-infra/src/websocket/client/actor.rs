//! The connection actor: one task owns the socket; handles talk to it over bounded channels.
//!
//! The actor reads frames, writes queued messages in batches, answers pings (tungstenite does
//! that while reading), sends keepalive pings and checks their pongs, and runs the closing
//! handshake. No lock is held across an `.await`: the only locks guard small records that are
//! read and written synchronously.
//!
//! Backpressure: inbound messages go to a channel of `max_queue_size`; when it is full the
//! actor stops reading the socket (TCP then slows the peer down) and pauses the pong deadline,
//! because a pong that we do not read is our fault, not the peer's. Outbound messages come
//! through a channel of `max_queue_size`; while a write is blocked no new command is taken, so
//! senders wait.

use std::{
    future::poll_fn,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Sink, StreamExt};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{Instant, sleep_until},
};
use tokio_tungstenite::tungstenite::{
    self, Message,
    error::{CapacityError, ProtocolError},
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use super::handshake::{Socket, WRITE_BUFFER};
use crate::websocket::{
    ConnectionState, Result, WebSocketConfig, WebSocketError, WebSocketMessage,
};

/// How long a failed connection may take to write its close frame before it is dropped.
const FAIL_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Most messages written in one batch before the socket is flushed.
const MAX_BATCH: usize = 256;

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
        message: Message,
        ack: oneshot::Sender<Result<()>>,
    },
    Close {
        code: u16,
        reason: String,
        done: oneshot::Sender<()>,
    },
}

/// Starts the actor for an open socket; returns the command sender, the inbound receiver
/// and the shared state.
pub(crate) fn spawn(
    socket: Socket,
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
    let actor = Actor {
        ws: socket,
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
    ws: Socket,
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
    /// Frames were handed to tungstenite and still have to reach the socket.
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
    Flushed(std::result::Result<(), tungstenite::Error>),
    Read(Option<std::result::Result<Message, tungstenite::Error>>),
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
        let can_read = !self.read_done && self.pending.is_none();
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

        let ws = &mut self.ws;
        let io = poll_fn(|cx| {
            if flushing && let Poll::Ready(r) = Pin::new(&mut *ws).poll_flush(cx) {
                return Poll::Ready(Event::Flushed(r));
            }
            if can_read && let Poll::Ready(m) = ws.poll_next_unpin(cx) {
                return Poll::Ready(Event::Read(m));
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
            Event::Read(None) => {
                self.read_done = true;
                self.abnormal();
                self.keep_flushing()
            }
            Event::Read(Some(Ok(message))) => {
                self.on_message(message);
                true
            }
            Event::Read(Some(Err(e))) => {
                self.read_done = true;
                self.on_read_error(e);
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

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                let Some(tx) = &self.inbound else {
                    return; // nobody receives any more
                };
                let Some(message) = WebSocketMessage::from_tungstenite(message) else {
                    return;
                };
                match tx.try_send(message.received_now()) {
                    Ok(()) => {}
                    // While we close, messages still in flight are delivered if there is
                    // room, never waited for: the closing handshake must not stall.
                    Err(mpsc::error::TrySendError::Full(message)) if self.open => {
                        self.pending = Some(message);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => self.inbound = None,
                }
            }
            // tungstenite queued the pong; make sure it goes out even if reading pauses.
            Message::Ping(_) => self.flushing = true,
            Message::Pong(payload) => {
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
            Message::Close(frame) => {
                if !self.open {
                    // The answer to our close frame: receivers see the end now.
                    self.inbound = None;
                    return;
                }
                let (code, reason) = match &frame {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    None => (1005, String::new()),
                };
                let error = (!matches!(code, 1000 | 1001 | 1005))
                    .then(|| WebSocketError::closed(code, reason.clone()));
                self.shared.record(code, &reason, CloseOrigin::Peer, error);
                self.stop_data();
                // tungstenite queued the echo of the close frame.
                self.flushing = true;
                self.close_deadline = Some(after(Instant::now(), self.close_timeout));
            }
            Message::Frame(_) => {}
        }
    }

    fn on_read_error(&mut self, error: tungstenite::Error) {
        match error {
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                self.fail(
                    1009,
                    "message too big",
                    WebSocketError::MessageTooLarge {
                        size,
                        limit: max_size,
                    },
                );
            }
            tungstenite::Error::Utf8(_) => self.fail(
                1007,
                "invalid UTF-8",
                WebSocketError::Protocol("the peer sent invalid UTF-8 in a text message".into()),
            ),
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.abnormal();
            }
            tungstenite::Error::Protocol(e) => {
                self.fail(
                    1002,
                    "protocol error",
                    WebSocketError::Protocol(e.to_string()),
                );
            }
            other => {
                tracing::debug!(error = %other, "websocket read failed");
                self.abnormal();
            }
        }
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
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: crate::websocket::protocol::close_reason(reason).into(),
        };
        match Pin::new(&mut self.ws).start_send(Message::Close(Some(frame))) {
            Ok(()) => self.flushing = true,
            Err(e) => tracing::debug!(error = %e, "could not queue the close frame"),
        }
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
                        match Pin::new(&mut self.ws).start_send(message) {
                            Ok(()) => {
                                self.flushing = true;
                                self.acks.push(ack);
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "websocket write failed");
                                let _ = ack.send(Err(WebSocketError::closed(1006, "")));
                                self.abnormal();
                            }
                        }
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
        let payload = Bytes::copy_from_slice(&self.ping_seq.to_be_bytes());
        if let Err(e) = Pin::new(&mut self.ws).start_send(Message::Ping(payload)) {
            // Typically a write buffer that a non-reading peer filled up. Count the ping as
            // sent anyway: no pong will come and the deadline fails the connection.
            tracing::debug!(error = %e, "could not send keepalive ping");
        }
        self.flushing = true;
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
