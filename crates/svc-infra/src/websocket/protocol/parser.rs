//! The read path of both roles: an incremental parser of WebSocket frames, fed whatever
//! the socket hands it, without a per-connection read buffer. A server reads masked client
//! frames with it ([`FrameParser::new`]), a client unmasked server frames
//! ([`FrameParser::client`]); every other rule (limits, UTF-8, control frames,
//! permessage-deflate) is the same code for both.

use bytes::{Bytes, BytesMut};

use super::{
    FrameHeader, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, apply_mask,
    deflate::{self, DeflateParams, InflateError, Inflater},
    is_control, parse_close,
};

/// What the parser produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete text message (validated UTF-8).
    Text(Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame: `None` when it carried no status code.
    Close(Option<(u16, String)>),
}

/// Why the parser gave up; the connection must be closed with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The close code to fail the connection with (1002, 1007 or 1009).
    pub code: u16,
    /// The close reason.
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

const TOO_LARGE: Violation = violation(1009, "message exceeds max_message_size");

#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) a frame header.
    Header,
    /// Reading a payload of `remaining` bytes (masked with `mask` in the server's role).
    Payload {
        opcode: u8,
        fin: bool,
        remaining: u64,
        mask: [u8; 4],
        /// Offset into the mask of the next payload byte (0 to 3).
        mask_pos: u8,
    },
}

/// Incremental parser of WebSocket frames, in the server's role (`CLIENT = false`: masked
/// client frames) or the client's (`CLIENT = true`: unmasked server frames). The role is a
/// constant, so that the server's read path pays nothing for the client's.
///
/// Holds at most a partial header (14 bytes, inline) between reads; payloads go straight
/// into the message being assembled, so an idle connection owns no buffer at all.
#[derive(Debug)]
pub struct FrameParser<const CLIENT: bool = false> {
    state: State,
    header: [u8; 14],
    header_len: u8,
    /// The data message being assembled: opcode and payload so far.
    message: Option<(u8, BytesMut)>,
    /// permessage-deflate was negotiated: a message may arrive compressed.
    deflate: bool,
    /// What only some parsers keep (a client's, and a server's whose peer keeps its
    /// compression context); `None` in the others, which pay one pointer for it (every
    /// idle server connection holds a parser: its size is per-connection memory).
    extra: Option<Box<Extra>>,
    /// The message being assembled is compressed (RSV1 on its first frame).
    compressed: bool,
    /// How much of a text message is known to be valid UTF-8 (for fail-fast checks).
    utf8_checked: usize,
    control: BytesMut,
    max_message_size: usize,
}

/// The part of a parser only some need: a client's, and a server's in
/// [`Compression::Dedicated`](crate::websocket::Compression::Dedicated) mode whose peer keeps
/// its compression context.
#[derive(Debug, Default)]
struct Extra {
    /// The peer keeps its compressor's window between messages, of this many bits: so must
    /// this connection's own inflater. 0: the peer resets it after each message, and this
    /// thread's shared inflater serves.
    context_bits: u8,
    /// The connection's own inflater (with `context_bits`), allocated on the first
    /// compressed message.
    inflater: Option<Inflater>,
    /// After a 1009 violation: the message's size as far as it is known.
    too_large: u64,
}

impl FrameParser {
    /// A server's parser (of masked client frames) that refuses messages over
    /// `max_message_size` bytes (close code 1009). `deflate`: the permessage-deflate
    /// parameters agreed on, if any; messages may then arrive compressed (their inflated
    /// size counts against the limit). With `client_no_context_takeover` (the default
    /// "shared" mode) this thread's shared inflater serves; otherwise the connection
    /// inflates with its own window of `client_max_window_bits`, allocated on the first
    /// compressed message.
    pub fn new(max_message_size: usize, deflate: Option<DeflateParams>) -> Self {
        let extra = match deflate {
            Some(p) if !p.client_no_context_takeover => Some(Box::new(Extra {
                context_bits: p.client_max_window_bits.max(1),
                ..Extra::default()
            })),
            _ => None,
        };
        Self::with_deflate(max_message_size, deflate.is_some(), extra)
    }
}

