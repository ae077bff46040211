//! `client_read`: what the client reads from a server (`svc_infra::fuzzing::client_read`):
//! the handshake response (our `read_head`, `parse_head`, `verify_upgrade` with the
//! permessage-deflate answer, and the error-body reader), then the server's unmasked frames
//! through the client's own reader (the protocol core's parser in the client's role, with
//! our limits, inflating compressed messages when deflate was agreed on), from a byte
//! stream cut at the points the input chooses. Also checks the `FrameHeader` reader that
//! `svc-ws bench` reads server frames with against tungstenite's, on the bytes after the
//! response head.
//!
//! Input: one byte of settings (bits 0–1: `max_message_size` from [`MAX_SIZES`]; bits 2–3:
//! the subprotocols offered, from [`OFFERS`]; bits 4–5: the mode; bit 6: compression off,
//! so that no permessage-deflate is offered), the cutting instructions of [`crate::split`],
//! then the stream: in mode 0 the rest of the input as is; otherwise a response head built
//! from the next bytes ([`response`]) followed, in mode 1, by the rest as is or, in mode 2
//! and 3, by unmasked frames described by the rest ([`crate::server_frames::frames`]).
//!
//! Properties (a violation panics):
//! - the outcome (handshake, messages, error) is the same whether the stream arrives whole
//!   or cut;
//! - an accepted handshake had, by a second reading of the head (httparse): status
//!   101, HTTP/1.1, `Upgrade: websocket`, `Connection: upgrade`, the right
//!   `Sec-WebSocket-Accept`, no extension or (when offered) a permessage-deflate answer
//!   that `deflate::accept_response` accepts, deflate agreed on exactly then, and no
//!   subprotocol or one that was offered; its head is at most 16 KiB;
//! - every message is at most `max_message_size`, every control payload at most 125 bytes,
//!   every close code one that may be sent;
//! - nothing is read after an error;
//! - `FrameHeader` agrees with tungstenite's header reader on every header it reads, and
//!   reports an incomplete header for every prefix of one.

use std::io::Cursor;

use svc_infra::{
    fuzzing::{CLIENT_KEY, ClientEvent, ClientRun, client_read},
    websocket::protocol::{FrameHeader, HeaderError, deflate},
};

use crate::{server_frames, split};

/// The `max_message_size` values a run can pick.
pub const MAX_SIZES: [usize; 4] = [16, 125, 1000, 65_536];

/// The subprotocol lists a run can offer.
pub const OFFERS: [&[&str]; 4] = [&[], &["chat"], &["chat", "superchat"], &["bearer", "x"]];

/// The longest response head the client accepts.
const MAX_HEAD: usize = 16 * 1024;

/// The `Sec-WebSocket-Extensions` answers a response can carry: permessage-deflate with
/// and without context takeover and with windows, then answers the client must refuse.
pub const EXTENSIONS: [&str; 8] = [
    "permessage-deflate",
    "permessage-deflate; server_no_context_takeover",
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; client_max_window_bits=9; server_max_window_bits=10",
    "permessage-deflate; client_max_window_bits",
    "x-webkit-deflate-frame",
    "permessage-deflate, permessage-deflate",
    "permessage-deflate; server_max_window_bits=7",
];

/// Runs one input; panics only if a property is violated. Returns how deep it reached: 0
/// when the handshake failed, else 1 plus the number of things read.
pub fn run(rt: &tokio::runtime::Runtime, data: &[u8]) -> usize {
    let Some((&settings, rest)) = data.split_first() else {
        return 0;
    };
    let max = MAX_SIZES[usize::from(settings & 3)];
    let offered: Vec<String> = OFFERS[usize::from((settings >> 2) & 3)]
        .iter()
        .map(|p| (*p).to_owned())
        .collect();
    let compression = settings & 0x40 == 0;
    let (sizes, body) = split::sizes(rest);
    let stream = match (settings >> 4) & 3 {
        0 => body.to_vec(),
        mode => {
            let (mut stream, rest) = response(body);
            if mode == 1 {
                stream.extend_from_slice(rest);
            } else {
                for mut frame in server_frames::frames(rest) {
                    // A server's frames are unmasked: the rare "unmasked" client frame
                    // becomes the rare masked server frame.
                    frame.masked = !frame.masked;
                    stream.extend(frame.encode());
                }
            }
            stream
        }
    };
    run_stream(rt, &stream, &sizes, max, &offered, compression)
}

