//! The fuzz targets' harnesses (`fuzz/src/`, one module per target) driven on stable Rust by
//! a seeded random generator, in every `cargo test`: raw bytes, and structured inputs (valid
//! frames, handshake responses, upgrade requests, gateway requests and backplane messages,
//! as they are and mutated) so that the loop reaches the deep paths. `cargo fuzz` (nightly)
//! runs the same harnesses for long: `docs/fuzzing.md`.
//!
//! Each target runs for `FUZZ_SECS` seconds (default 2) or `FUZZ_ITERS` inputs, whichever
//! comes first. The seed is `FUZZ_SEED` (default fixed); a failing input is named by its
//! number and written to a file that `cargo fuzz run <target> <file>` replays. With
//! `FUZZ_WRITE_SEEDS=<dir>`, every input is also written to `<dir>/<target>/`: a starting
//! corpus for `cargo fuzz run <target> <dir>/<target>`.

#[allow(dead_code, unreachable_pub)]
#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use harness::{backplane, client_read, gateway_request, server_frames, split, upgrade_request};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `one` on inputs from `generate` until the budget is spent. An input whose run
/// panics fails the test (it is written to a file first). Returns how many inputs ran and
/// how many reached deep (`one` returned more than 0).
fn drive(
    target: &str,
    mut generate: impl FnMut(&mut StdRng) -> Vec<u8>,
    mut one: impl FnMut(&[u8]) -> usize,
) -> (usize, usize) {
    let budget = Duration::from_secs_f64(env("FUZZ_SECS").unwrap_or(2.0));
    let iters: usize = env("FUZZ_ITERS").unwrap_or(usize::MAX);
    let seed: u64 = env("FUZZ_SEED").unwrap_or(0x5eed_f00d);
    let salt = target
        .bytes()
        .fold(0u64, |h, b| h.rotate_left(8) ^ u64::from(b));
    let mut rng = StdRng::seed_from_u64(seed ^ salt);
    let seeds = std::env::var_os("FUZZ_WRITE_SEEDS").map(|d| std::path::Path::new(&d).join(target));
    if let Some(dir) = &seeds {
        std::fs::create_dir_all(dir).expect("seed directory");
    }
    let start = Instant::now();
    let (mut runs, mut deep) = (0, 0);
    while runs < iters && start.elapsed() < budget {
        let input = generate(&mut rng);
        if let Some(dir) = &seeds {
            std::fs::write(dir.join(format!("seed-{runs}")), &input).expect("seed file");
        }
        match catch_unwind(AssertUnwindSafe(|| one(&input))) {
            Ok(depth) => deep += usize::from(depth > 0),
            Err(_) => {
                let file = std::env::temp_dir().join(format!("fuzz-{target}-{seed:x}-{runs}"));
                let _ = std::fs::write(&file, &input);
                let shown: String = input
                    .escape_ascii()
                    .to_string()
                    .chars()
                    .take(2000)
                    .collect();
                panic!(
                    "{target}: input #{runs} (FUZZ_SEED={seed:#x}) failed; written to {}: {shown}",
                    file.display()
                );
            }
        }
        runs += 1;
    }
    eprintln!(
        "{target}: {runs} inputs in {:?}, {deep} reached deep",
        start.elapsed()
    );
    (runs, deep)
}

