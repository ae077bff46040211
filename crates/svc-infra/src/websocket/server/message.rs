//! What the manager sends: a message encoded once ([`PreparedMessage`]) from anything
//! that can be a message ([`IntoMessage`]).

use std::{fmt, sync::OnceLock};

use bytes::Bytes;
use serde::Serialize;

use super::outbound::Outbound;
use crate::websocket::{
    WebSocketError, WebSocketMessage,
    protocol::{self, OP_BINARY, OP_TEXT, deflate},
};

/// A message encoded once, ready to go to any number of connections.
///
/// Server frames are not masked, so the bytes on the wire are the same for every recipient:
/// a broadcast builds them once and every recipient gets a reference-counted clone. The
/// same holds compressed: the first recipient that negotiated permessage-deflate has the
/// message deflated, and every other one gets the same bytes.
#[derive(Clone)]
pub struct PreparedMessage {
    frame: Bytes,
    /// The frame deflated for peers that accept the full window, made on first need;
    /// `Some(None)` when deflate did not make it smaller.
    deflated: OnceLock<Option<Bytes>>,
}

impl PartialEq for PreparedMessage {
    fn eq(&self, other: &Self) -> bool {
        self.frame == other.frame
    }
}
impl Eq for PreparedMessage {}

impl fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedMessage")
            .field("frame_len", &self.frame.len())
            .finish()
    }
}

impl PreparedMessage {
    /// A text message.
    pub fn text(text: &str) -> Self {
        Self::from_frame(protocol::encode_frame(OP_TEXT, text.as_bytes()))
    }

    /// A binary message.
    pub fn binary(data: &[u8]) -> Self {
        Self::from_frame(protocol::encode_frame(OP_BINARY, data))
    }

    /// A text message holding `value` as compact JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, WebSocketError> {
        Ok(Self::text(&serde_json::to_string(value)?))
    }

    /// Size of the frame on the wire, header included.
    pub fn wire_len(&self) -> usize {
        self.frame.len()
    }

    /// Size of the message itself (the frame's payload), what `max_message_size` limits.
    pub fn len(&self) -> usize {
        protocol::FrameHeader::parse(&self.frame)
            .ok()
            .flatten()
            .map_or(0, |h| self.frame.len() - h.len)
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A message whose frame another node encoded (it arrived on the backplane).
    pub(crate) fn from_frame(frame: Bytes) -> Self {
        Self {
            frame,
            deflated: OnceLock::new(),
        }
    }

    /// The complete plain frame, shared by every recipient that gets it plain.
    pub(crate) fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The frame for one recipient, and whether this call deflated the message. Deflated
    /// when the recipient negotiated permessage-deflate, the message is long enough and
    /// deflate makes it smaller; else plain. For recipients with the full window (every
    /// browser) the deflated frame is made once and shared. A recipient that asked for a
    /// smaller window gets one made for it when `alone` (a send to it only), the plain frame
    /// in a broadcast (where deflating per recipient would undo the point of sharing).
    pub(crate) fn frame_for(&self, out: &Outbound, alone: bool) -> (Bytes, bool) {
        let Some(bits) = out.deflate_for(|| self.len()) else {
            return (self.frame.clone(), false);
        };
        if bits == deflate::MAX_WINDOW_BITS {
            let mut made = false;
            let shared = self.deflated.get_or_init(|| {
                made = true;
                self.deflate(bits)
            });
            return (shared.as_ref().unwrap_or(&self.frame).clone(), made);
        }
        match alone.then(|| self.deflate(bits)).flatten() {
            Some(frame) => (frame, true),
            None => (self.frame.clone(), false),
        }
    }

    fn deflate(&self, bits: u8) -> Option<Bytes> {
        let header = protocol::FrameHeader::parse(&self.frame).ok().flatten()?;
        deflate::deflate_frame(header.opcode, &self.frame[header.len..], bits)
    }
}

/// Anything the manager can send: text (`&str`, `String`), binary (`Vec<u8>`, `Bytes`,
/// `&[u8]`), a [`WebSocketMessage`], JSON (`serde_json::Value` or [`Json`]`(value)` for any
/// `Serialize`), or an already [`PreparedMessage`]. Whatever it is, it is encoded once per
/// call, never once per recipient.
pub trait IntoMessage {
    /// Encodes the message into a frame.
    fn prepare(self) -> Result<PreparedMessage, WebSocketError>;
}

/// Sends any `Serialize` value as compact JSON text: `manager.broadcast(Json(&event))`.
#[derive(Debug, Clone, Copy)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoMessage for Json<T> {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        PreparedMessage::json(&self.0)
    }
}
impl IntoMessage for PreparedMessage {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(self)
    }
}
impl IntoMessage for &PreparedMessage {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(self.clone())
    }
}
impl IntoMessage for &str {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::text(self))
    }
}
impl IntoMessage for String {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::text(&self))
    }
}
impl IntoMessage for &String {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::text(self))
    }
}
impl IntoMessage for &[u8] {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::binary(self))
    }
}
impl IntoMessage for Vec<u8> {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::binary(&self))
    }
}
impl IntoMessage for Bytes {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::binary(&self))
    }
}
impl IntoMessage for WebSocketMessage {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        (&self).prepare()
    }
}
impl IntoMessage for &WebSocketMessage {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(match self.as_text() {
            Some(text) => PreparedMessage::text(text),
            None => PreparedMessage::binary(self.as_bytes()),
        })
    }
}
impl IntoMessage for serde_json::Value {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        PreparedMessage::json(&self)
    }
}
impl IntoMessage for &serde_json::Value {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        PreparedMessage::json(self)
    }
}
