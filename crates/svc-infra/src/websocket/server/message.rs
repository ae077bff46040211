//! What the manager sends: a message encoded once ([`PreparedMessage`]) from anything
//! that can be a message ([`IntoMessage`]).

use std::{fmt, sync::OnceLock};

use bytes::{Bytes, BytesMut};
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
///
/// With a backplane, the other nodes get the deflated frame when this node made one, and
/// forward it as it is to their own recipients with compression: a broadcast is deflated
/// once in the whole cluster (see [`backplane`](super::backplane)).
#[derive(Clone)]
pub struct PreparedMessage {
    /// The frame the message was made as: plain for a message prepared on this node (every
    /// message a caller can hold); deflated at window 15 (RSV1 set) for one that arrived
    /// from another node that had deflated it.
    frame: Bytes,
    /// The other form, made on first need and then shared. For a plain `frame`, the frame
    /// deflated for peers that accept the full window (`None`: deflate did not make it
    /// smaller). For a deflated `frame`, the plain frame, inflated (`None`: it does not
    /// inflate within `limit`).
    other: OnceLock<Option<Bytes>>,
    /// The largest payload a deflated `frame` may inflate to (`max_message_size` of the
    /// node it arrived at, at least 1); 0 for a plain `frame`, so that a broadcast tells
    /// the two apart by a field of its own, not by a byte of the frame.
    limit: usize,
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
            .field("arrived_deflated", &self.arrived_deflated())
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

    /// Size of the plain frame on the wire, header included (what a peer without
    /// compression receives).
    pub fn wire_len(&self) -> usize {
        self.plain().map_or(0, Bytes::len)
    }

