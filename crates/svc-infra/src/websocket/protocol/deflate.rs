//! permessage-deflate (RFC 7692): the negotiation in both roles, and the codec of one
//! message.
//!
//! The server's default ("shared") answers every offer with `server_no_context_takeover`
//! and `client_no_context_takeover`: no connection keeps a compressor's or decompressor's
//! state between messages, so one [`Deflater`] and one [`Inflater`] per thread serve every
//! connection (reset after each message), and a broadcast is deflated once: the same bytes
//! are valid for every recipient whose window is at least the one they were made with.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// What every deflated message ends with before the sender strips it (RFC 7692 §7.2.1),
/// and the receiver appends before inflating (§7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest LZ77 window (32 KiB), what a peer uses when nothing limits it.
pub const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window a peer may ask for (256 bytes). zlib cannot make raw deflate with
/// it, and makes a 512-byte window (9) instead; zlib's deflate never reaches further back
/// than its window less 262 bytes, so what it makes with 9 is valid for a peer that
/// inflates with 8.
pub const MIN_WINDOW_BITS: u8 = 8;

/// The parameters both ends agreed on for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// The server's window: what it compresses with at most (8 to 15).
    pub server_max_window_bits: u8,
    /// The client's window: what it compresses with at most (8 to 15).
    pub client_max_window_bits: u8,
}

/// How a server answers offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPolicy {
    /// Answer with both `no_context_takeover` parameters, whatever was offered, so no
    /// connection holds codec state between messages (the "shared" mode).
    pub no_context_takeover: bool,
    /// The largest client window accepted (8 to 15): with less than 15, an offer without
    /// `client_max_window_bits` (the client could not be limited) is declined.
    pub client_max_window_bits: u8,
}

impl Default for ServerPolicy {
    fn default() -> Self {
        Self {
            no_context_takeover: true,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

/// One `permessage-deflate` offer, as a client wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: ClientBits,
}

/// `client_max_window_bits` in an offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ClientBits {
    /// Not offered: the client may use any window, and cannot be limited.
    #[default]
    NotOffered,
    /// Offered without a value: the server may name one.
    Any,
    /// Offered with a value: the client uses at most this.
    Max(u8),
}

/// The extensions of `Sec-WebSocket-Extensions` values: each as its name and its
/// parameters (`name=value`, quotes removed), in order.
fn extensions<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = (&'a str, Vec<(&'a str, Option<&'a str>)>)> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|ext| {
            let mut parts = ext.split(';').map(str::trim);
            let name = parts.next().filter(|n| !n.is_empty())?;
            let params = parts
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (p, None),
                })
                .collect();
            Some((name, params))
        })
}

/// A window size as RFC 7692 writes it: 8 to 15, decimal, no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.len() > 2 || value.starts_with('0') {
        return None;
    }
    value
        .parse()
        .ok()
        .filter(|b| (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(b))
}

impl Offer {
    /// A valid offer, or `None`: an unknown or repeated parameter, or a value where none
    /// belongs or out of range, makes the whole offer unacceptable (§7.1).
    fn parse(params: &[(&str, Option<&str>)]) -> Option<Self> {
        let mut offer = Self::default();
        let mut seen = [false; 4];
        for &(name, value) in params {
            let i = match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" if value.is_none() => {
                    offer.server_no_context_takeover = true;
                    0
                }
                "client_no_context_takeover" if value.is_none() => {
                    offer.client_no_context_takeover = true;
                    1
                }
                "server_max_window_bits" => {
                    offer.server_max_window_bits = Some(window_bits(value?)?);
                    2
                }
                "client_max_window_bits" => {
                    offer.client_max_window_bits = match value {
                        None => ClientBits::Any,
                        Some(v) => ClientBits::Max(window_bits(v)?),
                    };
                    3
                }
                _ => return None,
            };
            if std::mem::replace(&mut seen[i], true) {
                return None;
            }
        }
        Some(offer)
    }
}