/// Asserts that the loop ran and that a fair share of its inputs got past the first checks
/// (a generator or a parser that refuses everything would test nothing).
fn assert_reached(target: &str, (runs, deep): (usize, usize), share: usize) {
    assert!(runs >= 50, "{target}: only {runs} inputs");
    assert!(
        deep * share >= runs,
        "{target}: only {deep} of {runs} inputs reached deep"
    );
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

fn random_sizes(rng: &mut StdRng) -> Vec<usize> {
    let n = rng.random_range(0..8);
    let small = rng.random_bool(0.5);
    (0..n)
        .map(|_| {
            if small {
                rng.random_range(1..=4)
            } else {
                rng.random_range(1..=256)
            }
        })
        .collect()
}

/// Changes a few bytes of `bytes`: flips, truncation, insertion, deletion.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=3) {
        if bytes.is_empty() {
            bytes.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..5) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes[at] = rng.random(),
            2 => bytes.truncate(at),
            3 => bytes.insert(at, rng.random()),
            _ => {
                bytes.remove(at);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frames (both roles).

/// Text that cuts into fragments anywhere, multi-byte characters included.
fn text(rng: &mut StdRng, max_chars: usize) -> Vec<u8> {
    const PIECES: [&str; 6] = ["a", "hello ", "é", "€", "😀", "\u{0}"];
    let n = rng.random_range(0..=max_chars);
    (0..n)
        .flat_map(|_| PIECES.choose(rng).unwrap().bytes())
        .collect()
}

/// One frame description of `server_frames::frames`: flags byte (opcode index, not-FIN,
/// RSV1 / unmasked), length byte, payload.
fn frame_spec(out: &mut Vec<u8>, opcode_index: u8, fin: bool, payload: &[u8]) {
    let len = payload.len();
    let len_byte = match len {
        0..=0x7F => len as u8,
        65_535 => 0xFF,
        70_000 => 0xFE,
        _ => {
            assert!(
                len >= 126 && (len - 126).is_multiple_of(40) && len <= 646,
                "{len}"
            );
            0xF0 + ((len - 126) / 40) as u8
        }
    };
    out.push(opcode_index | if fin { 0 } else { 0x08 });
    out.push(len_byte);
    out.extend_from_slice(payload);
}

/// A length that a frame description can express.
fn spec_len(rng: &mut StdRng) -> usize {
    match rng.random_range(0..100) {
        0 => 70_000,
        1 => 65_535,
        2..=11 => 126 + 40 * rng.random_range(0..=13),
        _ => rng.random_range(0..=0x7F),
    }
}

/// A list of frame descriptions: mostly valid messages (fragmented text with characters
/// cut across fragments, binary, control frames between fragments, closes), sometimes a
/// faulty frame.
fn frame_specs(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..=6) {
        match rng.random_range(0..12) {
            0..=3 => {
                let t = text(rng, 20); // at most 120 bytes: one length byte
                let cuts = rng.random_range(0..=3).min(t.len());
                let mut points: Vec<usize> =
                    (0..cuts).map(|_| rng.random_range(0..=t.len())).collect();
                points.sort_unstable();
                let mut start = 0;
                let mut first = true;
                for end in points.into_iter().chain([t.len()]) {
                    let last = end == t.len();
                    let opcode = if first { 0 } else { 2 };
                    frame_spec(&mut out, opcode, last, &t[start..end]);
                    if !last && rng.random_bool(0.2) {
                        frame_spec(&mut out, 3, true, b"ping");
                    }
                    first = false;
                    start = end;
                    if last {
                        break;
                    }
                }
            }
            4..=6 => {
                let len = spec_len(rng);
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                frame_spec(&mut out, 1, true, &payload);
            }
            7 => {
                let payload = random_bytes(rng, 125);
                frame_spec(&mut out, rng.random_range(3..=4), true, &payload);
            }
            8 => {
                let code: u16 = *[
                    1000u16, 1001, 1003, 1004, 1005, 1008, 2999, 3000, 4999, 5000,
                ]
                .choose(rng)
                .unwrap();
                let mut payload = code.to_be_bytes().to_vec();
                payload.extend(text(rng, 10).into_iter().take(100));
                if rng.random_bool(0.1) {
                    payload.truncate(1);
                }
                frame_spec(&mut out, 5, true, &payload);
            }
            9 => {
                // invalid UTF-8, or a text ending inside a character
                let mut t = text(rng, 10);
                if rng.random_bool(0.5) {
                    t.push(0xFF);
                } else {
                    t.extend_from_slice(&"é".as_bytes()[..1]);
                }
                frame_spec(&mut out, 0, true, &t);
            }
            10 => {
                // reserved opcode, stray continuation, fragmented control
                let which = *[6u8, 7, 2, 3].choose(rng).unwrap();
                frame_spec(&mut out, which, which != 3, b"x");
            }
            _ => {
                // RSV1 or unmasked
                let flags = if rng.random_bool(0.5) { 0x70 } else { 0x60 };
                out.push(flags | 1);
                out.push(1);
                out.push(b'z');
            }
        }
    }
    out
}

/// A client's stream as described by `specs`.
fn client_stream(specs: &[u8]) -> Vec<u8> {
    server_frames::frames(specs)
        .iter()
        .flat_map(server_frames::Frame::encode)
        .collect()
}

/// A compressed client message: JSON-like text or repeated bytes, deflated as a client
/// without context takeover sends it, in one to three frames (RSV1 on the first).
fn compressed_message(rng: &mut StdRng) -> Vec<u8> {
    use svc_infra::websocket::protocol::{RSV1, deflate::Deflater, encode_masked_frame};
    let message = if rng.random_bool(0.5) {
        let chars = rng.random_range(1..200);
        text(rng, chars)
    } else {
        vec![rng.random::<u8>(); rng.random_range(1..100_000)]
    };
    let mut packed = Vec::new();
    if !Deflater::new(15, true).compress(&message, &mut packed) {
        packed = message;
    }
    let opcode = if rng.random_bool(0.5) { 1 } else { 2 };
    let cuts = rng.random_range(1..=3usize).min(packed.len().max(1));
    let step = packed.len().div_ceil(cuts).max(1);
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = if packed.is_empty() {
        vec![&[]]
    } else {
        packed.chunks(step).collect()
    };
    for (i, piece) in pieces.iter().enumerate() {
        let op = if i == 0 { opcode } else { 0 };
        let mut frame = encode_masked_frame(op, piece, [9, 8, 7, 6]).to_vec();
        if i + 1 < pieces.len() {
            frame[0] &= 0x7F;
        }
        if i == 0 {
            frame[0] |= RSV1;
        }
        out.extend(frame);
    }
    out
}

fn server_frames_input(rng: &mut StdRng) -> Vec<u8> {
    // Mostly a limit that lets messages through.
    let max = *[0u8, 1, 2, 3, 4, 5, 5, 6, 6, 7, 7, 7].choose(rng).unwrap();
    let sizes = random_sizes(rng);
    let (settings, stream) = match rng.random_range(0..5) {
        0 => (max, random_bytes(rng, 300)),
        1 => (max | 0x80, frame_specs(rng)),
        // permessage-deflate negotiated: compressed messages (some fragmented, some
        // mutated), beside the frame descriptions of the structured mode.
        4 => {
            let mut s = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                s.extend(compressed_message(rng));
            }
            if rng.random_bool(0.3) {
                mutate(rng, &mut s);
            }
            (max | 0x40, s)
        }
        2 => {
            let mut s = client_stream(&frame_specs(rng));
            mutate(rng, &mut s);
            (max, s)
        }
        _ => (max, client_stream(&frame_specs(rng))),
    };
    let mut input = vec![settings];
    input.extend(split::encode(&sizes, &stream));
    input
}