    /// Size of the message itself (the plain frame's payload), what `max_message_size`
    /// limits.
    ///
    /// A message that arrived deflated from another node is inflated to answer (once: the
    /// plain frame is kept for the recipients that need it); 0 if it does not inflate.
    /// Sending never asks this of such a message.
    pub fn len(&self) -> usize {
        self.plain().map_or(0, |frame| payload_len(frame))
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A message whose plain frame another node encoded (it arrived on the backplane), or
    /// one prepared here.
    pub(crate) fn from_frame(frame: Bytes) -> Self {
        Self {
            frame,
            other: OnceLock::new(),
            limit: 0,
        }
    }

    /// A message that arrived on the backplane as another node deflated it: `frame` has
    /// RSV1 set, was made at window 15 without context takeover, and goes as it is to every
    /// recipient with the full window. The plain frame is inflated on first need, at most
    /// `limit` bytes of payload.
    pub(crate) fn from_deflated_frame(frame: Bytes, limit: usize) -> Self {
        debug_assert!(frame.first().is_some_and(|b| b & protocol::RSV1 != 0));
        Self {
            frame,
            other: OnceLock::new(),
            limit: limit.max(1),
        }
    }

    /// Whether this message arrived deflated (its `frame` has RSV1 set).
    fn arrived_deflated(&self) -> bool {
        self.limit != 0
    }

    /// The complete plain frame, shared by every recipient that gets it plain; for a
    /// message that arrived deflated, inflated on first call, and `None` if it does not
    /// inflate within the limit.
    pub(crate) fn plain(&self) -> Option<&Bytes> {
        if !self.arrived_deflated() {
            return Some(&self.frame);
        }
        self.other.get_or_init(|| self.inflate()).as_ref()
    }

    /// Whether this message arrived deflated and was found not to inflate (within the
    /// limit): its recipients that needed the plain frame did not get it.
    pub(crate) fn failed_to_inflate(&self) -> bool {
        self.arrived_deflated() && matches!(self.other.get(), Some(None))
    }

    /// What the other nodes get: the shared deflated frame if this node made one (for its
    /// own recipients), else the plain frame. Asked after local delivery, so a broadcast
    /// that had a recipient with compression here publishes the bytes it deflated.
    pub(crate) fn backplane_frame(&self) -> &Bytes {
        match self.other.get() {
            Some(Some(deflated)) if !self.arrived_deflated() => deflated,
            _ => &self.frame,
        }
    }

    /// The frame for one recipient, and whether this call deflated the message. Deflated
    /// when the recipient negotiated permessage-deflate, the message is long enough and
    /// deflate makes it smaller; else plain. For recipients with the full window (every
    /// browser) the deflated frame is made once and shared. A recipient that asked for a
    /// smaller window gets one made for it when `alone` (a send to it only), the plain frame
    /// in a broadcast (where deflating per recipient would undo the point of sharing).
    ///
    /// `None` only for a message that arrived deflated and does not inflate, for a
    /// recipient that needs it plain.
    pub(crate) fn frame_for(&self, out: &Outbound, alone: bool) -> Option<(Bytes, bool)> {
        if self.arrived_deflated() {
            return self.arrived_frame_for(out, alone);
        }
        let Some(bits) = out.deflate_for(|| self.len()) else {
            return Some((self.frame.clone(), false));
        };
        if bits == deflate::MAX_WINDOW_BITS {
            let mut made = false;
            let shared = self.other.get_or_init(|| {
                made = true;
                deflate_plain(&self.frame, bits)
            });
            return Some((shared.as_ref().unwrap_or(&self.frame).clone(), made));
        }
        match alone.then(|| deflate_plain(&self.frame, bits)).flatten() {
            Some(frame) => Some((frame, true)),
            None => Some((self.frame.clone(), false)),
        }
    }

    /// [`frame_for`](Self::frame_for) a message that arrived deflated: as it came to a
    /// recipient with the full window, whatever its length (the origin deflated it because
    /// it was long enough there, and it is smaller than plain); else plain, inflated once.
    #[cold]
    fn arrived_frame_for(&self, out: &Outbound, alone: bool) -> Option<(Bytes, bool)> {
        match out.deflate_for(|| usize::MAX) {
            Some(deflate::MAX_WINDOW_BITS) => Some((self.frame.clone(), false)),
            Some(bits) if alone => {
                let plain = self.plain()?;
                Some(match deflate_plain(plain, bits) {
                    Some(frame) => (frame, true),
                    None => (plain.clone(), false),
                })
            }
            _ => self.plain().map(|plain| (plain.clone(), false)),
        }
    }

    /// The plain frame of a deflated `frame`: a complete data frame, RSV1 set, whose
    /// payload inflates to at most `limit` bytes.
    fn inflate(&self) -> Option<Bytes> {
        let header = protocol::FrameHeader::parse(&self.frame).ok().flatten()?;
        let whole = header.fin
            && header.mask.is_none()
            && header.rsv == 0b100
            && matches!(header.opcode, OP_TEXT | OP_BINARY)
            && header.payload_len == (self.frame.len() - header.len) as u64;
        if !whole {
            return None;
        }
        let mut compressed = BytesMut::from(&self.frame[header.len..]);
        let payload = deflate::inflate_shared(&mut compressed, self.limit).ok()?;
        Some(protocol::encode_frame(header.opcode, &payload))
    }
}

/// The payload's length of a complete frame (0 if the header does not parse).
fn payload_len(frame: &[u8]) -> usize {
    protocol::FrameHeader::parse(frame)
        .ok()
        .flatten()
        .map_or(0, |h| frame.len() - h.len)
}

/// `frame` (plain) deflated for peers with a window of `bits`, RSV1 set; `None` when
/// deflate does not make it smaller.
fn deflate_plain(frame: &[u8], bits: u8) -> Option<Bytes> {
    let header = protocol::FrameHeader::parse(frame).ok().flatten()?;
    deflate::deflate_frame(header.opcode, &frame[header.len..], bits)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::{
        WebSocketConfig, protocol::deflate::DeflateParams, server::SlowConsumerPolicy,
    };

    /// A connection's sending side that negotiated deflate with `bits` (0: not at all).
    fn peer(bits: u8) -> Outbound {
        let deflate = (bits != 0).then_some(DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: bits,
            client_max_window_bits: 15,
        });
        Outbound::new(
            super::super::io::Writer::boxed(tokio::io::sink()),
            false,
            &WebSocketConfig::default(),
            SlowConsumerPolicy::Disconnect,
            None,
            deflate,
        )
    }

    fn long_text() -> String {
        "{\"type\":\"message\",\"text\":\"hello from the room\"},".repeat(40)
    }

    /// What the origin publishes after delivering to a peer with compression: the frame it
    /// deflated, not the plain one.
    fn published(message: &PreparedMessage) -> Bytes {
        let (frame, made) = message.frame_for(&peer(15), false).unwrap();
        assert!(made);
        assert_eq!(message.backplane_frame(), &frame);
        frame
    }

    #[test]
    fn a_prepared_message_stays_small() {
        // The frame (32 bytes), the other form (40) and the inflate limit: one word more
        // than before messages could arrive deflated.
        assert!(
            size_of::<PreparedMessage>() <= 80,
            "{}",
            size_of::<PreparedMessage>()
        );
    }