/// The server's side: the first acceptable `permessage-deflate` offer among the request's
/// `Sec-WebSocket-Extensions` values, and the response header's value for it; `None` when
/// there is none (the connection goes on uncompressed).
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    policy: ServerPolicy,
) -> Option<(DeflateParams, String)> {
    let cap = policy
        .client_max_window_bits
        .clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
    extensions(offers)
        .filter(|(name, _)| name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
        .find_map(|(_, params)| {
            let offer = Offer::parse(&params)?;
            // The client's window: what it offered, lowered to the cap if it let us name one.
            let client_bits = match offer.client_max_window_bits {
                ClientBits::NotOffered if cap < MAX_WINDOW_BITS => return None,
                ClientBits::NotOffered => None,
                ClientBits::Any => (cap < MAX_WINDOW_BITS).then_some(cap),
                ClientBits::Max(bits) => Some(bits.min(cap)),
            };
            let params = DeflateParams {
                server_no_context_takeover: policy.no_context_takeover
                    || offer.server_no_context_takeover,
                client_no_context_takeover: policy.no_context_takeover
                    || offer.client_no_context_takeover,
                server_max_window_bits: offer.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
                client_max_window_bits: client_bits.unwrap_or(MAX_WINDOW_BITS),
            };
            let mut response = String::from(PERMESSAGE_DEFLATE);
            if params.server_no_context_takeover {
                response.push_str("; server_no_context_takeover");
            }
            if params.client_no_context_takeover {
                response.push_str("; client_no_context_takeover");
            }
            if let Some(bits) = offer.server_max_window_bits {
                response.push_str(&format!("; server_max_window_bits={bits}"));
            }
            if let Some(bits) = client_bits {
                response.push_str(&format!("; client_max_window_bits={bits}"));
            }
            Some((params, response))
        })
}

/// The client's offer: any server window, and ours as the server likes (what browsers and
/// Python websockets send).
pub const CLIENT_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The client's side: the parameters of the server's response to [`CLIENT_OFFER`], or why
/// the response is not one the client may accept (the connection must then fail, §7.1).
pub fn accept_response<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<DeflateParams>, &'static str> {
    let mut agreed = None;
    for (name, params) in extensions(values) {
        if !name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
            return Err("the server accepted an extension that was not offered");
        }
        if agreed.is_some() {
            return Err("the server accepted permessage-deflate twice");
        }
        let offer = Offer::parse(&params).ok_or("invalid permessage-deflate parameters")?;
        let client_bits = match offer.client_max_window_bits {
            ClientBits::NotOffered => MAX_WINDOW_BITS,
            ClientBits::Max(bits) => bits,
            ClientBits::Any => return Err("client_max_window_bits without a value"),
        };
        agreed = Some(DeflateParams {
            server_no_context_takeover: offer.server_no_context_takeover,
            client_no_context_takeover: offer.client_no_context_takeover,
            server_max_window_bits: offer.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
            client_max_window_bits: client_bits,
        });
    }
    Ok(agreed)
}

/// Compresses messages, one at a time.
pub struct Deflater {
    stream: Compress,
    /// Reset after each message (no context takeover).
    reset: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("reset", &self.reset)
            .finish_non_exhaustive()
    }
}

/// The compression level: zlib's default, the usual ratio; a broadcast pays it once.
const LEVEL: u32 = 6;

impl Deflater {
    /// A compressor with a window of `window_bits` (8 is made 9, see [`MIN_WINDOW_BITS`]);
    /// `reset`: no context takeover.
    pub fn new(window_bits: u8, reset: bool) -> Self {
        let bits = window_bits.clamp(MIN_WINDOW_BITS + 1, MAX_WINDOW_BITS);
        Self {
            stream: Compress::new_with_window_bits(Compression::new(LEVEL), false, bits),
            reset,
        }
    }

    /// Deflates `payload` and appends the result (without the final `00 00 ff ff`) to `out`.
    /// Returns `false`, with `out` as it was, when it would not be smaller than `payload`:
    /// the message then goes plain (RFC 7692 lets any message go plain). A compressor with
    /// context takeover is reset then, since its window moved on over bytes the peer will
    /// never inflate: its next message refers to nothing before it, which every peer
    /// inflates, whatever its own window holds.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        // Room for incompressible data: deflate adds 5 bytes per 16 KiB block, and a flush.
        out.reserve(payload.len() + payload.len() / 1024 + 64);
        let before = self.stream.total_in();
        loop {
            let consumed = (self.stream.total_in() - before) as usize;
            if out.len() == out.capacity() {
                out.reserve(4096);
            }
            let status = self
                .stream
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync);
            let done = (self.stream.total_in() - before) as usize == payload.len()
                && out.len() < out.capacity();
            if status.is_err() || done {
                break;
            }
        }
        let ok = out.len() - start >= TAIL.len()
            && out.ends_with(&TAIL)
            && out.len() - start - TAIL.len() < payload.len();
        if self.reset || !ok {
            self.stream.reset();
        }
        if ok {
            out.truncate(out.len() - TAIL.len());
        } else {
            out.truncate(start);
        }
        ok
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (close with 1009).
    TooLarge,
    /// It is not valid deflate data (close with 1007).
    Invalid,
}