#[test]
fn server_frames() {
    use svc_infra::fuzzing::Event;
    // The model is RFC 6455's reading, checked on a known stream first: "é" cut across two
    // fragments, then an empty ping.
    let frames = server_frames::frames(&[0x08, 2, 0xC3, 0xA9, 0x02, 1, b'!', 0x03, 0]);
    let want = || vec![Event::Text("é!".into()), Event::Ping(Default::default())];
    assert_eq!(server_frames::model(&frames, 100), (want(), None));
    assert_eq!(server_frames::model(&frames, 2), (vec![], Some(1009)));
    let stream = client_stream(&[0x08, 2, 0xC3, 0xA9, 0x02, 1, b'!', 0x03, 0]);
    assert_eq!(server_frames::feed(&[&stream], 100, None).events, want());
    // Compressed, with permessage-deflate: the same text.
    let mut packed = Vec::new();
    assert!(
        svc_infra::websocket::protocol::deflate::Deflater::new(15, true)
            .compress("é!é!é!é!é!é!é!é!é!é!é!é!".as_bytes(), &mut packed)
    );
    let mut frame =
        svc_infra::websocket::protocol::encode_masked_frame(1, &packed, [1, 2, 3, 4]).to_vec();
    frame[0] |= svc_infra::websocket::protocol::RSV1;
    let shared = svc_infra::fuzzing::DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    assert_eq!(
        server_frames::feed(&[&frame], 100, Some(shared)).events,
        vec![Event::Text("é!é!é!é!é!é!é!é!é!é!é!é!".into())]
    );
    // With the client's context kept (`WS_COMPRESSION=dedicated`): the second message
    // refers back to the first.
    let mut deflater = svc_infra::websocket::protocol::deflate::Deflater::new(15, false);
    let mut stream = Vec::new();
    for _ in 0..2 {
        let mut packed = Vec::new();
        assert!(deflater.compress("é!é!é!é!é!é!é!é!é!é!é!é!".as_bytes(), &mut packed));
        let mut frame =
            svc_infra::websocket::protocol::encode_masked_frame(1, &packed, [1, 2, 3, 4]).to_vec();
        frame[0] |= svc_infra::websocket::protocol::RSV1;
        stream.extend(frame);
    }
    let context = svc_infra::fuzzing::DeflateParams {
        client_no_context_takeover: false,
        ..shared
    };
    assert_eq!(
        server_frames::feed(&[&stream], 100, Some(context)).events,
        vec![
            Event::Text("é!é!é!é!é!é!é!é!é!é!é!é!".into()),
            Event::Text("é!é!é!é!é!é!é!é!é!é!é!é!".into())
        ]
    );

    let result = drive("server_frames", server_frames_input, server_frames::run);
    assert_reached("server_frames", result, 4);
}

