//! How a connection's frames reach its socket: written at once when nothing is queued,
//! else drained from the queue (vectored where the socket takes it), and, with
//! `WS_COMPRESSION=dedicated`, deflated with the connection's own context as they go.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

use super::{MAX_IOVECS, OutState, Outbound};
use crate::websocket::{protocol, protocol::deflate::Deflater, server::flush::Deferred};

impl OutState {
    pub(super) fn wake(&mut self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// The queue is written out (or the write side failed): senders write directly again.
    /// Only a reader waiting for the drain (closing) or one that must learn of the failure
    /// is woken; a wake-up per flush would cost a task poll per recipient of a broadcast.
    pub(in crate::websocket::server) fn finish_flush(&mut self, failed: bool) {
        self.flushing = false;
        self.flusher = None;
        let room = std::mem::take(&mut self.room_waiter);
        if std::mem::take(&mut self.drain_waiter) || failed || room {
            self.wake();
        }
    }

    /// How many frames at the front of the queue are deflated with the connection's
    /// context: they must be written, in order, and never dropped.
    pub(super) fn sealed(&self) -> usize {
        self.context.as_ref().map_or(0, |c| c.sealed)
    }

    /// Writes `frame` now; whatever the socket does not take is queued and the connection
    /// joins `deferred`, whose flusher task takes over until the queue is empty.
    pub(super) fn write_now(
        &mut self,
        mut frame: Bytes,
        out: &Arc<Outbound>,
        deferred: &mut Deferred,
    ) -> Result<(), ()> {
        let Some(writer) = self.writer.as_mut() else {
            self.broken = true;
            return Err(());
        };
        if let Some(context) = &mut self.context {
            frame = context.seal(frame);
        }
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
                    if let Some(context) = &mut self.context {
                        context.sealed = 1;
                    }
                    self.flushing = true;
                    deferred.push(out.clone());
                    return Ok(());
                }
            }
        }
        if self.buffered {
            match Pin::new(&mut *writer).poll_flush(&mut cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    self.broken = true;
                    self.wake();
                    return Err(());
                }
                // The frame is taken but not all on the socket: the flusher finishes it.
                Poll::Pending => {
                    self.flushing = true;
                    deferred.push(out.clone());
                }
            }
        }
        Ok(())
    }

    pub(in crate::websocket::server) fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let Some(writer) = self.writer.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !self.queue.is_empty() {
            if let Some(context) = &mut self.context {
                let batch = if self.vectored { MAX_IOVECS } else { 1 };
                context.seal_queue(&mut self.queue, batch);
            }
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
                    if std::mem::take(&mut self.room_waiter)
                        && let Some(w) = &self.waker
                    {
                        w.wake_by_ref();
                    }
                    while n > 0 {
                        let front = &mut self.queue[0];
                        if n >= front.len() {
                            n -= front.len();
                            self.queue.pop_front();
                            if let Some(context) = &mut self.context {
                                context.sealed = context.sealed.saturating_sub(1);
                            }
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
            }
        }
        if self.buffered
            && let Err(e) = ready!(Pin::new(&mut *writer).poll_flush(cx))
        {
            self.broken = true;
            return Poll::Ready(Err(e));
        }
        if self.queue.capacity() > 16 {
            self.queue = VecDeque::new(); // give a burst's memory back
        }
        Poll::Ready(Ok(()))
    }
}

/// A connection's own compressor (permessage-deflate with context takeover). Frames are
/// queued plain and deflated as they are written, in order: a frame the slow-consumer
/// policy drops never touched the compressor, so the peer's window always holds exactly
/// what it received.
#[derive(Debug)]
pub(super) struct ContextDeflate {
    /// The window to compress with: the peer's `server_max_window_bits`, at most
    /// `compression_window_bits`.
    pub(super) bits: u8,
    /// Messages shorter than this go plain.
    pub(super) min: u32,
    /// Allocated on the first message worth compressing.
    pub(super) deflater: Option<Deflater>,
    /// Frames at the front of the queue already deflated (see [`OutState::sealed`]).
    pub(super) sealed: usize,
}

impl ContextDeflate {
    /// The frame as it goes on the wire: a complete data message long enough is deflated
    /// with the connection's context (when that makes it smaller); anything else as is.
    fn seal(&mut self, frame: Bytes) -> Bytes {
        let Ok(Some(header)) = protocol::FrameHeader::parse(&frame) else {
            return frame;
        };
        let payload = &frame[header.len..];
        let data = matches!(header.opcode, protocol::OP_TEXT | protocol::OP_BINARY);
        if !data || !header.fin || header.rsv != 0 || payload.len() < self.min as usize {
            return frame;
        }
        let bits = self.bits;
        let deflater = self
            .deflater
            .get_or_insert_with(|| Deflater::new(bits, false));
        let mut deflated = Vec::new();
        if deflater.compress(payload, &mut deflated) {
            protocol::encode_deflated_frame(header.opcode, &deflated)
        } else {
            frame
        }
    }

    /// Deflates the queued frames among the first `batch` that are not yet.
    fn seal_queue(&mut self, queue: &mut VecDeque<Bytes>, batch: usize) {
        let upto = queue.len().min(batch);
        while self.sealed < upto {
            let frame = std::mem::take(&mut queue[self.sealed]);
            queue[self.sealed] = self.seal(frame);
            self.sealed += 1;
        }
    }
}
