//! Frames: opcodes, encoding in both roles, and reading a header.

use bytes::{BufMut, Bytes, BytesMut};

/// Continues a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// A text message (UTF-8).
pub const OP_TEXT: u8 = 0x1;
/// A binary message.
pub const OP_BINARY: u8 = 0x2;
/// Starts the closing handshake.
pub const OP_CLOSE: u8 = 0x8;
/// A ping, answered with a pong carrying the same payload.
pub const OP_PING: u8 = 0x9;
/// A pong.
pub const OP_PONG: u8 = 0xA;

/// Whether `opcode` is a control frame's (close, ping, pong and the reserved 0xB–0xF).
pub fn is_control(opcode: u8) -> bool {
    opcode & 0x08 != 0
}

/// Builds one complete, unmasked frame (FIN set), as a server sends it: header and
/// payload in one allocation. The bytes are the same for every recipient, so a broadcast
/// builds them once.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(payload.len(), false) + payload.len());
    put_header(&mut buf, opcode, payload.len(), None);
    buf.put_slice(payload);
    buf.freeze()
}

/// Builds one complete, unmasked frame of a message deflated by permessage-deflate (RSV1
/// set: RFC 7692 §6): `deflated` is the message after compression, without its final
/// `00 00 ff ff`.
pub fn encode_deflated_frame(opcode: u8, deflated: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(deflated.len(), false) + deflated.len());
    put_header(&mut buf, opcode, deflated.len(), None);
    buf[0] |= RSV1;
    buf.put_slice(deflated);
    buf.freeze()
}

/// The first reserved bit, which marks a compressed message (on its first frame only).
pub const RSV1: u8 = 0x40;

/// Builds one complete frame (FIN set) masked with `mask`, as a client must send it.
pub fn encode_masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(payload.len(), true) + payload.len());
    put_masked_frame(&mut buf, opcode, false, payload, mask);
    buf.freeze()
}

/// Builds one complete frame (FIN set) of a message deflated by permessage-deflate (RSV1
/// set), masked with `mask`, as a client sends it: `deflated` is the message after
/// compression, without its final `00 00 ff ff`.
pub fn encode_masked_deflated_frame(opcode: u8, deflated: &[u8], mask: [u8; 4]) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(deflated.len(), true) + deflated.len());
    put_masked_frame(&mut buf, opcode, true, deflated, mask);
    buf.freeze()
}

/// Appends one complete frame (FIN set, RSV1 if `rsv1`) masked with `mask` to `buf`: the
/// client's writer builds its frames straight into its write buffer with it.
pub(crate) fn put_masked_frame(
    buf: &mut BytesMut,
    opcode: u8,
    rsv1: bool,
    payload: &[u8],
    mask: [u8; 4],
) {
    buf.reserve(header_len(payload.len(), true) + payload.len());
    let first = buf.len();
    put_header(buf, opcode, payload.len(), Some(mask));
    if rsv1 {
        buf[first] |= RSV1;
    }
    let start = buf.len();
    buf.put_slice(payload);
    apply_mask(&mut buf[start..], mask, 0);
}

fn header_len(payload_len: usize, masked: bool) -> usize {
    let len = match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    if masked { len + 4 } else { len }
}

fn put_header(buf: &mut BytesMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    buf.put_u8(0x80 | opcode);
    match len {
        0..=125 => buf.put_u8(mask_bit | len as u8),
        126..=65535 => {
            buf.put_u8(mask_bit | 126);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(mask_bit | 127);
            buf.put_u64(len as u64);
        }
    }
    if let Some(mask) = mask {
        buf.put_slice(&mask);
    }
}

/// XORs `data` with `mask`, as if `data` started `offset` bytes into the payload. The same
/// call masks and unmasks.
#[inline]
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    if data.len() < 16 {
        // Short payloads (most control frames and chat messages): byte by byte.
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[(offset + i) & 3];
        }
    } else {
        apply_mask_wide(data, mask, offset);
    }
}

fn apply_mask_wide(data: &mut [u8], mask: [u8; 4], offset: usize) {
    // The mask as it lines up with `data`, then eight bytes at a time.
    let mut key = mask;
    key.rotate_left(offset & 3);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A frame's header, as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The last frame of its message.
    pub fin: bool,
    /// The three reserved bits (RSV1–3), in the low bits; non-zero only with an extension.
    pub rsv: u8,
    /// The opcode (`OP_*`).
    pub opcode: u8,
    /// The masking key, if the frame is masked (every client frame is, no server frame is).
    pub mask: Option<[u8; 4]>,
    /// The payload's length.
    pub payload_len: u64,
    /// The header's length on the wire (2 to 14 bytes).
    pub len: usize,
}