// ---------------------------------------------------------------------------------------
// What the client reads.

const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A complete 101 response head of exactly `len` bytes (at least 140).
fn head_of_len(len: usize) -> Vec<u8> {
    let start = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\nX-Pad: "
    );
    let pad = len - start.len() - 4;
    let mut head = start.into_bytes();
    head.resize(head.len() + pad, b'p');
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// A server stream of the client's handshake then frames, built here rather than by
/// `client_read::response`: heads around the 16 KiB limit, refusals with bodies in many
/// small chunks.
fn handcrafted_server_stream(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..3) {
        0 => {
            let mut s = head_of_len(16 * 1024 + rng.random_range(0..16) - 8);
            s.extend_from_slice(b"\x81\x02hi");
            s
        }
        1 => {
            let mut s = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let pieces = rng.random_range(0..400);
            for i in 0..pieces {
                if rng.random_bool(0.01) {
                    s.extend_from_slice(b"5\r\n0\r\n\r\n\r\n"); // a last-chunk look-alike in data
                } else {
                    s.extend_from_slice(
                        format!("1\r\n{}\r\n", (b'a' + (i % 26) as u8) as char).as_bytes(),
                    );
                }
            }
            s.extend_from_slice(b"0\r\n\r\n");
            s
        }
        _ => {
            let body_len = rng.random_range(0..3000);
            let mut s = format!(
                "HTTP/1.1 503 Busy\r\nContent-Length: {}\r\n\r\n",
                rng.random_range(0..3000)
            )
            .into_bytes();
            s.extend(std::iter::repeat_n(b'b', body_len));
            s
        }
    }
}

