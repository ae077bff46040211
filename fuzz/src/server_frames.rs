//! `server_frames`: the server's incremental frame parser (`FrameParser`, what every
//! server socket reads client frames with), fed a byte stream cut at the points the input
//! chooses.
//!
//! Input: one byte of settings (bits 0–2 pick `max_message_size` from [`MAX_SIZES`]; bit 6
//! negotiates permessage-deflate, so that RSV1 marks a compressed message, and bit 5 lets
//! the client keep its compression context, as `WS_COMPRESSION=dedicated` does; bit 7 asks for
//! structured mode), the cutting instructions of [`crate::split`], then the
//! stream. In raw mode the stream is the rest of the input as is. In structured mode the
//! rest is a list of frame descriptions ([`frames`]) that become masked client frames, and
//! the events are also compared with what RFC 6455 says they must be ([`model`]).
//!
//! Properties (a violation panics):
//! - the events and the violation are the same whether the stream arrives whole or cut;
//! - `feed` consumes all of its input or returns an event (the socket's read loop relies on
//!   it), and an empty input gives nothing;
//! - a violation ends the stream (nothing is fed after it, as in the socket) and its code is
//!   1002, 1007 or 1009 (never 1011, "internal parser state");
//! - memory follows the bytes received: what the parser holds is at most twice the bytes
//!   received since it was last between messages, plus [`SLACK`], whatever length a header
//!   announces;
//! - every text message is valid UTF-8, every data message at most `max_message_size`,
//!   every control payload at most 125 bytes, every close code one that may be sent and
//!   its reason at most 123 bytes;
//! - in structured mode without permessage-deflate, the events and the violation's code are
//!   the model's (with it, a frame with RSV1 is a compressed message the model does not
//!   inflate).

use bytes::Bytes;
use svc_infra::{
    fuzzing::{DeflateParams, Event, FrameParser, Violation},
    websocket::protocol::{encode_frame, encode_masked_frame},
};

use crate::split;

/// The `max_message_size` values a run can pick.
pub const MAX_SIZES: [usize; 8] = [0, 1, 16, 125, 126, 1000, 65_536, 1 << 20];

/// What the parser may hold beyond twice the bytes of the message being received: the
/// control frame buffer and a vector's smallest allocation.
pub const SLACK: usize = 512;

/// The mask of every structured frame.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// What a stream produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The events, in order.
    pub events: Vec<Event>,
    /// The violation that ended the stream, if any.
    pub violation: Option<Violation>,
}

/// Runs one input; panics only if a property is violated. Returns how many events the
/// stream produced (how deep the input reached).
pub fn run(data: &[u8]) -> usize {
    let Some((&settings, rest)) = data.split_first() else {
        return 0;
    };
    let max = MAX_SIZES[usize::from(settings & 7)];
    let deflate = (settings & 0x40 != 0).then_some(DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: settings & 0x20 == 0,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    });
    let (sizes, body) = split::sizes(rest);
    let (stream, expected) = if settings & 0x80 != 0 {
        let frames = frames(body);
        let stream: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        (stream, deflate.is_none().then(|| model(&frames, max)))
    } else {
        (body.to_vec(), None)
    };

    let whole = feed(&[&stream], max, deflate);
    let cut = feed(&split::cut(&stream, &sizes), max, deflate);
    assert_eq!(whole, cut, "cutting the stream changed the outcome");
    if let Some((events, code)) = expected {
        assert_eq!(whole.events, events, "events differ from the model");
        assert_eq!(
            whole.violation.as_ref().map(|v| v.code),
            code,
            "violation differs from the model: {:?}",
            whole.violation
        );
    }
    whole.events.len()
}

/// Feeds `chunks` in order to a new parser, as the server's socket does, checking every
/// step; `deflate`: the permessage-deflate parameters, if negotiated.
pub fn feed(chunks: &[&[u8]], max: usize, deflate: Option<DeflateParams>) -> Outcome {
    let mut parser = FrameParser::new(max, deflate);
    let mut events = Vec::new();
    let mut since_idle = 0usize;
    for chunk in chunks {
        let mut rest = *chunk;
        while !rest.is_empty() {
            match parser.feed(rest) {
                Ok((n, event)) => {
                    assert!(n <= rest.len(), "consumed {n} of {} bytes", rest.len());
                    assert!(
                        event.is_some() || n == rest.len(),
                        "no event, yet {} of {} bytes left unconsumed",
                        rest.len() - n,
                        rest.len()
                    );
                    rest = &rest[n..];
                    since_idle += n;
                    let held = parser.held_bytes();
                    assert!(
                        held <= 2 * since_idle + SLACK,
                        "holds {held} bytes after {since_idle} bytes of the message"
                    );
                    if let Some(event) = event {
                        check_event(&event, max);
                        events.push(event);
                    }
                    if parser.is_idle() {
                        since_idle = 0;
                    }
                }
                Err(violation) => {
                    assert!(
                        matches!(violation.code, 1002 | 1007 | 1009),
                        "unexpected violation {violation:?}"
                    );
                    return Outcome {
                        events,
                        violation: Some(violation),
                    };
                }
            }
        }
    }
    assert_eq!(
        parser.feed(&[]),
        Ok((0, None)),
        "an empty input produced something"
    );
    Outcome {
        events,
        violation: None,
    }
}