    #[test]
    fn the_origin_publishes_what_it_deflated_and_plain_otherwise() {
        let text = long_text();
        let message = PreparedMessage::text(&text);
        // Nothing deflated yet (or only plain recipients): the plain frame.
        assert!(!message.frame_for(&peer(0), false).unwrap().1);
        assert_eq!(message.backplane_frame(), &message.frame);
        // A recipient with a smaller window, alone: deflated for it, not shared.
        assert!(message.frame_for(&peer(10), true).unwrap().1);
        assert_eq!(message.backplane_frame(), &message.frame);
        let deflated = published(&message);
        assert_eq!(deflated[0] & protocol::RSV1, protocol::RSV1);
        assert!(deflated.len() < message.wire_len() / 3);
    }

    #[test]
    fn a_deflated_arrival_goes_as_it_came_and_is_inflated_once_for_plain_peers() {
        let text = long_text();
        let origin = PreparedMessage::text(&text);
        let arrived = PreparedMessage::from_deflated_frame(published(&origin), 1 << 20);
        // Full window: the same bytes, nothing deflated here, nothing inflated yet.
        let (frame, made) = arrived.frame_for(&peer(15), false).unwrap();
        assert_eq!((&frame, made), (origin.backplane_frame(), false));
        assert!(
            arrived.other.get().is_none(),
            "not inflated for a compressed peer"
        );
        // A plain peer and a smaller window in a broadcast: the plain frame, made once.
        for bits in [0, 10] {
            let (frame, made) = arrived.frame_for(&peer(bits), false).unwrap();
            assert_eq!((&frame, made), (&origin.frame, false));
        }
        let plain = arrived.other.get().unwrap().as_ref().unwrap();
        assert_eq!(plain, &origin.frame);
        // The same plain frame (a refcount, not another inflate) for the next one.
        let (again, _) = arrived.frame_for(&peer(0), false).unwrap();
        assert_eq!(again.as_ptr(), plain.as_ptr());
        // A smaller window alone: deflated for it from the plain frame.
        let (small, made) = arrived.frame_for(&peer(10), true).unwrap();
        assert!(made && small[0] & protocol::RSV1 != 0);
        assert_eq!(
            (arrived.len(), arrived.wire_len()),
            (origin.len(), origin.wire_len())
        );
        assert!(!arrived.failed_to_inflate());
    }

    #[test]
    fn len_of_a_deflated_arrival_is_the_plain_length() {
        let text = long_text();
        let origin = PreparedMessage::text(&text);
        let arrived = PreparedMessage::from_deflated_frame(published(&origin), 1 << 20);
        assert_eq!(arrived.len(), text.len());
        assert_eq!(arrived.wire_len(), origin.wire_len());
        assert!(!arrived.is_empty());
    }

    #[test]
    fn a_corrupt_or_too_large_deflated_arrival_reaches_no_plain_peer_and_never_panics() {
        let text = long_text();
        let good = published(&PreparedMessage::text(&text));
        let mut corrupt: Vec<Bytes> = vec![
            // Not deflate data.
            protocol::encode_deflated_frame(OP_TEXT, &[0xff; 40]),
            // A header only, a cut frame, a payload longer than its header says.
            Bytes::from_static(&[0xc1]),
            good.slice(..good.len() / 2),
            Bytes::from([&good[..], b"xx"].concat()),
            // Not a data frame, or not the last of its message.
            Bytes::from([&[0xc9u8][..], &good[1..]].concat()),
            Bytes::from([&[0x41u8][..], &good[1..]].concat()),
        ];
        // Every cut and every flipped byte of a good frame (RSV1 kept).
        for cut in 1..good.len() {
            corrupt.push(good.slice(..cut));
        }
        for i in 2..good.len() {
            let mut bad = good.to_vec();
            bad[i] ^= 0x5a;
            corrupt.push(Bytes::from(bad));
        }
        let mut rejected = 0;
        for frame in corrupt {
            let arrived = PreparedMessage::from_deflated_frame(frame.clone(), 1 << 20);
            // A compressed peer gets it as it came (this node checks nothing it forwards).
            assert_eq!(arrived.frame_for(&peer(15), false).unwrap().0, frame);
            match arrived.frame_for(&peer(0), false) {
                None => {
                    rejected += 1;
                    assert!(arrived.failed_to_inflate());
                    assert_eq!((arrived.len(), arrived.wire_len()), (0, 0));
                }
                // A flipped byte may still inflate (to something else): then it is whole.
                Some((plain, _)) => assert!(!arrived.failed_to_inflate() && plain.len() > 2),
            }
        }
        assert!(rejected > good.len(), "{rejected}");
        // Within a limit one byte too small: too large, rejected.
        let arrived = PreparedMessage::from_deflated_frame(good.clone(), text.len() - 1);
        assert!(arrived.frame_for(&peer(0), false).is_none());
        assert!(arrived.failed_to_inflate());
        let arrived = PreparedMessage::from_deflated_frame(good, text.len());
        assert_eq!(arrived.len(), text.len());
    }
}
