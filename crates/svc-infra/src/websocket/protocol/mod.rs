//! The WebSocket protocol (RFC 6455) as plain functions on bytes, shared by every role:
//! the server's sockets, the client's connection, the `svc-ws bench` load generator and
//! the tests' raw peers.
//!
//! Each rule lives here once: how a frame is encoded (unmasked by a server, masked by a
//! client), how a header is read, which close codes may be sent and received, how long a
//! close reason may be, and the handshake's accept key. Most applications never need this
//! module: [`ConnectionManager`](crate::websocket::ConnectionManager) and
//! [`WebSocketClient`](crate::websocket::WebSocketClient) use it for them.
//!
//! | file | what it owns |
//! |---|---|
//! | `frame.rs` | opcodes, [`encode_frame`], [`encode_masked_frame`], [`encode_deflated_frame`], [`encode_masked_deflated_frame`], [`FrameHeader`], [`apply_mask`] |
//! | `close.rs` | [`is_valid_close_code`], [`close_reason`], [`encode_close`], [`parse_close`] |
//! | `handshake.rs` | [`accept_key`] |
//! | `deflate.rs` | permessage-deflate (RFC 7692): [`deflate::negotiate`], [`deflate::accept_response`], [`deflate::Deflater`], [`deflate::Inflater`] |
//! | `parser.rs` | the incremental frame parser of both roles' read paths (crate-private) |

mod close;
#[cfg(any(feature = "client", feature = "server"))]
pub mod deflate;
mod frame;
#[cfg(any(feature = "client", feature = "server"))]
mod handshake;
#[cfg(any(feature = "client", feature = "server"))]
pub(crate) mod parser;

pub(crate) use close::utf8_prefix;
pub use close::{
    CloseError, MAX_CLOSE_REASON, close_reason, encode_close, is_valid_close_code, parse_close,
};
#[cfg(feature = "client")]
pub(crate) use frame::put_masked_frame;
pub use frame::{
    FrameHeader, HeaderError, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
    RSV1, apply_mask, encode_deflated_frame, encode_frame, encode_masked_deflated_frame,
    encode_masked_frame, is_control,
};
#[cfg(any(feature = "client", feature = "server"))]
pub use handshake::accept_key;