fn client_read_input(rng: &mut StdRng) -> Vec<u8> {
    let max = rng.random_range(0..4u8);
    let offers = rng.random_range(0..4u8) << 2;
    // Compression off (no offer) one time in five.
    let no_offer = if rng.random_bool(0.2) { 0x40 } else { 0 };
    let sizes = random_sizes(rng);
    let (mode, stream) = match rng.random_range(0..12) {
        0 => (0, random_bytes(rng, 300)),
        1 => (0, handcrafted_server_stream(rng)),
        10 | 11 => {
            // permessage-deflate agreed on (with or without the server's context takeover),
            // then compressed server messages (some fragmented, some mutated) and a close.
            let v = 0b1_0001; // 101, right accept, Connection, an extension
            let pick = rng.random_range(0..4u8) << 3; // one of the acceptable answers
            let mut s = vec![v, pick, 0, 0];
            let mut frames = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                frames.extend(compressed_message(rng));
            }
            frames.extend(client_stream(&[0x05, 2, 0x03, 0xe8]));
            let mut frames = unmask(&frames);
            if rng.random_bool(0.3) {
                mutate(rng, &mut frames);
            }
            s.extend(frames);
            (1, s)
        }
        m => {
            // the response's variations: status 101 three times in four
            let mut v: u8 = rng.random();
            if rng.random_bool(0.5) {
                v &= 0b1100_0000 | 0b1000 | 0b1; // 101, right accept, Connection, no extension
            }
            let (junk_len, body_len) = (rng.random_range(0..20u8), rng.random_range(0..60u8));
            let mut s = vec![v, rng.random(), junk_len, body_len];
            s.extend((0..junk_len).map(|_| rng.random_range(0x20..0x7F)));
            if v & 3 >= 2 {
                s.extend(random_bytes(rng, usize::from(body_len)));
            }
            let mode = if m < 4 { 1 } else { 2 };
            if mode == 1 {
                let mut frames = client_stream(&frame_specs(rng));
                // server frames are unmasked: strip the mask bits and keys the lazy way
                frames = unmask(&frames);
                if rng.random_bool(0.3) {
                    mutate(rng, &mut frames);
                }
                s.extend(frames);
            } else {
                s.extend(frame_specs(rng));
            }
            (mode, s)
        }
    };
    let mut input = vec![max | offers | (mode << 4) | no_offer];
    input.extend(split::encode(&sizes, &stream));
    input
}

/// The same frames, unmasked (a client stream made a server stream).
fn unmask(stream: &[u8]) -> Vec<u8> {
    use svc_infra::websocket::protocol::{FrameHeader, apply_mask};
    let mut out = Vec::new();
    let mut rest = stream;
    while let Ok(Some(h)) = FrameHeader::parse(rest) {
        let Some(mask) = h.mask else { break };
        let end = h.len + h.payload_len as usize;
        if rest.len() < end {
            break;
        }
        let mut header = rest[..h.len - 4].to_vec();
        header[1] &= 0x7F;
        let mut payload = rest[h.len..end].to_vec();
        apply_mask(&mut payload, mask, 0);
        out.extend(header);
        out.extend(payload);
        rest = &rest[end..];
    }
    out
}

#[test]
fn client_read() {
    let rt = harness::runtime();
    // A valid handshake and a message get through; a wrong accept does not.
    let mut ok = head_of_len(200);
    ok.extend_from_slice(b"\x81\x02hi\x88\x02\x03\xe8");
    assert_eq!(client_read::run_stream(&rt, &ok, &[3], 1000, &[], true), 3);
    let wrong = String::from_utf8(head_of_len(200))
        .unwrap()
        .replace(ACCEPT, "x");
    assert_eq!(
        client_read::run_stream(&rt, wrong.as_bytes(), &[], 1000, &[], true),
        0
    );
    // permessage-deflate: agreed on when offered, then a compressed message is inflated;
    // the same answer fails the handshake when nothing was offered.
    let with_deflate = String::from_utf8(head_of_len(200)).unwrap().replace(
        "X-Pad:",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\nX-Pad:",
    );
    let mut stream = with_deflate.into_bytes();
    let mut packed = Vec::new();
    assert!(
        svc_infra::websocket::protocol::deflate::Deflater::new(15, true)
            .compress("hello hello hello hello hello".as_bytes(), &mut packed)
    );
    stream.extend(svc_infra::websocket::protocol::encode_deflated_frame(1, &packed).to_vec());
    let run = rt.block_on(svc_infra::fuzzing::client_read(
        vec![stream.clone()],
        1000,
        &[],
        true,
    ));
    assert!(run.deflate, "{run:?}");
    assert_eq!(
        run.events,
        vec![svc_infra::fuzzing::ClientEvent::Message(
            "hello hello hello hello hello".into()
        )]
    );
    assert_eq!(
        client_read::run_stream(&rt, &stream, &[7], 1000, &[], false),
        0
    );

    let result = drive("client_read", client_read_input, |input| {
        client_read::run(&rt, input)
    });
    assert_reached("client_read", result, 5);
}