/// Decompresses messages, one at a time.
pub struct Inflater {
    stream: Decompress,
    reset: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("reset", &self.reset)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// A decompressor for a peer whose window is at most `window_bits`; `reset`: the peer
    /// uses no context takeover.
    pub fn new(window_bits: u8, reset: bool) -> Self {
        let bits = window_bits.clamp(MIN_WINDOW_BITS + 1, MAX_WINDOW_BITS);
        Self {
            stream: Decompress::new_with_window_bits(false, bits),
            reset,
        }
    }

    /// Inflates one message: `compressed` is its payload, to which the final
    /// `00 00 ff ff` is appended here. The output counts against `limit` as it grows: at
    /// most `limit + 1` bytes are ever produced (a decompression bomb costs no more).
    pub fn inflate(
        &mut self,
        compressed: &mut BytesMut,
        limit: usize,
    ) -> Result<Bytes, InflateError> {
        compressed.put_slice(&TAIL);
        let result = self.inflate_all(compressed, limit);
        if self.reset || result.is_err() {
            self.stream.reset(false);
        }
        result
    }

    fn inflate_all(&mut self, input: &[u8], limit: usize) -> Result<Bytes, InflateError> {
        // Start near what deflate usually achieves on text, then double, within the limit.
        let first = input.len().saturating_mul(4).max(64);
        let mut out = Vec::with_capacity(first.min(limit.saturating_add(1)));
        let before = self.stream.total_in();
        loop {
            let consumed = (self.stream.total_in() - before) as usize;
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooLarge);
                }
                let room = out.len().max(4096).min(limit.saturating_add(1) - out.len());
                out.reserve_exact(room);
            }
            let produced = out.len();
            let status = self
                .stream
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            if out.len() > limit {
                return Err(InflateError::TooLarge);
            }
            let consumed_now = (self.stream.total_in() - before) as usize;
            let all_in = consumed_now == input.len();
            let room_left = out.len() < out.capacity();
            match status {
                // A final block: the message is complete (what follows is our tail).
                Status::StreamEnd => {
                    self.stream.reset(false);
                    break;
                }
                _ if all_in && room_left => break,
                // No progress with room to write and input left: not deflate.
                Status::BufError
                    if consumed_now == consumed && out.len() == produced && room_left =>
                {
                    return Err(InflateError::Invalid);
                }
                _ => {}
            }
        }
        Ok(Bytes::from(out))
    }
}

