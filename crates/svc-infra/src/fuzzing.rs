//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz) and their stable-Rust drivers
//! (`tests/fuzz.rs`): the crate-private parsers of untrusted bytes, reached without a
//! network. Not part of the public API: hidden from the docs, and free to change in any
//! release. `docs/fuzzing.md` says what each target checks.
//!
//! | target | entry point here |
//! |---|---|
//! | `server_frames` | [`FrameParser`] (the server's read path; the client's is [`FrameParser::client`]) |
//! | `client_read` | [`client_read`] (the client's handshake response, then its frames, through its own reader) |
//! | `gateway_request` | [`gateway_answer`] (one `/ws` request and its answer) |
//!
//! The other targets (`upgrade_request`, `backplane_envelope`, `backplane_presence`,
//! `auth_extract`) need nothing beyond the public API.

#[cfg(any(feature = "client", feature = "server"))]
pub use crate::websocket::protocol::{
    deflate::DeflateParams,
    parser::{Event, FrameParser, Violation},
};

#[cfg(feature = "client")]
pub use client::{CLIENT_KEY, ClientEvent, ClientRun, client_read};

#[cfg(feature = "gateway")]
pub use gateway::gateway_answer;

#[cfg(feature = "client")]
mod client {
    use std::{
        collections::VecDeque,
        future::poll_fn,
        io,
        pin::Pin,
        task::{Context, Poll},
    };

    use bytes::Bytes;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use crate::websocket::{
        Compression, Connected, FrameReader, ProxySetting, ReadError, Target, TlsRoots,
        WebSocketConfig, WebSocketMessage, frame_message, protocol::parser::Event, violation_error,
    };

    /// The nonce [`client_read`]'s handshake sends (the example of RFC 6455 §1.3), so that
    /// an input can carry the matching `Sec-WebSocket-Accept`
    /// (`s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`).
    pub const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// What the client made of a server's bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ClientRun {
        /// The handshake: the subprotocol the server chose, or why it failed (as text).
        pub handshake: Result<Option<String>, String>,
        /// Whether the handshake agreed on permessage-deflate.
        pub deflate: bool,
        /// What was read after the handshake, in order, up to and with a close frame.
        pub events: Vec<ClientEvent>,
        /// Why reading stopped, if it did not end cleanly (as text: the error the client's
        /// receivers would get).
        pub error: Option<String>,
        /// Whether a read after the first error still produced a data message.
        pub read_after_error: bool,
    }

    /// One thing the client read.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ClientEvent {
        /// A text or binary message, as the client's receivers get it.
        Message(WebSocketMessage),
        /// A ping and its payload.
        Ping(Bytes),
        /// A pong and its payload.
        Pong(Bytes),
        /// A close frame: its code and reason, if it had a code.
        Close(Option<(u16, String)>),
    }

    /// Runs the client's side of a connection to `ws://fuzz.invalid/` (offering
    /// `subprotocols`, and permessage-deflate if `compression`, limited to
    /// `max_message_size`) against a server that sends `chunks`, one per read, then
    /// closes: the opening handshake with [`CLIENT_KEY`], then the client's read path (the
    /// same reader its connection actor uses) until the end, a close frame (after which
    /// the client reads nothing more that counts) or the first error. What the client
    /// writes is discarded.
    pub async fn client_read(
        chunks: Vec<Vec<u8>>,
        max_message_size: usize,
        subprotocols: &[String],
        compression: bool,
    ) -> ClientRun {
        let mut run = ClientRun {
            handshake: Ok(None),
            deflate: false,
            events: Vec::new(),
            error: None,
            read_after_error: false,
        };
        let config = WebSocketConfig::default()
            .with_max_message_size(max_message_size)
            .with_compression(if compression {
                Compression::Shared
            } else {
                Compression::Off
            });
        let target = match Target::new(
            "ws://fuzz.invalid/",
            config,
            &[],
            subprotocols,
            &TlsRoots::default(),
            &ProxySetting::Off,
        ) {
            Ok(t) => t,
            Err(e) => {
                run.handshake = Err(e.to_string());
                return run;
            }
        };
        let stream = Chunks {
            chunks: chunks.into(),
        };
        let Connected {
            mut stream,
            read_ahead,
            subprotocol,
            deflate,
        } = match target.handshake(stream, CLIENT_KEY).await {
            Ok(connected) => connected,
            Err(e) => {
                run.handshake = Err(e.to_string());
                return run;
            }
        };
        run.handshake = Ok(subprotocol);
        run.deflate = deflate.is_some();
        let mut reader = FrameReader::new(max_message_size, deflate, read_ahead);
        loop {
            let read = poll_fn(|cx| reader.poll_next(&mut stream, cx)).await;
            let event = match read {
                Ok(None) => break,
                Ok(Some(Event::Ping(p))) => ClientEvent::Ping(p),
                Ok(Some(Event::Pong(p))) => ClientEvent::Pong(p),
                Ok(Some(Event::Close(close))) => {
                    run.events.push(ClientEvent::Close(close));
                    break;
                }
                Ok(Some(data)) => match frame_message(data) {
                    Some(Ok(m)) => ClientEvent::Message(m),
                    Some(Err(v)) => {
                        run.error = Some(violation_error(&v, 0, max_message_size).to_string());
                        break;
                    }
                    None => continue,
                },
                Err(e) => {
                    run.error = Some(match e {
                        ReadError::Violation(v, size) => {
                            violation_error(&v, size, max_message_size).to_string()
                        }
                        ReadError::Io(e) => e.to_string(),
                    });
                    // The client's actor stops reading here; check that reading on would
                    // not deliver anything either.
                    let again = poll_fn(|cx| reader.poll_next(&mut stream, cx)).await;
                    run.read_after_error =
                        matches!(again, Ok(Some(Event::Text(_) | Event::Binary(_))));
                    break;
                }
            };
            run.events.push(event);
        }
        run
    }

    /// A server that sends its chunks, one per read, then closes; it takes any write.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            // An empty read is the end of the stream: skip empty chunks.
            while let Some(mut chunk) = self.chunks.pop_front() {
                if chunk.is_empty() {
                    continue;
                }
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
                break;
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Chunks {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(feature = "gateway")]
mod gateway {
    use crate::{gateway::Gateway, websocket::WebSocketMessage};

    /// What the gateway's `/ws` answers `message` with, for a connection of `user` (with
    /// the broadcast scope if `can_broadcast`): the JSON text sent back, or `None` when the
    /// request gets no answer (no `id`). The requests act on `gateway`'s manager as they
    /// would on a connection.
    pub async fn gateway_answer(
        gateway: &Gateway,
        user: &str,
        can_broadcast: bool,
        message: &WebSocketMessage,
    ) -> Option<String> {
        crate::gateway::answer(gateway, user, can_broadcast, message).await
    }
}