/// Reads `stream` whole and cut into `sizes`, and checks both readings; returns how deep
/// it reached, as [`run`] does.
pub fn run_stream(
    rt: &tokio::runtime::Runtime,
    stream: &[u8],
    sizes: &[usize],
    max: usize,
    offered: &[String],
    compression: bool,
) -> usize {
    let read = |chunks: Vec<&[u8]>| {
        let chunks = chunks.into_iter().map(<[u8]>::to_vec).collect();
        rt.block_on(client_read(chunks, max, offered, compression))
    };
    let whole = read(vec![stream]);
    let cut = read(split::cut(stream, sizes));
    assert_eq!(whole, cut, "cutting the stream changed the outcome");
    check(&whole, stream, max, offered, compression);
    if let Some(end) = head_end(stream) {
        headers_agree(&stream[end..]);
    }
    if whole.handshake.is_ok() {
        1 + whole.events.len()
    } else {
        0
    }
}

fn check(run: &ClientRun, stream: &[u8], max: usize, offered: &[String], compression: bool) {
    assert!(!run.read_after_error, "a message was read after an error");
    match &run.handshake {
        Ok(chosen) => {
            let deflate = check_accepted(stream, chosen.as_deref(), offered, compression);
            assert_eq!(run.deflate, deflate, "deflate agreed on wrongly");
        }
        Err(_) => assert!(run.events.is_empty() && run.error.is_none()),
    }
    let closes = run
        .events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Close(_)))
        .count();
    assert!(closes <= 1, "read on after a close frame");
    for event in &run.events {
        match event {
            ClientEvent::Message(m) => assert!(m.len() <= max, "message of {} > {max}", m.len()),
            ClientEvent::Ping(p) | ClientEvent::Pong(p) => assert!(p.len() <= 125),
            ClientEvent::Close(Some((code, reason))) => {
                assert!(
                    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                    "close code {code} accepted"
                );
                assert!(reason.len() <= 123);
            }
            ClientEvent::Close(None) => {}
        }
    }
}

/// The end of the response head (after its blank line) as httparse reads it, if the stream
/// starts with a complete one.
fn head_end(stream: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    match httparse::Response::new(&mut headers).parse(stream) {
        Ok(httparse::Status::Complete(n)) => Some(n),
        _ => None,
    }
}

/// Checks, reading the head again with httparse, that an accepted handshake deserved it;
/// returns whether it agreed on permessage-deflate.
fn check_accepted(
    stream: &[u8],
    chosen: Option<&str>,
    offered: &[String],
    compression: bool,
) -> bool {
    let end = head_end(stream).expect("accepted without a complete head");
    assert!(end <= MAX_HEAD, "accepted a head of {end} bytes");
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    assert!(response.parse(&stream[..end]).is_ok());
    assert_eq!(response.version, Some(1), "accepted HTTP/1.0");
    assert_eq!(response.code, Some(101), "accepted another status");
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let upgrade = header("upgrade").unwrap_or_default();
    assert!(
        upgrade.eq_ignore_ascii_case("websocket"),
        "Upgrade: {upgrade:?}"
    );
    let connection = header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        connection.split(',').any(|t| t.trim() == "upgrade"),
        "Connection: {connection:?}"
    );
    let accept = tungstenite::handshake::derive_accept_key(CLIENT_KEY.as_bytes());
    assert_eq!(header("sec-websocket-accept"), Some(accept), "wrong accept");
    let extensions: Vec<String> = response
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .collect();
    let deflate = if compression {
        match deflate::accept_response(extensions.iter().map(String::as_str)) {
            Ok(params) => params.is_some(),
            Err(why) => panic!("accepted a deflate answer it must refuse: {why}"),
        }
    } else {
        assert!(
            extensions.iter().all(|e| e.trim().is_empty()),
            "accepted an extension that was not offered: {extensions:?}"
        );
        false
    };
    match header("sec-websocket-protocol").filter(|p| !p.is_empty()) {
        None => assert_eq!(chosen, None),
        Some(p) => {
            assert_eq!(chosen, Some(p.as_str()));
            assert!(
                offered.contains(&p),
                "accepted subprotocol {p:?}, not offered"
            );
        }
    }
    deflate
}