// ---------------------------------------------------------------------------------------
// The upgrade request.

fn header_value(rng: &mut StdRng, pick: usize) -> Vec<u8> {
    let choices: &[&[u8]] = match pick {
        0 => &[
            b"Upgrade",
            b"upgrade",
            b"keep-alive, Upgrade",
            b"keep-alive",
            b",upgrade ,",
            b"upgrades",
        ],
        1 => &[
            b"websocket",
            b"WebSocket",
            b"h2c, websocket",
            b"websockets",
            b"",
        ],
        2 => &[b"13", b"13", b"8", b" 13", b"13, 8"],
        3 => &[
            b"dGhlIHNhbXBsZSBub25jZQ==",
            b"x3JJHMbDL1EzLkh9GBhXDw==",
            b"",
            b"not base64",
        ],
        4 => &[
            b"chat",
            b"superchat, chat",
            b"SuperChat",
            b"x, y",
            b" , ",
            b"chat\tx",
            b"chat,superchat",
        ],
        5 => &[
            b"https://a.example",
            b"HTTP://A.EXAMPLE",
            b"http://b.example",
            b"null",
            "https://é.example".as_bytes(),
        ],
        6 => &[b"localhost:8000"],
        _ => &[
            b"x-custom:value",
            b"Origin:https://a.example",
            b"sec-websocket-key:k",
        ],
    };
    match rng.random_range(0..10) {
        0 => random_bytes(rng, 20)
            .into_iter()
            .filter(|b| *b != 0xFF)
            .collect(),
        // the first choice is a valid one
        1..=5 => choices[0].to_vec(),
        _ => choices.choose(rng).unwrap().to_vec(),
    }
}

fn upgrade_request_input(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.1) {
        return random_bytes(rng, 200);
    }
    let method = if rng.random_bool(0.85) {
        0
    } else {
        rng.random()
    };
    let version = if rng.random_bool(0.85) {
        0
    } else {
        rng.random()
    };
    let flags = rng.random::<u8>() & if rng.random_bool(0.9) { 0xFE } else { 0xFF };
    let mut picks: Vec<usize> = Vec::new();
    for (pick, p) in [
        (0, 0.9),
        (1, 0.9),
        (2, 0.9),
        (3, 0.9),
        (4, 0.5),
        (5, 0.5),
        (6, 0.5),
        (7, 0.2),
    ] {
        if rng.random_bool(p) {
            picks.push(pick);
        }
        if rng.random_bool(0.05) {
            picks.push(pick);
        }
    }
    let mut input = vec![method, version, flags];
    for (i, pick) in picks.into_iter().enumerate() {
        if i > 0 {
            input.push(0xFF);
        }
        input.push(pick as u8);
        input.extend(header_value(rng, pick));
    }
    input
}

#[test]
fn upgrade_request() {
    let rt = harness::runtime();
    let valid: &[u8] =
        b"\0\0\0\0Upgrade\xFF\x01websocket\xFF\x02\x31\x33\xFF\x03dGhlIHNhbXBsZSBub25jZQ==";
    assert_eq!(upgrade_request::run(&rt, valid), 2);
    // flag bit 0: no OnUpgrade, refused
    let mut no_upgrade = valid.to_vec();
    no_upgrade[2] = 1;
    assert_eq!(upgrade_request::run(&rt, &no_upgrade), 0);

    let result = drive("upgrade_request", upgrade_request_input, |input| {
        upgrade_request::run(&rt, input)
    });
    assert_reached("upgrade_request", result, 8);
}

// ---------------------------------------------------------------------------------------
// The gateway's requests.