impl FrameParser<true> {
    /// A client's parser (of unmasked server frames) that refuses messages over
    /// `max_message_size` bytes (close code 1009). `deflate`: the permessage-deflate
    /// parameters agreed on, if any. With `server_no_context_takeover` (what our server
    /// always answers) this thread's shared inflater serves; otherwise the connection
    /// inflates with its own window of `server_max_window_bits`, allocated on the first
    /// compressed message.
    pub fn client(max_message_size: usize, deflate: Option<DeflateParams>) -> Self {
        let context_bits = match deflate {
            Some(p) if !p.server_no_context_takeover => p.server_max_window_bits.max(1),
            _ => 0,
        };
        let extra = Extra {
            context_bits,
            ..Extra::default()
        };
        Self::with_deflate(max_message_size, deflate.is_some(), Some(Box::new(extra)))
    }
}

impl<const CLIENT: bool> FrameParser<CLIENT> {
    fn with_deflate(max_message_size: usize, deflate: bool, extra: Option<Box<Extra>>) -> Self {
        Self {
            state: State::Header,
            header: [0; 14],
            header_len: 0,
            message: None,
            deflate,
            extra,
            compressed: false,
            utf8_checked: 0,
            control: BytesMut::new(),
            max_message_size,
        }
    }

    /// Consumes bytes from `input` until one event is complete or the input runs out.
    /// Returns how many bytes were consumed and the event, if any: without an event, all of
    /// `input` was consumed. After a violation the parser must not be fed again.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Violation> {
        let mut pos = 0;
        loop {
            match &mut self.state {
                State::Header => {
                    // Gather the two fixed bytes, then the extended length and mask.
                    let have = usize::from(self.header_len);
                    let need = FrameHeader::needed(&self.header[..have]);
                    if have < need {
                        let take = (need - have).min(input.len() - pos);
                        if take == 0 {
                            return Ok((pos, None));
                        }
                        self.header[have..have + take].copy_from_slice(&input[pos..pos + take]);
                        // At most 14: a header's length.
                        self.header_len += take as u8;
                        pos += take;
                        continue;
                    }
                    let header = self.header;
                    self.header_len = 0;
                    if let Some(event) = self.start_frame(&header)? {
                        return Ok((pos, Some(event)));
                    }
                }
                State::Payload {
                    opcode,
                    fin,
                    remaining,
                    mask,
                    mask_pos,
                } => {
                    let take = (*remaining).min((input.len() - pos) as u64) as usize;
                    let chunk = &input[pos..pos + take];
                    let dest = if is_control(*opcode) {
                        &mut self.control
                    } else {
                        match &mut self.message {
                            Some((_, buf)) => buf,
                            None => return Err(violation(1011, "internal parser state")),
                        }
                    };
                    let start = dest.len();
                    dest.extend_from_slice(chunk);
                    if !CLIENT {
                        apply_mask(&mut dest[start..], *mask, usize::from(*mask_pos));
                        *mask_pos = ((usize::from(*mask_pos) + take) & 3) as u8;
                    }
                    *remaining -= take as u64;
                    pos += take;
                    let (opcode, fin, done) = (*opcode, *fin, *remaining == 0);
                    if !is_control(opcode) {
                        self.check_utf8(done && fin)?;
                    }
                    if done {
                        self.state = State::Header;
                        if let Some(event) = self.finish_frame(opcode, fin)? {
                            return Ok((pos, Some(event)));
                        }
                    } else if pos == input.len() {
                        return Ok((pos, None));
                    }
                }
            }
        }
    }

    /// Validates a complete header and sets up the payload state. Returns an event for
    /// empty-payload frames that complete immediately.
    fn start_frame(&mut self, header: &[u8; 14]) -> Result<Option<Event>, Violation> {
        let parsed = match FrameHeader::parse(header) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(violation(1011, "internal parser state")),
            Err(e) => return Err(violation(1002, e.reason())),
        };
        let FrameHeader {
            fin,
            opcode,
            payload_len: len,
            ..
        } = parsed;
        // RSV1 (0b100) marks a compressed message, on its first frame only (RFC 7692 §6).
        let rsv1 = parsed.rsv == 0b100;
        if parsed.rsv != 0 && !(rsv1 && self.deflate) {
            return Err(violation(1002, "reserved bits set without an extension"));
        }
        if rsv1 && !matches!(opcode, OP_TEXT | OP_BINARY) {
            return Err(violation(
                1002,
                "RSV1 set on a control or continuation frame",
            ));
        }
        let mask = match parsed.mask {
            Some(mask) if !CLIENT => mask,
            None if CLIENT => [0; 4],
            None => return Err(violation(1002, "client frames must be masked")),
            Some(_) => return Err(violation(1002, "server frames must not be masked")),
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(violation(1002, "fragmented control frame"));
                }
                if len > 125 {
                    return Err(violation(1002, "control frame payload over 125 bytes"));
                }
                self.control.clear();
            }
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(violation(1002, "new message before the last one finished"));
                }
                self.check_size(0, len)?;
                // Memory follows the bytes that arrive, never the length a header
                // announces: the buffer grows as the payload is read.
                self.message = Some((opcode, BytesMut::new()));
                self.utf8_checked = 0;
                self.compressed = rsv1;
            }
            OP_CONTINUATION => {
                let Some((_, buf)) = &mut self.message else {
                    return Err(violation(1002, "continuation frame without a message"));
                };
                let so_far = buf.len();
                self.check_size(so_far, len)?;
            }
            _ => return Err(violation(1002, "reserved opcode")),
        }
        self.state = State::Payload {
            opcode,
            fin,
            remaining: len,
            mask,
            mask_pos: 0,
        };
        if len == 0 {
            self.state = State::Header;
            if !is_control(opcode) {
                self.check_utf8(fin)?;
            }
            return self.finish_frame(opcode, fin);
        }
        Ok(None)
    }

    fn check_size(&mut self, so_far: usize, len: u64) -> Result<(), Violation> {
        let size = (so_far as u64).saturating_add(len);
        if size > self.max_message_size as u64 {
            if let Some(extra) = &mut self.extra {
                extra.too_large = size;
            }
            return Err(TOO_LARGE);
        }
        Ok(())
    }

    /// Checks the text message assembled so far; `complete` requires it to end on a
    /// character boundary. Invalid bytes fail as soon as they arrive (fail fast).
    fn check_utf8(&mut self, complete: bool) -> Result<(), Violation> {
        let Some((OP_TEXT, buf)) = &self.message else {
            return Ok(());
        };
        if self.compressed {
            // Checked once inflated.
            return Ok(());
        }
        match std::str::from_utf8(&buf[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = buf.len(),
            Err(e) if e.error_len().is_some() => {
                return Err(violation(1007, "invalid UTF-8 in a text message"));
            }
            Err(e) => {
                self.utf8_checked += e.valid_up_to();
                if complete {
                    return Err(violation(1007, "text message ends inside a character"));
                }
            }
        }
        Ok(())
    }

    fn finish_frame(&mut self, opcode: u8, fin: bool) -> Result<Option<Event>, Violation> {
        match opcode {
            OP_PING => Ok(Some(Event::Ping(self.control.split().freeze()))),
            OP_PONG => Ok(Some(Event::Pong(self.control.split().freeze()))),
            OP_CLOSE => {
                let payload = self.control.split();
                let close = parse_close(&payload).map_err(|e| violation(e.code(), e.reason()))?;
                Ok(Some(Event::Close(
                    close.map(|(code, reason)| (code, reason.to_owned())),
                )))
            }
            _ if fin => {
                let Some((kind, buf)) = self.message.take() else {
                    return Err(violation(1011, "internal parser state"));
                };
                let bytes = if std::mem::take(&mut self.compressed) {
                    self.inflate(kind, buf)?
                } else {
                    buf.freeze()
                };
                Ok(Some(if kind == OP_TEXT {
                    Event::Text(bytes)
                } else {
                    Event::Binary(bytes)
                }))
            }
            _ => Ok(None),
        }
    }

    /// Inflates a compressed message (a data message of opcode `kind`) and checks the text
    /// of a text message. Out of line: the path of plain messages stays small.
    #[inline(never)]
    fn inflate(&mut self, kind: u8, mut buf: BytesMut) -> Result<Bytes, Violation> {
        let max = self.max_message_size;
        let inflated = match &mut self.extra {
            Some(extra) if extra.context_bits != 0 => {
                let bits = extra.context_bits;
                extra
                    .inflater
                    .get_or_insert_with(|| Inflater::new(bits, false))
                    .inflate(&mut buf, max)
            }
            _ => deflate::inflate_shared(&mut buf, max),
        }
        .map_err(|e| match e {
            InflateError::TooLarge => {
                if let Some(extra) = &mut self.extra {
                    extra.too_large = max as u64 + 1;
                }
                TOO_LARGE
            }
            InflateError::Invalid => violation(1007, "invalid permessage-deflate data"),
        })?;
        if kind == OP_TEXT && std::str::from_utf8(&inflated).is_err() {
            return Err(violation(1007, "invalid UTF-8 in a text message"));
        }
        Ok(inflated)
    }

    /// After a violation with code 1009: the size of the message that was too large, as far
    /// as it is known (the length its frames announced so far, or the limit plus one when
    /// its inflated output outgrew the limit).
    pub fn too_large_size(&self) -> u64 {
        self.extra.as_ref().map_or(0, |c| c.too_large)
    }

    /// Whether no frame or message is partly received (the peer is between messages).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.header_len == 0 && self.message.is_none()
    }

    /// The bytes of heap memory the parser holds now: the capacity of the message being
    /// assembled and of the control frame buffer (the partial header is inline).
    pub fn held_bytes(&self) -> usize {
        self.message.as_ref().map_or(0, |(_, buf)| buf.capacity()) + self.control.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server negotiates by default: no context takeover either way.
    const SHARED: DeflateParams = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };

    /// A masked client frame (FIN as given).
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = crate::websocket::protocol::encode_masked_frame(
            opcode,
            payload,
            [0x37, 0xfa, 0x21, 0x3d],
        )
        .to_vec();
        if !fin {
            frame[0] &= 0x7F;
        }
        frame
    }

    fn parse_all<const C: bool>(
        p: &mut FrameParser<C>,
        mut input: &[u8],
    ) -> Result<Vec<Event>, Violation> {
        let mut events = vec![];
        while !input.is_empty() {
            let (n, ev) = p.feed(input)?;
            input = &input[n..];
            events.extend(ev);
            if n == 0 && input.is_empty() {
                break;
            }
        }
        Ok(events)
    }

    #[test]
    fn parses_messages_split_at_every_byte() {
        let mut wire = client_frame(true, OP_TEXT, "héllo".as_bytes());
        wire.extend(client_frame(false, OP_BINARY, &[1, 2]));
        wire.extend(client_frame(true, OP_PING, b"p"));
        wire.extend(client_frame(true, OP_CONTINUATION, &[3]));
        wire.extend(client_frame(true, OP_BINARY, &vec![9; 70_000]));
        let want = vec![
            Event::Text(Bytes::from("héllo")),
            Event::Ping(Bytes::from_static(b"p")),
            Event::Binary(Bytes::from_static(&[1, 2, 3])),
            Event::Binary(Bytes::from(vec![9; 70_000])),
        ];
        let mut p = FrameParser::new(1 << 20, None);
        assert_eq!(parse_all(&mut p, &wire).unwrap(), want);
        assert!(p.is_idle());
        for chunk in [1, 2, 3, 7, 13, 4096] {
            let mut p = FrameParser::new(1 << 20, None);
            let mut got = vec![];
            for piece in wire.chunks(chunk) {
                got.extend(parse_all(&mut p, piece).unwrap());
            }
            assert_eq!(got, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn close_frames() {
        let mut p = FrameParser::new(100, None);
        let mut payload = 4001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        assert_eq!(
            parse_all(&mut p, &client_frame(true, OP_CLOSE, &payload)).unwrap(),
            vec![Event::Close(Some((4001, "bye".into())))]
        );
        assert_eq!(
            parse_all(&mut p, &client_frame(true, OP_CLOSE, b"")).unwrap(),
            vec![Event::Close(None)]
        );
        for bad in [
            &[3u8, 0xec][..], // 1004 is reserved
            &[0x03],
            &[0x03, 0xed],
            &[0x03, 0xe8, 0xff],
        ] {
            let mut p = FrameParser::new(100, None);
            assert!(parse_all(&mut p, &client_frame(true, OP_CLOSE, bad)).is_err());
        }
    }

    #[test]
    fn violations() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x00], 1002),                          // unmasked
            (vec![0xC1, 0x80, 0, 0, 0, 0], 1002),              // RSV1
            (vec![0x83, 0x80, 0, 0, 0, 0], 1002),              // reserved opcode
            (client_frame(false, OP_PING, b""), 1002),         // fragmented control
            (client_frame(true, OP_PING, &[0; 126]), 1002),    // big control
            (client_frame(true, OP_CONTINUATION, b"x"), 1002), // nothing to continue
            (client_frame(true, OP_TEXT, &[0xff]), 1007),
            (client_frame(true, OP_TEXT, &[0xc3]), 1007), // ends inside a character
            (client_frame(true, OP_BINARY, &[0; 101]), 1009),
        ];
        for (wire, code) in cases {
            let mut p = FrameParser::new(100, None);
            let err = parse_all(&mut p, &wire).unwrap_err();
            assert_eq!(err.code, code, "{wire:?}");
        }
        let mut p = FrameParser::new(100, None);
        let mut wire = client_frame(false, OP_TEXT, b"a");
        wire.extend(client_frame(true, OP_TEXT, b"b"));
        assert_eq!(parse_all(&mut p, &wire).unwrap_err().code, 1002);
    }

    #[test]
    fn invalid_utf8_fails_fast_before_the_message_ends() {
        let mut p = FrameParser::new(1000, None);
        let first = client_frame(false, OP_TEXT, &[b'a', 0xff]);
        assert_eq!(parse_all(&mut p, &first).unwrap_err().code, 1007);
        // A character split across fragments is fine.
        let mut p = FrameParser::new(1000, None);
        let mut wire = client_frame(false, OP_TEXT, &[0xc3]);
        wire.extend(client_frame(true, OP_CONTINUATION, &[0xa9]));
        assert_eq!(
            parse_all(&mut p, &wire).unwrap(),
            vec![Event::Text(Bytes::from("é"))]
        );
    }

    #[test]
    fn memory_follows_the_bytes_that_arrived_not_the_announced_length() {
        // A header announcing 1 MiB, then one byte of payload: the message buffer holds
        // what arrived, not what was announced.
        let mut p = FrameParser::new(1 << 20, None);
        let frame = client_frame(true, OP_BINARY, &vec![7; 1 << 20]);
        let header_len = FrameHeader::parse(&frame).unwrap().unwrap().len;
        assert_eq!(parse_all(&mut p, &frame[..header_len + 1]).unwrap(), vec![]);
        let held = p.message.as_ref().map(|(_, buf)| buf.capacity());
        assert!(held.is_some_and(|c| c < 1024), "{held:?}");
        // The rest completes the message as before.
        let rest = parse_all(&mut p, &frame[header_len + 1..]).unwrap();
        assert_eq!(rest, vec![Event::Binary(Bytes::from(vec![7; 1 << 20]))]);
    }

    /// `payload` deflated (without the final `00 00 ff ff`), as a client without context
    /// takeover sends it.
    fn deflated(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(deflate::Deflater::new(15, true).compress(payload, &mut out));
        out
    }

    /// A client frame with RSV1 set.
    fn rsv1(mut frame: Vec<u8>) -> Vec<u8> {
        frame[0] |= 0x40;
        frame
    }

    #[test]
    fn compressed_messages_are_inflated_whole_or_fragmented() {
        let text = "a text message a text message a text message ".repeat(40);
        let packed = deflated(text.as_bytes());
        // One frame; then the same in three fragments, RSV1 on the first only, with a ping
        // between them; then a plain message: each message says for itself.
        let mut wire = rsv1(client_frame(true, OP_TEXT, &packed));
        let (a, rest) = packed.split_at(packed.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        wire.extend(rsv1(client_frame(false, OP_TEXT, a)));
        wire.extend(client_frame(false, OP_CONTINUATION, b));
        wire.extend(client_frame(true, OP_PING, b"p"));
        wire.extend(client_frame(true, OP_CONTINUATION, c));
        wire.extend(client_frame(true, OP_BINARY, b"plain"));
        let want = vec![
            Event::Text(Bytes::from(text.clone())),
            Event::Ping(Bytes::from_static(b"p")),
            Event::Text(Bytes::from(text.clone())),
            Event::Binary(Bytes::from_static(b"plain")),
        ];
        for chunk in [1, 5, 4096] {
            let mut p = FrameParser::new(1 << 20, Some(SHARED));
            let mut got = vec![];
            for piece in wire.chunks(chunk) {
                got.extend(parse_all(&mut p, piece).unwrap());
            }
            assert_eq!(got, want, "chunk size {chunk}");
            assert!(p.is_idle());
        }
    }

    #[test]
    fn compression_violations() {
        let packed = deflated(&[b'x'; 500]);
        let bomb = deflated(&vec![0; 1 << 20]);
        let mut continuation = rsv1(client_frame(false, OP_TEXT, &packed[..2]));
        continuation.extend(rsv1(client_frame(true, OP_CONTINUATION, &packed[2..])));
        let cases: Vec<(bool, Vec<u8>, u16)> = vec![
            // RSV1 without the extension negotiated.
            (false, rsv1(client_frame(true, OP_TEXT, &packed)), 1002),
            // On a control frame, on a continuation.
            (true, rsv1(client_frame(true, OP_PING, b"")), 1002),
            (true, continuation, 1002),
            // RSV2 or RSV3 even with it.
            (true, vec![0xA1, 0x80, 0, 0, 0, 0], 1002),
            // Not deflate data; deflated text that is not UTF-8.
            (true, rsv1(client_frame(true, OP_BINARY, &[0xff; 8])), 1007),
            (
                true,
                rsv1(client_frame(true, OP_TEXT, &deflated(&[0xff; 300]))),
                1007,
            ),
            // 1 MiB of zeros in about 1 KiB: over a 64 KiB limit once inflated.
            (true, rsv1(client_frame(true, OP_BINARY, &bomb)), 1009),
        ];
        for (deflate, wire, code) in cases {
            let mut p = FrameParser::new(64 * 1024, deflate.then_some(SHARED));
            let err = parse_all(&mut p, &wire).unwrap_err();
            assert_eq!(err.code, code, "{wire:?}");
        }
    }

    /// An unmasked server frame (FIN as given, RSV1 if `compressed`).
    fn server_frame(fin: bool, compressed: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = crate::websocket::protocol::encode_frame(opcode, payload).to_vec();
        if !fin {
            frame[0] &= 0x7F;
        }
        if compressed {
            frame[0] |= 0x40;
        }
        frame
    }

    fn params(server_no_context_takeover: bool, server_max_window_bits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover,
            client_no_context_takeover: false,
            server_max_window_bits,
            client_max_window_bits: 15,
        }
    }

    #[test]
    fn the_client_role_reads_unmasked_frames_and_refuses_masked_ones() {
        let mut wire = server_frame(true, false, OP_TEXT, "héllo".as_bytes());
        wire.extend(server_frame(false, false, OP_BINARY, &[1, 2]));
        wire.extend(server_frame(true, false, OP_PING, b"p"));
        wire.extend(server_frame(true, false, OP_CONTINUATION, &[3]));
        wire.extend(server_frame(
            true,
            false,
            OP_CLOSE,
            &[0x03, 0xe8, b'o', b'k'],
        ));
        let want = vec![
            Event::Text(Bytes::from("héllo")),
            Event::Ping(Bytes::from_static(b"p")),
            Event::Binary(Bytes::from_static(&[1, 2, 3])),
            Event::Close(Some((1000, "ok".into()))),
        ];
        for chunk in [1, 2, 5, 4096] {
            let mut p = FrameParser::client(1 << 20, None);
            let mut got = vec![];
            for piece in wire.chunks(chunk) {
                got.extend(parse_all(&mut p, piece).unwrap());
            }
            assert_eq!(got, want, "chunk size {chunk}");
        }
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(true, OP_TEXT, b"masked"), 1002),
            (server_frame(true, true, OP_TEXT, b"x"), 1002), // RSV1 without deflate
            (server_frame(false, false, OP_PING, b""), 1002),
            (server_frame(true, false, OP_TEXT, &[0xff]), 1007),
            (server_frame(true, false, OP_BINARY, &[0; 101]), 1009),
        ];
        for (wire, code) in cases {
            let mut p = FrameParser::client(100, None);
            let err = parse_all(&mut p, &wire).unwrap_err();
            assert_eq!(err.code, code, "{wire:?}");
        }
        // A too-big message reports the size its header announced.
        let mut p = FrameParser::client(100, None);
        let err = parse_all(&mut p, &server_frame(true, false, OP_BINARY, &[0; 101])).unwrap_err();
        assert_eq!((err.code, p.too_large_size()), (1009, 101));
    }

    #[test]
    fn a_client_inflates_with_the_servers_context_when_it_keeps_one() {
        let message = "a message that repeats itself, a message that repeats itself ".repeat(8);
        let mut deflater = deflate::Deflater::new(10, false);
        let mut wire = Vec::new();
        let mut sizes = Vec::new();
        for _ in 0..4 {
            let mut packed = Vec::new();
            assert!(deflater.compress(message.as_bytes(), &mut packed));
            sizes.push(packed.len());
            wire.extend(server_frame(true, true, OP_TEXT, &packed));
        }
        // Later messages refer back to earlier ones.
        assert!(sizes[1] < sizes[0], "{sizes:?}");
        let mut p = FrameParser::client(1 << 20, Some(params(false, 10)));
        assert!(p.is_idle());
        let got = parse_all(&mut p, &wire).unwrap();
        let want: Vec<Event> = (0..4)
            .map(|_| Event::Text(Bytes::from(message.clone())))
            .collect();
        assert_eq!(got, want);
        // The shared inflater (reset per message) cannot read them.
        let mut p = FrameParser::client(1 << 20, Some(params(true, 10)));
        assert!(parse_all(&mut p, &wire).is_err());
    }

    #[test]
    fn a_client_stops_a_decompression_bomb_at_the_limit() {
        let bomb = deflated(&vec![0; 1 << 20]);
        for no_context in [true, false] {
            let mut p = FrameParser::client(64 * 1024, Some(params(no_context, 15)));
            let err = parse_all(&mut p, &server_frame(true, true, OP_BINARY, &bomb)).unwrap_err();
            assert_eq!((err.code, p.too_large_size()), (1009, 64 * 1024 + 1));
        }
    }

    #[test]
    fn fragmented_size_limit_counts_all_fragments() {
        let mut p = FrameParser::new(10, None);
        let mut wire = client_frame(false, OP_BINARY, &[0; 6]);
        wire.extend(client_frame(true, OP_CONTINUATION, &[0; 6]));
        assert_eq!(parse_all(&mut p, &wire).unwrap_err().code, 1009);
    }
}
