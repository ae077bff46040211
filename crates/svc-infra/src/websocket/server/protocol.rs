//! RFC 6455 framing for the server side: frames we send are built once as `Bytes`
//! (unmasked, so identical for every recipient); frames we receive are parsed
//! incrementally from whatever the socket hands us, without a per-connection read buffer.

use bytes::{BufMut, Bytes, BytesMut};

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Builds one complete, unmasked frame (FIN set): header and payload in one allocation.
pub(crate) fn encode_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let header_len = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    let mut buf = BytesMut::with_capacity(header_len + len);
    buf.put_u8(0x80 | opcode);
    match len {
        0..=125 => buf.put_u8(len as u8),
        126..=65535 => {
            buf.put_u8(126);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(127);
            buf.put_u64(len as u64);
        }
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// A close frame with `code` and `reason` (the reason is cut to fit 123 bytes on a
/// character boundary).
pub(crate) fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OP_CLOSE, &payload)
}

/// Close codes a peer may send (RFC 6455 §7.4, IANA registry, and 3000–4999).
pub(crate) fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What the parser produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
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
pub(crate) struct Violation {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) a frame header.
    Header,
    /// Reading a payload of `remaining` bytes.
    Payload {
        opcode: u8,
        fin: bool,
        remaining: u64,
        mask: [u8; 4],
        mask_pos: usize,
    },
}

/// Incremental parser of client-to-server frames.
///
/// Holds at most a partial header (14 bytes, inline) between reads; payloads go straight
/// into the message being assembled, so an idle connection owns no buffer at all.
#[derive(Debug)]
pub(crate) struct FrameParser {
    state: State,
    header: [u8; 14],
    header_len: usize,
    /// The data message being assembled: opcode and payload so far.
    message: Option<(u8, BytesMut)>,
    /// How much of a text message is known to be valid UTF-8 (for fail-fast checks).
    utf8_checked: usize,
    control: BytesMut,
    max_message_size: usize,
}

impl FrameParser {
    pub(crate) fn new(max_message_size: usize) -> Self {
        Self {
            state: State::Header,
            header: [0; 14],
            header_len: 0,
            message: None,
            utf8_checked: 0,
            control: BytesMut::new(),
            max_message_size,
        }
    }