fn json_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e6),
        4 => json!(String::from_utf8_lossy(&text(rng, 5))),
        5 => json!(u64::MAX),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| json_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for i in 0..rng.random_range(0..4) {
                map.insert(format!("k{i}"), json_value(rng, depth - 1));
            }
            Value::Object(map)
        }
    }
}

fn gateway_request_text(rng: &mut StdRng) -> Vec<u8> {
    const TYPES: [&str; 9] = [
        "join",
        "leave",
        "publish",
        "send",
        "broadcast",
        "echo",
        "presence",
        "fly",
        "JOIN",
    ];
    let typ = *TYPES.choose(rng).unwrap();
    let mut req = serde_json::Map::new();
    if rng.random_bool(0.95) {
        req.insert("type".into(), json!(typ));
    }
    let rooms = ["lobby", "r2", "", "é", &"r".repeat(129), &"r".repeat(128)].map(str::to_owned);
    let room = rooms.choose(rng).unwrap().clone();
    let needs: &[&str] = match typ {
        "join" | "leave" => &["room"],
        "publish" => &["room", "data"],
        "send" => &["to", "data"],
        "broadcast" | "echo" => &["data"],
        "presence" => &["room"],
        _ => &[],
    };
    for field in needs {
        if rng.random_bool(0.93) {
            let v = match *field {
                "room" if typ == "presence" && rng.random_bool(0.3) => Value::Null,
                "room" => json!(room.clone()),
                "to" => json!(*["fuzz-user", "bob"].choose(rng).unwrap()),
                _ => json_value(rng, 3),
            };
            req.insert((*field).into(), v);
        }
    }
    if rng.random_bool(0.6) {
        let id = match rng.random_range(0..5) {
            0 => Value::Null,
            1 => json!(rng.random_range(0..100)),
            2 => json!("req-1"),
            3 => json!(0.5),
            _ => json_value(rng, 2),
        };
        req.insert("id".into(), id);
    }
    if rng.random_bool(0.05) {
        req.insert("extra".into(), json!(1));
    }
    if rng.random_bool(0.05) {
        req.insert("room".into(), json!(5));
    }
    let mut out = Value::Object(req).to_string().into_bytes();
    match rng.random_range(0..40) {
        0 => mutate(rng, &mut out),
        1 => out = json_value(rng, 2).to_string().into_bytes(),
        // a duplicate key, which a Value keeps the last of and a request refuses
        2 if out.len() > 2 => {
            out.pop();
            out.extend_from_slice(br#","type":"echo","data":1}"#);
        }
        _ => {}
    }
    out.retain(|b| *b != 0xFF);
    out
}

fn gateway_request_input(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.05) {
        return random_bytes(rng, 200);
    }
    let mut input = vec![rng.random_range(0..4u8)];
    for i in 0..rng.random_range(1..=6) {
        if i > 0 {
            input.push(0xFF);
        }
        if rng.random_bool(0.03) {
            input.extend_from_slice(&[0xC3, 0x28]); // not UTF-8: a binary message
        } else {
            input.extend(gateway_request_text(rng));
        }
    }
    input
}

#[test]
fn gateway_request() {
    let rt = harness::runtime();
    // A join acknowledged, the room's presence, an unknown request: two served.
    let mut input = b"\0{\"type\":\"join\",\"room\":\"a\",\"id\":1}".to_vec();
    input.extend_from_slice(b"\xFF{\"type\":\"presence\",\"room\":\"a\",\"id\":2}");
    input.extend_from_slice(b"\xFF{\"type\":\"nope\"}");
    assert_eq!(gateway_request::run(&rt, &input), 2);

    let result = drive("gateway_request", gateway_request_input, |input| {
        gateway_request::run(&rt, input)
    });
    assert_reached("gateway_request", result, 2);
}

// ---------------------------------------------------------------------------------------
// The backplane's messages.

fn put_name(out: &mut Vec<u8>, rng: &mut StdRng) {
    let name = text(rng, 6);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend(name);
}

