//! A minimal read-mostly WebSocket client for fan-out subscribers.
//!
//! Ten thousand subscribers on one load-generator core must not be what limits a fan-out
//! measurement, so subscribers skip tungstenite: they do the upgrade by hand, then read
//! server frames (never masked) straight out of a small buffer, timestamp every frame of a
//! read with the time that read returned, and answer pings and closes themselves (client
//! frames are masked, as RFC 6455 requires).

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::BytesMut;
use svc_infra::websocket::protocol::{
    FrameHeader, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, deflate, encode_masked_frame,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// An upgraded connection and its unread bytes.
#[derive(Debug)]
pub(crate) struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// permessage-deflate was negotiated: frames with RSV1 are inflated.
    deflate: bool,
    /// Compressed frames are counted, not inflated.
    skip_inflate: bool,
    /// Bytes read from the socket since the upgrade (what the server wrote).
    pub(crate) bytes_read: u64,
}

/// A frame the server sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A complete (FIN) text frame.
    Text(&'a [u8]),
    /// A complete compressed text frame left compressed ([`RawWs::skip_inflate`]).
    Compressed,
    /// A close frame, with its payload (code and reason).
    Close(&'a [u8]),
    /// A ping, already answered.
    Ping,
    /// Anything else: binary, pong, continuation or a fragment.
    Other,
}

/// The fixed handshake key of RFC 6455 §1.3 (any 16-byte nonce will do for a benchmark).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A masking key for the few frames a subscriber sends.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

impl RawWs {
    /// Connects and upgrades `path`; the whole exchange is bounded by `within`.
    /// Connects and upgrades `path`, offering `offer` as `Sec-WebSocket-Extensions`; the
    /// whole exchange is bounded by `within`. Also returns how long the TCP connect took (a
    /// SYN the server's kernel dropped shows here as the 1 s retransmission delay).
    pub(crate) async fn connect_timed(
        host: &str,
        port: u16,
        path: &str,
        buffer: usize,
        within: Duration,
        offer: Option<&str>,
    ) -> anyhow::Result<(Self, Duration)> {
        let attempt = async {
            let started = Instant::now();
            let mut tcp = TcpStream::connect((host, port)).await?;
            let tcp_connect = started.elapsed();
            tcp.set_nodelay(true)?;
            let extension = offer
                .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
                .unwrap_or_default();
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
                 {extension}\r\n"
            );
            tcp.write_all(request.as_bytes()).await?;
            let mut buf = vec![0_u8; buffer.max(1024)];
            let mut end = 0;
            let header_end = loop {
                if end == buf.len() {
                    bail!("upgrade response header larger than {} bytes", buf.len());
                }
                let n = tcp.read(&mut buf[end..]).await?;
                if n == 0 {
                    bail!("server closed during the upgrade");
                }
                end += n;
                if let Some(at) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            if !buf.starts_with(b"HTTP/1.1 101") {
                let line = buf[..header_end]
                    .split(|&b| b == b'\r')
                    .next()
                    .unwrap_or_default();
                bail!("upgrade refused: {}", String::from_utf8_lossy(line));
            }
            let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
            let deflate = offer.is_some()
                && head.lines().any(|l| {
                    l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate")
                });
            let ws = Self {
                tcp,
                buf,
                start: header_end,
                bytes_read: (end - header_end) as u64,
                end,
                deflate,
                skip_inflate: false,
            };
            anyhow::Ok((ws, tcp_connect))
        };
        timeout(within, attempt)
            .await
            .map_err(|_| anyhow!("connect to {path} timed out after {within:?}"))?
            .with_context(|| format!("connect to ws://{host}:{port}{path}"))
    }

    /// Leaves compressed text frames compressed ([`Frame::Compressed`]): ten thousand
    /// subscribers inflating every message would make one load-generator core, not the
    /// server, what a fan-out measures.
    pub(crate) fn skip_inflate(&mut self) {
        self.skip_inflate = true;
    }

    /// Whether permessage-deflate was negotiated.
    pub(crate) fn deflate(&self) -> bool {
        self.deflate
    }

    /// Waits for bytes (unbounded: callers race it against their stop signal); returns false
    /// when the server closed the TCP connection.
    pub(crate) async fn fill(&mut self) -> std::io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                // One frame larger than the buffer.
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.tcp.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        self.bytes_read += n as u64;
        Ok(n > 0)
    }

    /// Takes every complete frame out of the buffer, answering pings (bounded by
    /// `write_timeout`); `on_frame` sees each one.
    pub(crate) async fn drain(
        &mut self,
        write_timeout: Duration,
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> anyhow::Result<()> {
        while let Some((header, len)) = parse_header(&self.buf[self.start..self.end])? {
            let payload = self.start + header.len..self.start + header.len + len;
            self.start = payload.end;
            match header.opcode {
                // Compressed (permessage-deflate): inflated with this thread's inflater
                // (the server resets its compressor per message).
                OP_TEXT if header.fin && header.rsv & 0b100 != 0 && self.skip_inflate => {
                    on_frame(Frame::Compressed);
                }
                OP_TEXT if header.fin && header.rsv & 0b100 != 0 && self.deflate => {
                    let mut packed = BytesMut::from(&self.buf[payload]);
                    let text = deflate::inflate_shared(&mut packed, 64 << 20)
                        .map_err(|e| anyhow!("bad compressed frame: {e:?}"))?;
                    on_frame(Frame::Text(&text));
                }
                OP_TEXT if header.fin => on_frame(Frame::Text(&self.buf[payload])),
                OP_CLOSE => on_frame(Frame::Close(&self.buf[payload])),
                OP_PING => {
                    let reply = encode_masked_frame(OP_PONG, &self.buf[payload], MASK);
                    timeout(write_timeout, self.tcp.write_all(&reply))
                        .await
                        .map_err(|_| anyhow!("pong write timed out"))??;
                    on_frame(Frame::Ping);
                }
                _ => on_frame(Frame::Other),
            }
        }
        Ok(())
    }

    /// Sends a close frame (1000) and drops the connection.
    pub(crate) async fn close(mut self, write_timeout: Duration) {
        let frame = encode_masked_frame(OP_CLOSE, &1000_u16.to_be_bytes(), MASK);
        let _ = timeout(write_timeout, self.tcp.write_all(&frame)).await;
    }
}

/// The header and payload length of the frame at the start of `bytes`, if it is complete.
fn parse_header(bytes: &[u8]) -> anyhow::Result<Option<(FrameHeader, usize)>> {
    let Some(header) = FrameHeader::parse(bytes).map_err(|e| anyhow!(e.reason()))? else {
        return Ok(None);
    };
    if header.mask.is_some() {
        bail!("the server sent a masked frame");
    }
    let len = usize::try_from(header.payload_len).map_err(|_| anyhow!("frame too large"))?;
    if len > 64 * 1024 * 1024 {
        bail!("frame of {len} bytes is larger than 64 MiB");
    }
    Ok((bytes.len() >= header.len + len).then_some((header, len)))
}

/// The unsigned integer after `"key":` in a flat JSON object, without a JSON parser.
pub(crate) fn json_u64(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text
        .windows(key.len() + 3)
        .position(|w| w[0] == b'"' && &w[1..=key.len()] == key && &w[key.len() + 1..] == b"\":")?;
    let digits = text[at + key.len() + 3..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for &d in digits {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_each_length_form() {
        let lens = |b: &[u8]| {
            parse_header(b)
                .ok()
                .map(|h| h.map(|(h, len)| (h.len, len, h.opcode)))
        };
        assert_eq!(lens(&[0x81]), Some(None));
        assert_eq!(
            lens(&[0x81, 3, b'a', b'b', b'c']),
            Some(Some((2, 3, OP_TEXT)))
        );
        assert_eq!(lens(&[0x81, 3, b'a']), Some(None));
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.resize(4 + 256, 0);
        assert_eq!(
            lens(&long),
            Some(Some((4, 256, svc_infra::websocket::protocol::OP_BINARY)))
        );
        assert!(parse_header(&[0x81, 0x83, 0, 0, 0, 0]).is_err());
        let huge = [0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 0];
        assert!(parse_header(&huge).is_err());
    }

    #[test]
    fn json_u64_reads_flat_fields() {
        let text = br#"{"type":"broadcast","seq":17,"ts": 1234567890123,"pad":"xx"}"#;
        assert_eq!(json_u64(text, b"seq"), Some(17));
        assert_eq!(json_u64(text, b"ts"), Some(1_234_567_890_123));
        assert_eq!(json_u64(text, b"missing"), None);
        assert_eq!(json_u64(br#"{"seq":"x"}"#, b"seq"), None);
        assert_eq!(
            json_u64(br#"{"seq":99999999999999999999999}"#, b"seq"),
            None
        );
    }
}
