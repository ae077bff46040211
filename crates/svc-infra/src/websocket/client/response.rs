//! The HTTP response to our requests (the WebSocket handshake's, a proxy's `CONNECT`): its
//! head read exactly (where the HTTP parser ends it, within a size limit, however the bytes
//! were cut into reads) and parsed, and the start of a refused handshake's body kept for the
//! error report.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest response head (status line and headers) we accept.
pub(super) const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Most response-body bytes kept for an error report.
const MAX_ERROR_BODY: usize = 1024;
/// How long we wait for the body of a refused handshake (bounded by `open_timeout` too).
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads until the end of the response head; returns the head and any bytes after it. The
/// head ends where the HTTP parser that reads it says (a bare LF ends a line too); a head
/// that cannot be valid is returned as it is, for [`parse_head`] to say what is wrong. A
/// head over [`MAX_RESPONSE_HEAD`] bytes is refused. None of this depends on how the bytes
/// were cut into reads.
pub(super) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        let eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
        // A head can only end at a line feed: parse when one arrives, at the limit, or at
        // the end of the stream.
        if !(eof || chunk[..n].contains(&b'\n') || buf.len() >= MAX_RESPONSE_HEAD) {
            continue;
        }
        match head_len(&buf[..buf.len().min(MAX_RESPONSE_HEAD)]) {
            Ok(Some(end)) => {
                let tail = buf.split_off(end);
                return Ok((buf, tail));
            }
            Err(_) => return Ok((buf, Vec::new())),
            Ok(None) if buf.len() >= MAX_RESPONSE_HEAD => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("handshake response head larger than {MAX_RESPONSE_HEAD} bytes"),
                ));
            }
            Ok(None) if eof => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the handshake",
                ));
            }
            Ok(None) => {}
        }
    }
}

/// Most headers a response head may have.
const MAX_HEADERS: usize = 64;

/// The length of the response head at the start of `bytes`: `Some` once it is complete,
/// `None` while it may still become one, an error when it cannot.
fn head_len(bytes: &[u8]) -> Result<Option<usize>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    Ok(match httparse::Response::new(&mut headers).parse(bytes)? {
        httparse::Status::Complete(len) => Some(len),
        httparse::Status::Partial => None,
    })
}

/// A parsed response head.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: u16,
    pub(super) reason: String,
    headers: Vec<(String, String)>,
}

impl Head {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header that may be repeated, in order.
    pub(super) fn headers(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A `Retry-After` in delay-seconds (an HTTP date is not used by servers of ours and is
/// ignored), at most an hour.
pub(super) fn retry_after(value: &str) -> Option<std::time::Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(std::time::Duration::from_secs(secs.min(3600)))
}

pub(super) fn parse_head(bytes: &[u8]) -> std::result::Result<Head, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete HTTP response".to_owned()),
        Err(e) => return Err(format!("malformed HTTP response: {e}")),
    }
    if response.version != Some(1) {
        return Err("the response is not HTTP/1.1".to_owned());
    }
    Ok(Head {
        status: response.code.unwrap_or_default(),
        reason: response.reason.unwrap_or_default().to_owned(),
        headers: response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    })
}

/// Reads up to [`MAX_ERROR_BODY`] bytes of a refused handshake's body, within
/// [`ERROR_BODY_TIMEOUT`]; whatever arrived by then is returned (lossy UTF-8).
pub(super) async fn read_error_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: &Head,
    tail: Vec<u8>,
) -> String {
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = head
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok());
    // How many raw bytes we want: the declared length, else whatever comes (chunked or
    // close-delimited), in both cases at most a little over the 1 KiB we keep.
    let want = match (chunked, length) {
        (false, Some(n)) => n.min(MAX_ERROR_BODY),
        _ => MAX_ERROR_BODY + 64,
    };
    let mut raw = tail;
    let read_more = async {
        let mut chunk = [0u8; 512];
        while raw.len() < want && !(chunked && dechunk(&raw).1) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read_more).await;
    // A read may bring more than wanted: keep `want` bytes, so that the body reported does
    // not depend on how the server's bytes were cut into reads.
    raw.truncate(want);
    let body = if chunked { dechunk(&raw).0 } else { raw };
    let text = String::from_utf8_lossy(&body[..body.len().min(want).min(MAX_ERROR_BODY)]);
    text.into_owned()
}