/// A header that no frame may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The 64-bit length has its most significant bit set (RFC 6455 §5.2).
    #[error("{}", self.reason())]
    LengthHighBit,
}

impl HeaderError {
    /// The close reason that answers this error (its message); the close code is 1002.
    pub fn reason(self) -> &'static str {
        match self {
            Self::LengthHighBit => "payload length has the high bit set",
        }
    }
}

impl FrameHeader {
    /// The header's length implied by the bytes seen so far: 2 until the second byte is
    /// known, then the full length. A reader gathers this many bytes before
    /// [`parse`](Self::parse) can succeed.
    pub fn needed(seen: &[u8]) -> usize {
        let Some(&second) = seen.get(1) else {
            return 2;
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        match second & 0x7F {
            126 => 4 + mask,
            127 => 10 + mask,
            _ => 2 + mask,
        }
    }

    /// Reads the header at the start of `bytes`: `Ok(None)` while it is incomplete.
    pub fn parse(bytes: &[u8]) -> Result<Option<Self>, HeaderError> {
        let len = Self::needed(bytes);
        if bytes.len() < len {
            return Ok(None);
        }
        let (first, second) = (bytes[0], bytes[1]);
        let (payload_len, mask_at) = match second & 0x7F {
            126 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => {
                let mut be = [0; 8];
                be.copy_from_slice(&bytes[2..10]);
                let n = u64::from_be_bytes(be);
                if n >> 63 != 0 {
                    return Err(HeaderError::LengthHighBit);
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = (second & 0x80 != 0).then(|| {
            let mut m = [0; 4];
            m.copy_from_slice(&bytes[mask_at..mask_at + 4]);
            m
        });
        Ok(Some(Self {
            fin: first & 0x80 != 0,
            rsv: (first >> 4) & 0x07,
            opcode: first & 0x0F,
            mask,
            payload_len,
            len,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_length_forms() {
        assert_eq!(&encode_frame(OP_TEXT, b"hi")[..], b"\x81\x02hi");
        let f = encode_frame(OP_BINARY, &[7; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let f = encode_frame(OP_BINARY, &vec![0; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_010);
    }

    #[test]
    fn masked_frames_round_trip_through_the_header() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for n in [0, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let frame = encode_masked_frame(OP_BINARY, &payload, mask);
            let h = FrameHeader::parse(&frame).unwrap().unwrap();
            assert_eq!((h.fin, h.rsv, h.opcode), (true, 0, OP_BINARY));
            assert_eq!((h.mask, h.payload_len), (Some(mask), n as u64));
            let mut body = frame[h.len..].to_vec();
            apply_mask(&mut body, mask, 0);
            assert_eq!(body, payload, "length {n}");
            // Every proper prefix of the header is incomplete, never an error.
            for cut in 0..h.len {
                assert_eq!(FrameHeader::parse(&frame[..cut]), Ok(None));
            }
        }
        let h = FrameHeader::parse(&encode_frame(OP_PING, b""))
            .unwrap()
            .unwrap();
        assert_eq!((h.mask, h.len, h.opcode), (None, 2, OP_PING));
    }

    #[test]
    fn masking_agrees_with_the_bytewise_rule_at_every_offset_and_length() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = data.clone();
                apply_mask(&mut fast, mask, offset);
                let slow: Vec<u8> = data
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(offset + i) & 3])
                    .collect();
                assert_eq!(fast, slow, "length {len}, offset {offset}");
            }
        }
    }

    #[test]
    fn masked_deflated_frames_carry_rsv1() {
        let mask = [1, 2, 3, 4];
        let frame = encode_masked_deflated_frame(OP_TEXT, b"abc", mask);
        let h = FrameHeader::parse(&frame).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.rsv, h.opcode, h.mask),
            (true, 4, OP_TEXT, Some(mask))
        );
        let mut body = frame[h.len..].to_vec();
        apply_mask(&mut body, mask, 0);
        assert_eq!(body, b"abc");
        let mut buf = BytesMut::from(&b"xy"[..]);
        put_masked_frame(&mut buf, OP_BINARY, false, &[9; 200], mask);
        assert_eq!(&buf[..2], b"xy");
        let h = FrameHeader::parse(&buf[2..]).unwrap().unwrap();
        assert_eq!((h.rsv, h.opcode, h.payload_len), (0, OP_BINARY, 200));
    }

    #[test]
    fn header_bits() {
        let h = FrameHeader::parse(&[0x41, 0x00]).unwrap().unwrap();
        assert_eq!((h.fin, h.rsv, h.opcode), (false, 4, OP_TEXT));
        let mut bad = vec![0x82, 127];
        bad.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(FrameHeader::parse(&bad), Err(HeaderError::LengthHighBit));
    }
}