thread_local! {
    /// This thread's compressors without context takeover, by window bits 9 to 15
    /// (allocated on first use: most servers only ever use 15).
    static DEFLATERS: RefCell<[Option<Deflater>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
    /// This thread's decompressor for peers without context takeover (window 15 inflates
    /// any window).
    static INFLATER: RefCell<Option<Inflater>> = const { RefCell::new(None) };
}

/// Deflates `payload` with this thread's shared compressor for `window_bits` and frames it
/// (RSV1 set); `None` when deflate would not make it smaller.
pub fn deflate_frame(opcode: u8, payload: &[u8], window_bits: u8) -> Option<Bytes> {
    let mut deflated = Vec::new();
    deflate_shared(payload, window_bits, &mut deflated)
        .then(|| super::frame::encode_deflated_frame(opcode, &deflated))
}

/// Deflates `payload` with this thread's shared compressor (no context takeover) for
/// `window_bits`, appending to `out` as [`Deflater::compress`] does; `false` when deflate
/// would not make it smaller.
pub fn deflate_shared(payload: &[u8], window_bits: u8, out: &mut Vec<u8>) -> bool {
    let bits = window_bits.clamp(MIN_WINDOW_BITS + 1, MAX_WINDOW_BITS);
    DEFLATERS.with(|cell| {
        let mut deflaters = cell.borrow_mut();
        deflaters[usize::from(bits - 9)]
            .get_or_insert_with(|| Deflater::new(bits, true))
            .compress(payload, out)
    })
}

/// Inflates one message with this thread's shared decompressor (peers without context
/// takeover).
pub fn inflate_shared(compressed: &mut BytesMut, limit: usize) -> Result<Bytes, InflateError> {
    INFLATER.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| Inflater::new(MAX_WINDOW_BITS, true))
            .inflate(compressed, limit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(offer: &str) -> Option<String> {
        negotiate([offer], ServerPolicy::default()).map(|(_, response)| response)
    }

    #[test]
    fn the_shared_policy_answers_every_acceptable_offer_without_context_takeover() {
        let both = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        for (offer, response) in [
            ("permessage-deflate", Some(both.to_owned())),
            // Browsers: client_max_window_bits without a value; we need not name one.
            (
                "permessage-deflate; client_max_window_bits",
                Some(both.to_owned()),
            ),
            (
                "permessage-deflate; client_max_window_bits=10",
                Some(format!("{both}; client_max_window_bits=10")),
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                Some(format!("{both}; server_max_window_bits=8")),
            ),
            (
                "permessage-deflate; server_max_window_bits=\"12\"",
                Some(format!("{both}; server_max_window_bits=12")),
            ),
            (
                "PerMessage-Deflate; Server_No_Context_Takeover",
                Some(both.to_owned()),
            ),
            // Refused: unknown parameter, bad or missing values, repeats.
            ("permessage-deflate; foo", None),
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; server_max_window_bits=7", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=010", None),
            ("permessage-deflate; client_max_window_bits=abc", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                None,
            ),
            ("x-webkit-deflate-frame", None),
            ("", None),
        ] {
            assert_eq!(server(offer), response, "offer {offer:?}");
        }
    }

    #[test]
    fn the_first_acceptable_offer_wins_across_commas_and_header_lines() {
        let (params, response) = negotiate(
            [
                "permessage-deflate; server_max_window_bits=20, x-other",
                "permessage-deflate; server_max_window_bits=9, permessage-deflate",
            ],
            ServerPolicy::default(),
        )
        .unwrap();
        assert_eq!(params.server_max_window_bits, 9);
        assert!(response.ends_with("server_max_window_bits=9"), "{response}");
    }

    #[test]
    fn context_takeover_is_kept_when_the_policy_allows_it() {
        let policy = ServerPolicy {
            no_context_takeover: false,
            client_max_window_bits: MAX_WINDOW_BITS,
        };
        let (params, response) = negotiate(["permessage-deflate"], policy).unwrap();
        assert_eq!(response, "permessage-deflate");
        assert!(!params.server_no_context_takeover && !params.client_no_context_takeover);
        let (_, response) =
            negotiate(["permessage-deflate; client_no_context_takeover"], policy).unwrap();
        assert_eq!(response, "permessage-deflate; client_no_context_takeover");
    }

    #[test]
    fn a_client_window_cap_is_named_or_the_offer_declined() {
        let policy = ServerPolicy {
            no_context_takeover: false,
            client_max_window_bits: 10,
        };
        // Cannot be limited: declined.
        assert!(negotiate(["permessage-deflate"], policy).is_none());
        let (params, response) =
            negotiate(["permessage-deflate; client_max_window_bits"], policy).unwrap();
        assert_eq!(params.client_max_window_bits, 10);
        assert_eq!(response, "permessage-deflate; client_max_window_bits=10");
        let (params, _) =
            negotiate(["permessage-deflate; client_max_window_bits=9"], policy).unwrap();
        assert_eq!(params.client_max_window_bits, 9);
    }

    #[test]
    fn the_client_checks_the_response() {
        assert_eq!(accept_response([]), Ok(None));
        let params = accept_response([
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=12",
        ])
        .unwrap()
        .unwrap();
        assert!(params.server_no_context_takeover && !params.client_no_context_takeover);
        assert_eq!(params.client_max_window_bits, 12);
        assert_eq!(params.server_max_window_bits, 15);
        for bad in [
            "x-other",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; bogus",
        ] {
            assert!(accept_response([bad]).is_err(), "{bad}");
        }
    }

    fn roundtrip(payload: &[u8], bits: u8) {
        let mut deflater = Deflater::new(bits, true);
        let mut out = Vec::new();
        assert!(deflater.compress(payload, &mut out), "did not shrink");
        assert!(!out.ends_with(&TAIL));
        let mut inflater = Inflater::new(bits, true);
        let inflated = inflater
            .inflate(&mut BytesMut::from(&out[..]), payload.len())
            .unwrap();
        assert_eq!(&inflated[..], payload);
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        for i in 0..n {
            s.push_str(&format!(
                r#"{{"id":{i},"user":"user-{}","text":"message number {i} to the room","ok":true}},"#,
                i % 17
            ));
        }
        s.push(']');
        s.into_bytes()
    }

    #[test]
    fn messages_survive_a_round_trip_at_every_window() {
        for bits in 8..=15 {
            roundtrip(&json(2_000), bits);
        }
        roundtrip(&json(3), 15);
    }

    #[test]
    fn what_would_not_shrink_is_left_plain() {
        let random: Vec<u8> = (0..4096).map(|_| rand::random()).collect();
        let mut out = vec![1, 2, 3];
        assert!(!Deflater::new(15, true).compress(&random, &mut out));
        assert_eq!(out, [1, 2, 3]);
        assert!(deflate_frame(crate::websocket::protocol::OP_BINARY, &random, 15).is_none());
        assert!(deflate_frame(crate::websocket::protocol::OP_TEXT, b"a", 15).is_none());
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 * 1024 * 1024];
        let mut out = Vec::new();
        assert!(Deflater::new(15, true).compress(&zeros, &mut out));
        assert!(out.len() < 20_000, "{}", out.len());
        let mut inflater = Inflater::new(15, true);
        let limit = 64 * 1024;
        assert_eq!(
            inflater.inflate(&mut BytesMut::from(&out[..]), limit),
            Err(InflateError::TooLarge)
        );
        // Exactly at the limit passes.
        let mut inflater = Inflater::new(15, true);
        let exact = inflater
            .inflate(&mut BytesMut::from(&out[..]), zeros.len())
            .unwrap();
        assert_eq!(exact.len(), zeros.len());
    }

    #[test]
    fn garbage_is_invalid_and_the_inflater_recovers() {
        let mut inflater = Inflater::new(15, true);
        assert_eq!(
            inflater.inflate(&mut BytesMut::from(&[0xff, 0xff, 0xff, 0x00][..]), 1024),
            Err(InflateError::Invalid)
        );
        let mut out = Vec::new();
        Deflater::new(15, true).compress(&json(10), &mut out);
        let ok = inflater
            .inflate(&mut BytesMut::from(&out[..]), 1 << 20)
            .unwrap();
        assert_eq!(&ok[..], &json(10)[..]);
    }

    #[test]
    fn context_takeover_carries_the_window_between_messages() {
        let mut deflater = Deflater::new(15, false);
        let mut inflater = Inflater::new(15, false);
        let message = json(20);
        let mut sizes = Vec::new();
        for _ in 0..2 {
            let mut out = Vec::new();
            assert!(deflater.compress(&message, &mut out));
            sizes.push(out.len());
            let back = inflater
                .inflate(&mut BytesMut::from(&out[..]), 1 << 20)
                .unwrap();
            assert_eq!(&back[..], &message[..]);
        }
        // The second refers back to the first: far smaller.
        assert!(sizes[1] * 4 < sizes[0], "{sizes:?}");
    }

    #[test]
    fn a_context_compressor_that_gave_up_starts_afresh() {
        // With context takeover, a message that would not shrink goes plain: the peer never
        // inflates it, so the compressor must not refer back to it afterwards.
        let mut deflater = Deflater::new(15, false);
        let mut inflater = Inflater::new(15, false);
        let message = json(20);
        let mut out = Vec::new();
        assert!(deflater.compress(&message, &mut out));
        let back = inflater
            .inflate(&mut BytesMut::from(&out[..]), 1 << 20)
            .unwrap();
        assert_eq!(&back[..], &message[..]);
        let random: Vec<u8> = (0..4096).map(|_| rand::random()).collect();
        let mut skipped = Vec::new();
        assert!(!deflater.compress(&random, &mut skipped));
        assert!(skipped.is_empty());
        // The next messages inflate with the peer's window, which never saw `random`.
        for _ in 0..3 {
            let mut out = Vec::new();
            assert!(deflater.compress(&message, &mut out));
            let back = inflater
                .inflate(&mut BytesMut::from(&out[..]), 1 << 20)
                .unwrap();
            assert_eq!(&back[..], &message[..]);
        }
    }
}