/// Best-effort decoding of a chunked body: the data up to the first malformed or
/// incomplete chunk, and whether the body is over (its last chunk, or a malformed chunk
/// that more bytes would not mend).
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_field = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            return (out, true);
        };
        if size == 0 {
            return (out, true);
        }
        let start = line_end + 2;
        let end = start.saturating_add(size);
        out.extend_from_slice(&raw[start..end.min(raw.len())]);
        if raw.len() < end.saturating_add(2) {
            return (out, false); // the rest of the chunk has not arrived
        }
        raw = &raw[end + 2..];
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes `step` at a time, then the end of the stream.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_head_limit_holds_however_the_reads_cut_the_head() {
        // Found by the client_read fuzz target: the limit was checked only after a read
        // that did not complete the head, so a head of up to 1023 bytes over the limit
        // passed when it arrived in large reads and not in small ones.
        for len in [
            MAX_RESPONSE_HEAD - 1,
            MAX_RESPONSE_HEAD,
            MAX_RESPONSE_HEAD + 1,
            MAX_RESPONSE_HEAD + 500,
        ] {
            let mut head = b"HTTP/1.1 101 OK\r\nX-Pad: ".to_vec();
            head.resize(len - 4, b'p');
            head.extend_from_slice(b"\r\n\r\nafter");
            for step in [1, 7, 1024, usize::MAX] {
                let mut stream = Trickle { data: &head, step };
                let read = read_head(&mut stream).await;
                assert_eq!(
                    read.is_ok(),
                    len <= MAX_RESPONSE_HEAD,
                    "{len} bytes by {step}"
                );
                if let Ok((got, tail)) = read {
                    assert_eq!(got.len(), len);
                    assert_eq!(&tail[..], &b"after"[..tail.len()]);
                }
            }
        }
    }

    #[tokio::test]
    async fn the_head_ends_where_the_http_parser_says() {
        // Found by the client_read fuzz target: the head was cut at the first CRLF CRLF,
        // while httparse, which reads it, ends a line at a bare LF too; the bytes between
        // the two ends were lost, and a head of bare LFs never ended.
        let frames = b"\x81\x02hi\r\n\r\n";
        for head in [
            &b"HTTP/1.1 101 OK\r\nUpgrade: websocket\n\r\n"[..],
            b"HTTP/1.1 101 OK\nUpgrade: websocket\n\n",
        ] {
            let stream = [head, frames].concat();
            for step in [1, 3, usize::MAX] {
                let mut reads = Trickle {
                    data: &stream,
                    step,
                };
                let (got, tail) = read_head(&mut reads).await.unwrap();
                assert_eq!(got, head, "by {step}");
                assert_eq!(tail, &frames[..tail.len()]);
                assert_eq!(parse_head(&got).unwrap().status, 101);
            }
        }
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let done = |d: &[u8]| (d.to_vec(), true);
        let so_far = |d: &[u8]| (d.to_vec(), false);
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            done(b"hello world")
        );
        assert_eq!(dechunk(b"5\r\nhel"), so_far(b"hel"));
        assert_eq!(dechunk(b"5\r\nhello"), so_far(b"hello"));
        assert_eq!(dechunk(b"5\r\nhello\r\n"), so_far(b"hello"));
        assert_eq!(dechunk(b"zz\r\n"), done(b""));
        // Data that looks like the last chunk is data.
        assert_eq!(dechunk(b"5\r\n0\r\n\r\n\r\n1\r\n!"), so_far(b"0\r\n\r\n!"));
        // A size near usize::MAX neither overflows nor waits for more than arrives.
        assert_eq!(dechunk(b"ffffffffffffffff\r\nab"), so_far(b"ab"));
    }

    #[tokio::test]
    async fn the_error_body_does_not_depend_on_how_reads_cut_it() {
        // Found by the client_read fuzz target: a read could bring more than the bytes
        // wanted (the body reported then depended on the reads' sizes), and chunked bodies
        // stopped at data that looked like the last chunk.
        let head = Head {
            status: 401,
            reason: String::new(),
            headers: vec![("Transfer-Encoding".to_owned(), "chunked".to_owned())],
        };
        let mut body = Vec::new();
        for i in 0..400u32 {
            if i == 20 {
                body.extend_from_slice(b"5\r\n0\r\n\r\n\r\n");
            }
            body.extend_from_slice(format!("1\r\n{}\r\n", i % 10).as_bytes());
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let mut seen = Vec::new();
        for (tail, step) in [
            (0, 1),
            (0, 7),
            (0, 512),
            (0, usize::MAX),
            (900, 1),
            (1023, 3),
        ] {
            let mut rest = Trickle {
                data: &body[tail..],
                step,
            };
            seen.push(read_error_body(&mut rest, &head, body[..tail].to_vec()).await);
        }
        assert!(seen.iter().all(|b| *b == seen[0]), "{seen:?}");
        assert!(seen[0].contains("0\r\n\r\n"), "{:?}", seen[0]);
    }
}