fn check_event(event: &Event, max: usize) {
    match event {
        Event::Text(t) => {
            assert!(t.len() <= max, "text of {} bytes over {max}", t.len());
            assert!(std::str::from_utf8(t).is_ok(), "text is not UTF-8");
        }
        Event::Binary(b) => assert!(b.len() <= max, "binary of {} bytes over {max}", b.len()),
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125, "control of {}", p.len()),
        Event::Close(Some((code, reason))) => {
            assert!(sendable_close_code(*code), "close code {code}");
            assert!(
                reason.len() <= 123,
                "close reason of {} bytes",
                reason.len()
            );
        }
        Event::Close(None) => {}
    }
}

/// RFC 6455 §7.4 and the IANA registry, written out again here rather than taken from the
/// crate: 1000–1003, 1007–1014, 3000–4999.
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// One frame of a structured input.
#[derive(Debug, Clone)]
pub struct Frame {
    /// FIN.
    pub fin: bool,
    /// The reserved bits (RSV1–3 in the low bits).
    pub rsv: u8,
    /// The opcode (any of the 16).
    pub opcode: u8,
    /// Masked, as a client's frame must be.
    pub masked: bool,
    /// The payload (unmasked).
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut wire = if self.masked {
            encode_masked_frame(self.opcode, &self.payload, MASK).to_vec()
        } else {
            encode_frame(self.opcode, &self.payload).to_vec()
        };
        if !self.fin {
            wire[0] &= 0x7F;
        }
        wire[0] |= (self.rsv & 7) << 4;
        wire
    }
}

/// The opcodes a frame description picks from: mostly valid ones, two reserved.
const OPCODES: [u8; 8] = [0x1, 0x2, 0x0, 0x9, 0xA, 0x8, 0x3, 0xB];

/// Reads frame descriptions until `bytes` runs out: a flags byte (bits 0–2: opcode from
/// [`OPCODES`]; bit 3: not FIN; bits 4–6: all set for RSV1, `110` for an unmasked frame),
/// a length byte (`0..=0xEF`: its low 7 bits; `0xF0..=0xFD`: 126 to 646 in steps of 40;
/// `0xFE`: 70 000; `0xFF`: 65 535), then that many payload bytes (padded with `a`).
pub fn frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut total = 0usize;
    while let [flags, len, rest @ ..] = bytes {
        let len = match *len {
            l @ 0..=0xEF => usize::from(l & 0x7F),
            l @ 0xF0..=0xFD => 126 + usize::from(l - 0xF0) * 40,
            0xFE => 70_000,
            0xFF => 65_535,
        };
        total += len;
        if total > 400_000 {
            break;
        }
        let take = len.min(rest.len());
        let mut payload = rest[..take].to_vec();
        payload.resize(len, b'a');
        bytes = &rest[take..];
        frames.push(Frame {
            fin: flags & 0x08 == 0,
            rsv: if flags & 0x70 == 0x70 { 0b100 } else { 0 },
            opcode: OPCODES[usize::from(flags & 7)],
            masked: flags & 0x70 != 0x60,
            payload,
        });
    }
    frames
}

/// What RFC 6455 says a server reading `frames` must get (with this limit): the events,
/// and the close code of the violation that ends the stream, if any.
pub fn model(frames: &[Frame], max: usize) -> (Vec<Event>, Option<u16>) {
    let mut events = Vec::new();
    let mut message: Option<(u8, Vec<u8>)> = None;
    for f in frames {
        if f.rsv != 0 || !f.masked {
            return (events, Some(1002));
        }
        let payload = f.payload.clone();
        match f.opcode {
            0x8..=0xA => {
                if !f.fin || payload.len() > 125 {
                    return (events, Some(1002));
                }
                events.push(match f.opcode {
                    0x9 => Event::Ping(Bytes::from(payload)),
                    0xA => Event::Pong(Bytes::from(payload)),
                    _ => match close(&payload) {
                        Ok(close) => Event::Close(close),
                        Err(code) => return (events, Some(code)),
                    },
                });
                continue;
            }
            0x1 | 0x2 => {
                if message.is_some() {
                    return (events, Some(1002));
                }
                if payload.len() > max {
                    return (events, Some(1009));
                }
                message = Some((f.opcode, payload));
            }
            0x0 => {
                let Some((_, so_far)) = &mut message else {
                    return (events, Some(1002));
                };
                if so_far.len() + payload.len() > max {
                    return (events, Some(1009));
                }
                so_far.extend_from_slice(&payload);
            }
            _ => return (events, Some(1002)),
        }
        if let Some((0x1, text)) = &message {
            match std::str::from_utf8(text) {
                Ok(_) => {}
                // An invalid sequence fails at once; a character cut at the end only if
                // the message ends there.
                Err(e) if e.error_len().is_some() || f.fin => return (events, Some(1007)),
                Err(_) => {}
            }
        }
        if f.fin {
            let (opcode, data) = message.take().unwrap_or_default();
            events.push(if opcode == 0x1 {
                Event::Text(Bytes::from(data))
            } else {
                Event::Binary(Bytes::from(data))
            });
        }
    }
    (events, None)
}

/// A close frame's payload: no code, or a code that may be sent and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Option<(u16, String)>, u16> {
    match payload {
        [] => Ok(None),
        [_] => Err(1002),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !sendable_close_code(code) {
                return Err(1002);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| 1007u16)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}