/// A well-formed envelope, per the wire format of `Envelope::to_bytes`: version 1 with a
/// plain frame, or 3 with a time and a deflated one.
fn envelope_wire(rng: &mut StdRng) -> Vec<u8> {
    // Version 1 (plain), 3 (deflated) or 4 (positioned, plain).
    let version = [1, 3, 4][rng.random_range(0..3)];
    let deflated = version == 3;
    let mut w = vec![version];
    w.extend_from_slice(&rng.random::<u64>().to_be_bytes());
    if version != 1 {
        w.extend_from_slice(&rng.random::<u64>().to_be_bytes());
    }
    if version == 4 {
        w.push(rng.random_range(0..2));
        let offset = rng.random::<u64>() >> rng.random_range(0..64);
        let digits = offset.to_string();
        w.push(digits.len() as u8);
        w.extend_from_slice(digits.as_bytes());
        w.extend_from_slice(b"\x10a1b2c3d4e5f60718");
    }
    let kind = rng.random_range(0..3u8);
    w.push(kind);
    if kind == 0 {
        w.extend_from_slice(&[0, 0]);
    } else {
        put_name(&mut w, rng);
    }
    if rng.random_bool(0.5) {
        w.push(0);
    } else {
        w.push(1);
        put_name(&mut w, rng);
    }
    if deflated {
        let text = "hello, hello, hello from the room ".repeat(rng.random_range(1..8));
        let frame = svc_infra::websocket::protocol::deflate::deflate_frame(
            svc_infra::websocket::protocol::OP_TEXT,
            text.as_bytes(),
            15,
        );
        w.extend_from_slice(&frame.expect("repetitive text deflates"));
    } else {
        w.extend_from_slice(b"\x81\x02hi");
    }
    w
}

fn envelope_input(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => {
            let mut input = vec![0];
            input.extend(random_bytes(rng, 60));
            input
        }
        1 => {
            // Structured: a random mode with bit 0 set (a time, a deflated frame, a position).
            let mut input = vec![rng.random::<u8>() | 1];
            input.extend(random_bytes(rng, 60));
            input
        }
        2 => {
            let mut input = vec![0];
            input.extend(envelope_wire(rng));
            input
        }
        _ => {
            let mut w = envelope_wire(rng);
            mutate(rng, &mut w);
            let mut input = vec![0];
            input.extend(w);
            input
        }
    }
}

#[test]
fn backplane_envelope() {
    let node = backplane::node();
    let result = drive("backplane_envelope", envelope_input, |input| {
        usize::from(backplane::envelope(&node, input))
    });
    assert_reached("backplane_envelope", result, 3);
}

/// A well-formed presence message, per the wire format of `Presence::to_bytes`.
fn presence_wire(rng: &mut StdRng) -> Vec<u8> {
    let mut w = vec![1];
    w.extend_from_slice(&rng.random_range(0..4u64).to_be_bytes());
    w.push(rng.random_range(0..2));
    let connections = if rng.random_bool(0.3) {
        u64::MAX - rng.random_range(0..3)
    } else {
        rng.random_range(0..10)
    };
    w.extend_from_slice(&connections.to_be_bytes());
    w.extend_from_slice(&rng.random_range(0..2000u32).to_be_bytes());
    for _ in 0..rng.random_range(0..5) {
        let kind = rng.random_range(0..4u8);
        w.push(kind);
        put_name(&mut w, rng);
        if kind >= 2 {
            put_name(&mut w, rng);
        }
    }
    w
}

fn presence_input(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.4) {
        // structured: field values the harness encodes itself
        let mut input = vec![1];
        input.extend(random_bytes(rng, 120));
        return input;
    }
    let mut input = vec![0];
    for _ in 0..rng.random_range(1..=4) {
        let mut w = presence_wire(rng);
        if rng.random_bool(0.3) {
            mutate(rng, &mut w);
        }
        w.truncate(255);
        input.push(w.len() as u8);
        input.extend(w);
    }
    input
}

#[test]
fn backplane_presence() {
    let result = drive("backplane_presence", presence_input, backplane::presence);
    assert_reached("backplane_presence", result, 2);
}
