//! `Outbound`'s tests: in-memory sockets that take only so many bytes.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::websocket::server::flush::FlushQueue;

/// An in-memory socket that takes `room` more bytes, then reports "not ready" until
/// the test gives it more room.
#[derive(Clone, Default)]
struct Pipe {
    written: Arc<Mutex<Vec<u8>>>,
    room: Arc<AtomicUsize>,
    waker: Arc<Mutex<Option<Waker>>>,
    /// Says it takes vectored writes (as a TCP socket does): the flusher then
    /// prepares up to `MAX_IOVECS` queued frames for one write.
    vectored: bool,
}

impl Pipe {
    fn with_room(room: usize) -> Self {
        let pipe = Self::default();
        pipe.room.store(room, Ordering::SeqCst);
        pipe
    }
    fn open(&self) {
        self.room.store(usize::MAX, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
    fn written(&self) -> Vec<u8> {
        self.written.lock().unwrap().clone()
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let room = self.room.load(Ordering::SeqCst);
        if room == 0 {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(room);
        self.room.fetch_sub(n.min(room), Ordering::SeqCst);
        self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        self.vectored
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A writer that, like a TLS stream, takes every byte at once but puts them on `wire`
/// only as far as it has room, keeping the rest until flushed.
struct Held {
    wire: Pipe,
    held: Vec<u8>,
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.held.extend_from_slice(buf);
        let _ = self.as_mut().poll_flush(cx)?;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while !this.held.is_empty() {
            let n = ready!(Pin::new(&mut this.wire).poll_write(cx, &this.held))?;
            this.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

fn outbound(pipe: &Pipe, policy: SlowConsumerPolicy) -> Arc<Outbound> {
    let config = WebSocketConfig {
        max_queue_size: 2,
        ..WebSocketConfig::default()
    };
    Arc::new(Outbound::new(
        Writer::boxed(pipe.clone()),
        false,
        &config,
        policy,
        None,
        None,
    ))
}

fn frame(text: &str) -> Bytes {
    protocol::encode_frame(protocol::OP_TEXT, text.as_bytes())
}

/// Runs the flush queue on `deferred` and waits until `pipe` holds `want`.
async fn flush_until(deferred: Deferred, pipe: &Pipe, want: &[u8]) {
    Arc::new(FlushQueue::default()).extend(deferred);
    pipe.open();
    tokio::time::timeout(Duration::from_secs(5), async {
        while pipe.written() != want {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the flusher wrote the queue");
}

#[test]
fn writes_straight_to_a_socket_that_takes_the_frame() {
    let pipe = Pipe::with_room(usize::MAX);
    let out = outbound(&pipe, SlowConsumerPolicy::Disconnect);
    let mut deferred = Deferred::default();
    for text in ["a", "b", "c", "d"] {
        assert_eq!(
            out.push_deferred(frame(text), &mut deferred),
            Push::Accepted
        );
    }
    assert_eq!(
        pipe.written(),
        [frame("a"), frame("b"), frame("c"), frame("d")].concat()
    );
    assert!(!out.lock().flushing && out.lock().queue.is_empty());
}

#[tokio::test]
async fn drop_oldest_keeps_a_partly_written_front_frame() {
    let pipe = Pipe::with_room(3);
    let out = outbound(&pipe, SlowConsumerPolicy::DropOldest);
    let mut deferred = Deferred::default();
    let first = frame("first frame, written in part");
    assert_eq!(
        out.push_deferred(first.clone(), &mut deferred),
        Push::Accepted
    );
    assert_eq!(pipe.written().len(), 3, "the socket took 3 bytes");
    assert_eq!(out.push_deferred(frame("b"), &mut deferred), Push::Accepted);
    // The queue is full (2): the oldest whole frame ("b") goes, never the front one.
    assert_eq!(out.push_deferred(frame("c"), &mut deferred), Push::Dropped);
    assert_eq!(out.push_deferred(frame("d"), &mut deferred), Push::Dropped);
    flush_until(deferred, &pipe, &[first, frame("d")].concat()).await;
    assert!(!out.lock().flushing);
}

/// What a buffering writer (TLS) took but has not put on the wire is flushed out by
/// the flusher, though nothing more is sent; and frames pushed meanwhile follow it.
#[tokio::test]
async fn a_buffering_writer_is_flushed_to_the_end() {
    let pipe = Pipe::with_room(3);
    let held = Held {
        wire: pipe.clone(),
        held: Vec::new(),
    };
    let config = WebSocketConfig::default();
    let policy = SlowConsumerPolicy::Disconnect;
    let out = Arc::new(Outbound::new(
        Writer::boxed(held),
        true,
        &config,
        policy,
        None,
        None,
    ));
    let mut deferred = Deferred::default();
    let first = frame("taken whole, on the wire in part");
    assert_eq!(
        out.push_deferred(first.clone(), &mut deferred),
        Push::Accepted
    );
    assert_eq!(pipe.written().len(), 3, "the wire took 3 bytes");
    assert!(out.lock().flushing, "a flusher finishes the rest");
    assert_eq!(out.push_deferred(frame("b"), &mut deferred), Push::Accepted);
    flush_until(deferred, &pipe, &[first, frame("b")].concat()).await;
    assert!(!out.lock().flushing && out.lock().queue.is_empty());
}

/// With context takeover (`WS_COMPRESSION=dedicated`) frames are deflated as they are
/// written; those deflated but not yet on the wire are part of the peer's stream, so
/// DropOldest drops only frames the compressor has not seen (or the new one).
#[test]
fn drop_oldest_never_drops_a_frame_deflated_with_the_context() {
    let params = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let config = WebSocketConfig {
        max_queue_size: 4,
        compression: Compression::Dedicated,
        ..WebSocketConfig::default()
    };
    let pipe = Pipe {
        vectored: true,
        ..Pipe::default()
    };
    let out = Arc::new(Outbound::new(
        Writer::boxed(pipe.clone()),
        false,
        &config,
        SlowConsumerPolicy::DropOldest,
        None,
        Some(params),
    ));
    let text = |i: usize| format!("message {i}: {}", "the same words again ".repeat(20));
    let mut deferred = Deferred::default();
    for i in 0..4 {
        assert_eq!(
            out.push_deferred(frame(&text(i)), &mut deferred),
            Push::Accepted
        );
    }
    // The flusher's turn: it deflates the four queued frames, and the socket takes 5
    // bytes of them.
    pipe.room.store(5, Ordering::SeqCst);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(out.lock().poll_drain(&mut cx).is_pending());
    assert_eq!(out.lock().sealed(), 4);
    // Full, and every queued frame deflated: the new one is dropped.
    assert_eq!(
        out.push_deferred(frame(&text(4)), &mut deferred),
        Push::Dropped
    );
    pipe.room.store(usize::MAX, Ordering::SeqCst);
    assert!(out.lock().poll_drain(&mut cx).is_ready());
    out.lock().finish_flush(false); // what the flusher does once the queue is written
    // Frames pushed after a drain go out deflated with the same context.
    assert_eq!(
        out.push_deferred(frame(&text(5)), &mut deferred),
        Push::Accepted
    );

    let mut parser = protocol::parser::FrameParser::client(1 << 20, Some(params));
    let wire = pipe.written();
    let mut rest = &wire[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        let (n, event) = parser.feed(rest).expect("a valid deflate stream");
        rest = &rest[n..];
        if let Some(protocol::parser::Event::Text(t)) = event {
            got.push(String::from_utf8(t.to_vec()).unwrap());
        }
    }
    assert_eq!(got, [text(0), text(1), text(2), text(3), text(5)]);
    assert!(
        wire.len() < text(0).len() * 2,
        "deflated: {} bytes",
        wire.len()
    );
}

#[tokio::test]
async fn drop_newest_keeps_the_queue() {
    let pipe = Pipe::with_room(0);
    let out = outbound(&pipe, SlowConsumerPolicy::DropNewest);
    let mut deferred = Deferred::default();
    assert_eq!(out.push_deferred(frame("a"), &mut deferred), Push::Accepted);
    assert_eq!(out.push_deferred(frame("b"), &mut deferred), Push::Accepted);
    assert_eq!(out.push_deferred(frame("c"), &mut deferred), Push::Dropped);
    flush_until(deferred, &pipe, &[frame("a"), frame("b")].concat()).await;
}

#[test]
fn disconnect_closes_with_1013_on_overflow() {
    let pipe = Pipe::with_room(0);
    let out = outbound(&pipe, SlowConsumerPolicy::Disconnect);
    let mut deferred = Deferred::default();
    assert_eq!(out.push_deferred(frame("a"), &mut deferred), Push::Accepted);
    assert_eq!(out.push_deferred(frame("b"), &mut deferred), Push::Accepted);
    assert_eq!(out.push_deferred(frame("c"), &mut deferred), Push::Overflow);
    assert_eq!(out.lock().kill.as_ref().map(|k| k.0), Some(1013));
    assert_eq!(out.push_deferred(frame("d"), &mut deferred), Push::Closed);
    assert!(out.is_closing());
    // A control frame is skipped, not queued, once the queue is full.
    assert!(out.push_control(frame("pong"), &mut deferred));
    assert_eq!(out.lock().queue.len(), 2);
}

#[tokio::test]
async fn the_flush_queue_drains_every_connection_in_order() {
    let pipes: Vec<Pipe> = (0..5).map(|_| Pipe::with_room(1)).collect();
    let outs: Vec<_> = pipes
        .iter()
        .map(|p| outbound(p, SlowConsumerPolicy::Disconnect))
        .collect();
    let queue = Arc::new(FlushQueue::default());
    let mut deferred = Deferred::default();
    for out in &outs {
        assert_eq!(
            out.push_deferred(frame("one"), &mut deferred),
            Push::Accepted
        );
        assert_eq!(
            out.push_deferred(frame("two"), &mut deferred),
            Push::Accepted
        );
    }
    queue.extend(deferred);
    for pipe in &pipes {
        pipe.open();
    }
    let want = [frame("one"), frame("two")].concat();
    tokio::time::timeout(Duration::from_secs(5), async {
        while pipes.iter().any(|p| p.written() != want) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every queue written, in order");
    for out in &outs {
        assert!(!out.lock().flushing, "senders write directly again");
    }
}