/// `FrameHeader` (ours) and tungstenite's header reader on the frames at the start of
/// `bytes`: the same fields, the same length, the same verdict on incomplete headers.
pub fn headers_agree(mut bytes: &[u8]) {
    for _ in 0..64 {
        let needed = FrameHeader::needed(bytes);
        for cut in 0..needed.min(bytes.len()) {
            assert_eq!(
                FrameHeader::parse(&bytes[..cut]),
                Ok(None),
                "a {cut}-byte prefix of a {needed}-byte header"
            );
        }
        let mut cursor = Cursor::new(bytes);
        let theirs = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor);
        let ours = FrameHeader::parse(bytes);
        let reserved = |opcode: u8| matches!(opcode, 0x3..=0x7 | 0xB..=0xF);
        match ours {
            Ok(None) => {
                assert!(bytes.len() < needed);
                assert!(matches!(theirs, Ok(None)), "tungstenite: {theirs:?}");
                return;
            }
            Err(HeaderError::LengthHighBit) => {
                match theirs {
                    Ok(Some((_, len))) => assert!(len >> 63 == 1, "length {len}"),
                    Err(_) => assert!(reserved(bytes[0] & 0x0F)),
                    Ok(None) => panic!("tungstenite: incomplete"),
                }
                return;
            }
            Err(e) => panic!("unknown header error {e:?}"),
            Ok(Some(h)) => {
                assert_eq!(h.len, needed);
                match theirs {
                    Ok(Some((t, len))) => {
                        let rsv = u8::from(t.rsv1) << 2 | u8::from(t.rsv2) << 1 | u8::from(t.rsv3);
                        assert_eq!(
                            (h.fin, h.rsv, h.opcode, h.mask, h.payload_len),
                            (t.is_final, rsv, u8::from(t.opcode), t.mask, len)
                        );
                        assert_eq!(cursor.position(), h.len as u64);
                    }
                    Err(_) => assert!(reserved(h.opcode), "tungstenite refused {h:?}"),
                    Ok(None) => panic!("tungstenite: incomplete, ours: {h:?}"),
                }
                let Some(rest) = usize::try_from(h.payload_len)
                    .ok()
                    .and_then(|n| n.checked_add(h.len))
                    .and_then(|n| bytes.get(n..))
                else {
                    return;
                };
                bytes = rest;
            }
        }
    }
}

/// A response head built from the bytes at the start of `bytes` (and, for a refusal, a
/// body); returns it and the bytes not used.
///
/// The first byte picks the variations: bits 0–1 the status (101, 101, 401, 503); bit 2 a
/// wrong `Sec-WebSocket-Accept`; bit 3 a `Sec-WebSocket-Protocol` (bits 0–2 of the next
/// byte pick it); bit 4 a `Sec-WebSocket-Extensions` (bits 3–5 of the next byte pick it
/// from [`EXTENSIONS`]); bit 5 no `Connection`; bit 6 a chunked body; bit 7 header names in
/// upper case. The byte after the next is the length of an `X-Fuzz` header value taken as
/// is, and the one after it the length of the body.
pub fn response(bytes: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut r = bytes;
    let mut next = || {
        let (&b, rest) = r.split_first().unwrap_or((&0, &[]));
        r = rest;
        b
    };
    let v = next();
    let status = [101, 101, 401, 503][usize::from(v & 3)];
    let pick = next();
    let protocol = [
        "chat",
        "superchat",
        "x",
        "",
        "other",
        "CHAT",
        " chat ",
        "chat, x",
    ][usize::from(pick & 7)];
    let extension = EXTENSIONS[usize::from((pick >> 3) & 7)];
    let junk_len = usize::from(next());
    let body_len = usize::from(next());
    let name = |n: &str| {
        if v & 0x80 != 0 {
            n.to_ascii_uppercase()
        } else {
            n.to_owned()
        }
    };
    let mut head = format!("HTTP/1.1 {status} Whatever\r\n");
    head += &format!("{}: websocket\r\n", name("Upgrade"));
    if v & 0x20 == 0 {
        head += &format!("{}: Upgrade\r\n", name("Connection"));
    }
    let accept = if v & 0x04 == 0 {
        tungstenite::handshake::derive_accept_key(CLIENT_KEY.as_bytes())
    } else {
        "dGhlIHNhbXBsZSBub25jZQ==".to_owned()
    };
    head += &format!("{}: {accept}\r\n", name("Sec-WebSocket-Accept"));
    if v & 0x08 != 0 {
        head += &format!("{}: {protocol}\r\n", name("Sec-WebSocket-Protocol"));
    }
    if v & 0x10 != 0 {
        head += &format!("{}: {extension}\r\n", name("Sec-WebSocket-Extensions"));
    }
    let mut out = head.into_bytes();
    let take = junk_len.min(r.len());
    if take > 0 {
        out.extend_from_slice(b"X-Fuzz: ");
        out.extend_from_slice(&r[..take]);
        out.extend_from_slice(b"\r\n");
    }
    r = &r[take..];
    let body_take = if status == 101 {
        0
    } else {
        body_len.min(r.len())
    };
    let body = &r[..body_take];
    r = &r[body_take..];
    if v & 0x40 != 0 && status != 101 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for piece in body.chunks(7) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        if status != 101 {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
    (out, r)
}
