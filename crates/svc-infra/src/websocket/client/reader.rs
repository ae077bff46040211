//! The client's read path: server frames from the byte stream through the protocol core's
//! parser ([`FrameParser::client`]), with no read buffer kept between reads. Shared by the
//! connection actor and the `client_read` fuzz target, so that what is fuzzed is what runs.

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};

use crate::websocket::{
    WebSocketError, WebSocketMessage,
    protocol::{
        deflate::DeflateParams,
        parser::{Event, FrameParser, Violation},
    },
};

/// Stack buffer for one read; nothing is kept between reads unless a read ends mid-event.
const READ_CHUNK: usize = 16 * 1024;

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The server broke the protocol: fail the connection with the violation's code. For
    /// 1009, the size of the message, as far as it is known.
    Violation(Violation, u64),
    /// The stream failed.
    Io(io::Error),
}

/// Reads frames from a stream: the parser, and the bytes of the last read that followed
/// the event it completed.
#[derive(Debug)]
pub(crate) struct FrameReader {
    parser: FrameParser<true>,
    /// Bytes read but not parsed yet: the handshake's read-ahead, or the rest of a read
    /// that completed an event. Empty (and holding no allocation) otherwise.
    leftover: Bytes,
    /// The end of the stream or an error was returned: nothing more is read.
    done: bool,
}

impl FrameReader {
    /// A reader of messages up to `max_message_size` (inflated), after a handshake that
    /// agreed on `deflate` and left `read_ahead` unparsed.
    pub(crate) fn new(
        max_message_size: usize,
        deflate: Option<DeflateParams>,
        read_ahead: Vec<u8>,
    ) -> Self {
        Self {
            parser: FrameParser::client(max_message_size, deflate),
            leftover: Bytes::from(read_ahead),
            done: false,
        }
    }

    /// The next event: `Ok(None)` at the end of the stream. After the end or an error it
    /// returns `Ok(None)` and reads nothing.
    pub(crate) fn poll_next<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Event>, ReadError>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        let result = match self.poll_event(io, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
            self.leftover = Bytes::new();
        }
        Poll::Ready(result)
    }

    fn poll_event<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Event>, ReadError>> {
        // What was read before comes first.
        while !self.leftover.is_empty() {
            let (n, event) = self
                .parser
                .feed(&self.leftover)
                .map_err(|v| self.failed(v))?;
            self.leftover.advance(n);
            if self.leftover.is_empty() {
                self.leftover = Bytes::new(); // release the allocation
            }
            if let Some(event) = event {
                return Poll::Ready(Ok(Some(event)));
            }
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Io(e))),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            if data.is_empty() {
                return Poll::Ready(Ok(None));
            }
            let mut pos = 0;
            while pos < data.len() {
                let (n, event) = self.parser.feed(&data[pos..]).map_err(|v| self.failed(v))?;
                pos += n;
                if let Some(event) = event {
                    if pos < data.len() {
                        self.leftover = Bytes::copy_from_slice(&data[pos..]);
                    }
                    return Poll::Ready(Ok(Some(event)));
                }
            }
            // The whole read went into a partial frame: read on.
        }
    }
}

impl FrameReader {
    fn failed(&self, violation: Violation) -> ReadError {
        let size = self.parser.too_large_size();
        ReadError::Violation(violation, size)
    }
}

/// A data event as the message the receivers get; `None` for control frames.
pub(crate) fn message(event: Event) -> Option<Result<WebSocketMessage, Violation>> {
    match event {
        // The parser checked the UTF-8 already; this cannot fail, and never panics.
        Event::Text(bytes) => {
            Some(
                WebSocketMessage::text_from_bytes(bytes).map_err(|_| Violation {
                    code: 1007,
                    reason: "invalid UTF-8 in a text message",
                }),
            )
        }
        Event::Binary(bytes) => Some(Ok(WebSocketMessage::binary(bytes))),
        Event::Ping(_) | Event::Pong(_) | Event::Close(_) => None,
    }
}

/// The error a receiver gets when we failed the connection over `violation`, with
/// messages limited to `limit` bytes; `size`: for 1009, the message's size as far as it is
/// known (0 if it is not).
pub(crate) fn violation_error(violation: &Violation, size: u64, limit: usize) -> WebSocketError {
    match violation.code {
        1009 => WebSocketError::MessageTooLarge {
            size: usize::try_from(size)
                .unwrap_or(usize::MAX)
                .max(limit.saturating_add(1)),
            limit,
        },
        code => WebSocketError::Protocol(format!("{} (closed with {code})", violation.reason)),
    }
}