    /// Consumes bytes from `input` until one event is complete or the input runs out.
    /// Returns how many bytes were consumed and the event, if any.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Violation> {
        let mut pos = 0;
        loop {
            match &mut self.state {
                State::Header => {
                    // Gather the two fixed bytes, then the extended length and mask.
                    let need = header_size(&self.header[..self.header_len]);
                    if self.header_len < need {
                        let take = (need - self.header_len).min(input.len() - pos);
                        if take == 0 {
                            return Ok((pos, None));
                        }
                        self.header[self.header_len..self.header_len + take]
                            .copy_from_slice(&input[pos..pos + take]);
                        self.header_len += take;
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
                    for (i, b) in dest[start..].iter_mut().enumerate() {
                        *b ^= mask[(*mask_pos + i) & 3];
                    }
                    *mask_pos = (*mask_pos + take) & 3;
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
        let b0 = header[0];
        let b1 = header[1];
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(violation(1002, "reserved bits set without an extension"));
        }
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(violation(1002, "client frames must be masked"));
        }
        let (len, mask_at) = match b1 & 0x7F {
            126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
            127 => {
                let len = u64::from_be_bytes(header[2..10].try_into().unwrap_or_default());
                if len >> 63 != 0 {
                    return Err(violation(1002, "payload length has the high bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = [
            header[mask_at],
            header[mask_at + 1],
            header[mask_at + 2],
            header[mask_at + 3],
        ];
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
                self.message = Some((opcode, BytesMut::with_capacity(len as usize)));
                self.utf8_checked = 0;
            }
            OP_CONTINUATION => {
                let Some((_, buf)) = &mut self.message else {
                    return Err(violation(1002, "continuation frame without a message"));
                };
                let so_far = buf.len();
                self.check_size(so_far, len)?;
                if let Some((_, buf)) = &mut self.message {
                    buf.reserve(len as usize);
                }
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

    fn check_size(&self, so_far: usize, len: u64) -> Result<(), Violation> {
        if so_far as u64 + len > self.max_message_size as u64 {
            return Err(violation(1009, "message exceeds max_message_size"));
        }
        Ok(())
    }

    /// Checks the text message assembled so far; `complete` requires it to end on a
    /// character boundary. Invalid bytes fail as soon as they arrive (fail fast).
    fn check_utf8(&mut self, complete: bool) -> Result<(), Violation> {
        let Some((OP_TEXT, buf)) = &self.message else {
            return Ok(());
        };
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
                match payload.len() {
                    0 => Ok(Some(Event::Close(None))),
                    1 => Err(violation(1002, "close payload of one byte")),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        if !is_valid_close_code(code) {
                            return Err(violation(1002, "invalid close code"));
                        }
                        let reason = std::str::from_utf8(&payload[2..])
                            .map_err(|_| violation(1007, "close reason is not UTF-8"))?;
                        Ok(Some(Event::Close(Some((code, reason.to_owned())))))
                    }
                }
            }
            _ if fin => {
                let Some((kind, buf)) = self.message.take() else {
                    return Err(violation(1011, "internal parser state"));
                };
                let bytes = buf.freeze();
                Ok(Some(if kind == OP_TEXT {
                    Event::Text(bytes)
                } else {
                    Event::Binary(bytes)
                }))
            }
            _ => Ok(None),
        }
    }

    /// Whether a frame or message is partly received (the peer is mid-message).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.header_len == 0 && self.message.is_none()
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x08 != 0
}

/// Header length implied by the bytes seen so far (2 until the length byte is known).
fn header_size(seen: &[u8]) -> usize {
    if seen.len() < 2 {
        return 2;
    }
    let mask = if seen[1] & 0x80 != 0 { 4 } else { 0 };
    match seen[1] & 0x7F {
        126 => 4 + mask,
        127 => 10 + mask,
        _ => 2 + mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn parse_all(p: &mut FrameParser, mut input: &[u8]) -> Result<Vec<Event>, Violation> {
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
    fn encodes_all_length_forms() {
        assert_eq!(&encode_frame(OP_TEXT, b"hi")[..], b"\x81\x02hi");
        let f = encode_frame(OP_BINARY, &[7; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let f = encode_frame(OP_BINARY, &vec![0; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_010);
        let c = encode_close(4001, "bye");
        assert_eq!(&c[..], b"\x88\x05\x0f\xa1bye");
        let long = "é".repeat(100);
        assert!(encode_close(1000, &long).len() <= 127);
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
        let mut p = FrameParser::new(1 << 20);
        assert_eq!(parse_all(&mut p, &wire).unwrap(), want);
        assert!(p.is_idle());
        for chunk in [1, 2, 3, 7, 13, 4096] {
            let mut p = FrameParser::new(1 << 20);
            let mut got = vec![];
            for piece in wire.chunks(chunk) {
                got.extend(parse_all(&mut p, piece).unwrap());
            }
            assert_eq!(got, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn close_frames() {
        let mut p = FrameParser::new(100);
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
            let mut p = FrameParser::new(100);
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
            let mut p = FrameParser::new(100);
            let err = parse_all(&mut p, &wire).unwrap_err();
            assert_eq!(err.code, code, "{wire:?}");
        }
        let mut p = FrameParser::new(100);
        let mut wire = client_frame(false, OP_TEXT, b"a");
        wire.extend(client_frame(true, OP_TEXT, b"b"));
        assert_eq!(parse_all(&mut p, &wire).unwrap_err().code, 1002);
    }

    #[test]
    fn invalid_utf8_fails_fast_before_the_message_ends() {
        let mut p = FrameParser::new(1000);
        let first = client_frame(false, OP_TEXT, &[b'a', 0xff]);
        assert_eq!(parse_all(&mut p, &first).unwrap_err().code, 1007);
        // A character split across fragments is fine.
        let mut p = FrameParser::new(1000);
        let mut wire = client_frame(false, OP_TEXT, &[0xc3]);
        wire.extend(client_frame(true, OP_CONTINUATION, &[0xa9]));
        assert_eq!(
            parse_all(&mut p, &wire).unwrap(),
            vec![Event::Text(Bytes::from("é"))]
        );
    }

    #[test]
    fn fragmented_size_limit_counts_all_fragments() {
        let mut p = FrameParser::new(10);
        let mut wire = client_frame(false, OP_BINARY, &[0; 6]);
        wire.extend(client_frame(true, OP_CONTINUATION, &[0; 6]));
        assert_eq!(parse_all(&mut p, &wire).unwrap_err().code, 1009);
    }
}
