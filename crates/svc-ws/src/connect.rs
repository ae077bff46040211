//! `svc-ws connect URL`: a pipe/interactive WebSocket client, like websocat.
//!
//! Each stdin line is sent as a text message; each message received is written to stdout on
//! its own line: text as is, binary as lowercase hex. End of stdin (or Ctrl-C) closes the
//! connection with 1000. Timeouts, keepalive and size limits come from the `WS_*`
//! environment variables.
//!
//! The last line on stderr says why the connection ended, from what the library reports
//! ([`WebSocketError`] and the close status), and the exit status follows it: 0 after a
//! normal close (1000, 1001, 1005) or one we started (end of stdin, Ctrl-C), 1 otherwise.
//!
//! | Why | Last line on stderr | Exit |
//! |---|---|---|
//! | End of stdin, Ctrl-C | `svc-ws: closed: end of input` / `svc-ws: closed: interrupted` | 0 |
//! | The server closed normally | `svc-ws: closed by the server: 1001 "going away"` | 0 |
//! | The server closed otherwise | `svc-ws: closed by the server: 1008 "policy violation"` | 1 |
//! | A message over the limit (we closed with 1009) | `svc-ws: message too big: 209715200 bytes, limit 1048576 (WS_MAX_MESSAGE_SIZE)` | 1 |
//! | A stdin line over the limit (nothing sent) | `svc-ws: message too big to send: 2000000 bytes, limit 1048576 (WS_MAX_MESSAGE_SIZE)` | 1 |
//! | The server broke the protocol (we closed with 1002/1007) | `svc-ws: protocol error: Encountered invalid opcode: 4` | 1 |
//! | No pong in time (we closed with 1011) | `svc-ws: keepalive timeout: no pong within 20 s (WS_PING_TIMEOUT)` | 1 |
//! | The connection dropped without a close frame | `svc-ws: connection lost: no close frame (1006)` | 1 |
//! | The upgrade was answered 401/403 | `svc-ws: authentication failed: HTTP 401: {"error":"unauthorized"}` | 1 |
//! | The upgrade was answered another status | `svc-ws: handshake refused: HTTP 503 Service Unavailable (Retry-After: 5 s): busy` | 1 |
//! | No answer to the upgrade in time | `svc-ws: handshake timeout: no answer within 10 s (WS_OPEN_TIMEOUT)` | 1 |
//! | TCP failed | `svc-ws: cannot connect to ws://127.0.0.1:1/: connection refused` (or `reset`, …) | 1 |
//! | TLS failed | `svc-ws: TLS error: invalid peer certificate: UnknownIssuer` | 1 |
//!
//! Bad arguments and a bad `WS_*` value stop it before connecting, with `Error: …` and 1.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use futures_util::StreamExt;
use svc_infra::websocket::{
    ConnectFailure, RootCertificate, WebSocketClient, WebSocketConfig, WebSocketError,
    WebSocketMessage, redact_url,
};
use tokio::{io::AsyncWriteExt, sync::mpsc};

/// Arguments of `svc-ws connect`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each stdin line is sent as a text message. Each message received is printed on its own line: \
text as is, binary as lowercase hex. End of stdin or Ctrl-C closes with 1000. \
The last line on stderr says why the connection ended: the server's close code and reason \
(svc-ws: closed by the server: 1008 \"policy violation\"), or what went wrong (message too \
big with its size and limit, protocol error, keepalive or handshake timeout, the HTTP status \
of a refused handshake, connection refused or reset, TLS). \
Exit status: 0 after a normal close (1000, 1001, 1005) or end of stdin, 1 otherwise. \
Timeouts, keepalive and size limits come from WS_* variables (see the svc-infra docs).")]
pub(crate) struct Args {
    /// The ws:// or wss:// URL.
    url: String,
    /// Extra request header `Name: value` (repeatable), e.g. `-H 'Authorization: Bearer …'`.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Subprotocol to offer (repeatable, in order of preference).
    #[arg(short = 'p', long = "subprotocol", value_name = "PROTOCOL")]
    subprotocols: Vec<String>,
    /// Only send stdin lines that are valid JSON (others are reported on stderr and skipped).
    #[arg(long)]
    json: bool,
    /// Trust the certificates in this PEM file as roots, for private CAs (repeatable).
    #[arg(long = "root-cert", value_name = "PEM_FILE")]
    root_certs: Vec<PathBuf>,
    /// Also trust the operating system's root certificates.
    #[arg(long)]
    native_roots: bool,
}

/// Stdin lines waiting to be sent; small, since the socket's own queue follows.
const STDIN_QUEUE: usize = 16;

/// Most characters of a refused handshake's body shown on the last line.
const BODY_SHOWN: usize = 200;

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = WebSocketConfig::from_env().context("reading WS_* settings")?;
    let mut builder = WebSocketClient::builder(args.url.as_str())
        .config(config)
        .subprotocols(args.subprotocols)
        .native_roots(args.native_roots);
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header {header:?}: expected NAME:VALUE"))?;
        builder = builder.header(name.trim(), value.trim());
    }
    for path in &args.root_certs {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let certs = RootCertificate::from_pem(pem)
            .with_context(|| format!("reading certificates from {}", path.display()))?;
        builder = builder.root_certificates(certs);
    }

    let ending = match builder.connect().await {
        Ok(ws) => {
            tracing::info!(
                url = %redact_url(&args.url),
                subprotocol = ?ws.subprotocol(),
                "connected"
            );
            session(ws, args.json).await?
        }
        Err(e) => Ending::from_error(&e, None),
    };
    eprintln!("svc-ws: {}", ending.line);
    Ok(if ending.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Pipes stdin to `ws` and `ws` to stdout until the connection ends; says how it ended.
/// Errors are only local ones (stdout); everything about the connection is in the
/// [`Ending`].
async fn session(mut ws: WebSocketClient, json: bool) -> anyhow::Result<Ending> {
    // Stdin is read on a plain thread: a blocked read must not hold up the runtime's exit.
    let (lines_tx, mut lines) = mpsc::channel::<String>(STDIN_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });

    let mut stdout = tokio::io::stdout();
    let mut stdin_open = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    // Why we closed, once we have.
    let mut we_closed: Option<&'static str> = None;
    loop {
        tokio::select! {
            item = ws.next() => match item {
                Some(Ok(message)) => {
                    stdout.write_all(render(&message).as_bytes()).await?;
                    stdout.flush().await?;
                }
                Some(Err(e)) => return Ok(Ending::from_error(&e, Some(&ws))),
                None => break,
            },
            line = lines.recv(), if stdin_open && ws.is_connected() => match line {
                Some(line) => {
                    if json && let Err(e) = serde_json::from_str::<serde_json::Value>(&line) {
                        eprintln!("not sent, not JSON ({e}): {line}");
                        continue;
                    }
                    match ws.send(line).await {
                        Ok(()) => {}
                        Err(WebSocketError::MessageTooLarge { size, limit }) => {
                            // Nothing was sent; stop rather than drop a line of the input.
                            let _ = ws.close(1000, "").await;
                            return Ok(Ending::failed(format!(
                                "message too big to send: {size} bytes, limit {limit} \
                                 (WS_MAX_MESSAGE_SIZE)"
                            )));
                        }
                        // The connection ended meanwhile: the stream says why, next.
                        Err(_) => {}
                    }
                }
                None => {
                    stdin_open = false;
                    we_closed = we_closed.or(Some("end of input"));
                    if let Err(e) = ws.close(1000, "").await {
                        return Ok(Ending::from_error(&e, Some(&ws)));
                    }
                }
            },
            result = &mut ctrl_c, if !interrupted => {
                result?;
                interrupted = true;
                we_closed = Some("interrupted");
                if let Err(e) = ws.close(1000, "").await {
                    return Ok(Ending::from_error(&e, Some(&ws)));
                }
            }
        }
    }
    // The stream ends quietly only after a close we asked for or a normal close by the peer.
    Ok(match (ws.close_status(), we_closed) {
        (Some((code, reason)), _) if ws.closed_by_peer() => Ending::closed_by_server(code, &reason),
        (_, Some(why)) => Ending::ok(format!("closed: {why}")),
        // Not expected (a failure yields an error first); never call it a success.
        (Some((code, reason)), None) => {
            Ending::failed(format!("connection ended: {code} {reason:?}"))
        }
        (None, None) => Ending::failed("connection ended".to_owned()),
    })
}

/// How a connection ended: the last line on stderr (after `svc-ws: `) and whether the exit
/// status is 0.
#[derive(Debug, PartialEq, Eq)]
struct Ending {
    line: String,
    ok: bool,
}

impl Ending {
    fn ok(line: String) -> Self {
        Self { line, ok: true }
    }

    fn failed(line: String) -> Self {
        Self { line, ok: false }
    }

    /// The peer's close frame: 0 for 1000, 1001 and 1005, 1 for any other code.
    fn closed_by_server(code: u16, reason: &str) -> Self {
        let line = if reason.is_empty() {
            format!("closed by the server: {code}")
        } else {
            format!("closed by the server: {code} {reason:?}")
        };
        Self {
            line,
            ok: matches!(code, 1000 | 1001 | 1005),
        }
    }

    /// What the library reported, in one line. `ws` is the client once connected: it tells
    /// a close frame from the server apart from our own failing of the connection.
    fn from_error(e: &WebSocketError, ws: Option<&WebSocketClient>) -> Self {
        let line = match e {
            WebSocketError::ConnectionClosed { code, reason } => {
                if ws.is_some_and(WebSocketClient::closed_by_peer) {
                    return Self::closed_by_server(*code, reason);
                }
                match (*code, reason.as_str()) {
                    (1006, _) => "connection lost: no close frame (1006)".to_owned(),
                    (1011, "keepalive ping timeout") => {
                        match ws.and_then(|ws| ws.config().ping_timeout) {
                            Some(t) => format!(
                                "keepalive timeout: no pong within {} (WS_PING_TIMEOUT)",
                                seconds(t)
                            ),
                            None => "keepalive timeout: no pong (WS_PING_TIMEOUT)".to_owned(),
                        }
                    }
                    (code, "") => format!("connection failed: {code}"),
                    (code, reason) => format!("connection failed: {code} {reason:?}"),
                }
            }
            WebSocketError::MessageTooLarge { size, limit } => {
                format!("message too big: {size} bytes, limit {limit} (WS_MAX_MESSAGE_SIZE)")
            }
            WebSocketError::Protocol(what) => format!("protocol error: {what}"),
            WebSocketError::Timeout {
                operation: "opening handshake",
                after,
            } => format!(
                "handshake timeout: no answer within {} (WS_OPEN_TIMEOUT)",
                seconds(*after)
            ),
            WebSocketError::Timeout { operation, after } => {
                format!("timed out: {operation} after {}", seconds(*after))
            }
            WebSocketError::Authentication { status, body } => {
                format!("authentication failed: HTTP {status}{}", shown_body(body))
            }
            WebSocketError::ConnectionFailed { url, source } => match source {
                // A `?token=` is the user's, but this line may end up in a CI log.
                ConnectFailure::HttpStatus {
                    status,
                    reason,
                    body,
                    retry_after,
                } => {
                    let mut line = format!("handshake refused: HTTP {status}");
                    if !reason.is_empty() {
                        line.push(' ');
                        line.push_str(&one_line(reason, BODY_SHOWN));
                    }
                    if let Some(after) = retry_after {
                        line.push_str(&format!(" (Retry-After: {})", seconds(*after)));
                    }
                    line.push_str(&shown_body(body));
                    line
                }
                ConnectFailure::Io(io) => {
                    format!("cannot connect to {}: {}", redact_url(url), io_reason(io))
                }
                ConnectFailure::Tls(why) => format!("TLS error: {why}"),
                ConnectFailure::InvalidRequest(why) => {
                    format!("cannot connect to {}: {why}", redact_url(url))
                }
                other => format!("cannot connect to {}: {other}", redact_url(url)),
            },
            WebSocketError::Io(io) => format!("connection failed: {}", io_reason(io)),
            other => other.to_string(),
        };
        Self::failed(line)
    }
}

/// An I/O error in words, without the OS error number for the usual network ones.
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::ConnectionReset => "connection reset by the server".to_owned(),
        ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
        ErrorKind::TimedOut => "timed out".to_owned(),
        _ => e.to_string(),
    }
}

/// `: body` on one line (at most [`BODY_SHOWN`] characters), or nothing for an empty body.
fn shown_body(body: &str) -> String {
    let body = one_line(body, BODY_SHOWN);
    if body.is_empty() {
        body
    } else {
        format!(": {body}")
    }
}

/// `text` with every run of whitespace or control characters made one space, trimmed, and
/// cut after `max` characters (marked with `…`): what the server says must stay on one line.
fn one_line(text: &str, max: usize) -> String {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let line = words.join(" ");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", line[..cut].trim_end()),
        None => line,
    }
}

/// A duration as seconds: `20 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// A message as one output line: text as is, binary as lowercase hex.
fn render(message: &WebSocketMessage) -> String {
    let mut line = match message.as_text() {
        Some(text) => text.to_owned(),
        None => {
            use std::fmt::Write as _;
            let mut hex = String::with_capacity(message.len() * 2);
            for b in message.as_bytes() {
                let _ = write!(hex, "{b:02x}");
            }
            hex
        }
    };
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_is_one_line() {
        let line = |e: WebSocketError| Ending::from_error(&e, None);
        assert_eq!(
            line(WebSocketError::MessageTooLarge {
                size: 5_000_000,
                limit: 1_048_576
            }),
            Ending::failed(
                "message too big: 5000000 bytes, limit 1048576 (WS_MAX_MESSAGE_SIZE)".to_owned()
            )
        );
        assert_eq!(
            line(WebSocketError::Timeout {
                operation: "opening handshake",
                after: Duration::from_millis(2500),
            })
            .line,
            "handshake timeout: no answer within 2.5 s (WS_OPEN_TIMEOUT)"
        );
        let refused = ConnectFailure::HttpStatus {
            status: 502,
            reason: "Bad Gateway".to_owned(),
            body: "<html>\n  <h1>upstream\r\n down</h1>\n</html>\n".to_owned(),
            retry_after: None,
        };
        assert_eq!(
            line(WebSocketError::failed("ws://x/", refused)).line,
            "handshake refused: HTTP 502 Bad Gateway: <html> <h1>upstream down</h1> </html>"
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            line(WebSocketError::failed("ws://x/", ConnectFailure::Io(reset))).line,
            "cannot connect to ws://x/: connection reset by the server"
        );
        assert_eq!(
            line(WebSocketError::closed(1006, "")).line,
            "connection lost: no close frame (1006)"
        );
        // Without a client to ask, a close is not blamed on the server.
        assert_eq!(
            line(WebSocketError::closed(1011, "write timed out")).line,
            r#"connection failed: 1011 "write timed out""#
        );
        assert!(!line(WebSocketError::Protocol("x".to_owned())).ok);
    }

    #[test]
    fn only_normal_closes_by_the_server_are_ok() {
        for (code, ok) in [
            (1000, true),
            (1001, true),
            (1005, true),
            (1011, false),
            (4000, false),
        ] {
            assert_eq!(Ending::closed_by_server(code, "").ok, ok, "{code}");
        }
        assert_eq!(
            Ending::closed_by_server(1008, "bad \"word\"\n").line,
            r#"closed by the server: 1008 "bad \"word\"\n""#
        );
    }

    #[test]
    fn one_line_collapses_and_cuts() {
        assert_eq!(one_line("  a\n\tb  c ", 200), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("é é é", 3), "é é…");
        assert_eq!(one_line("", 3), "");
    }

    #[test]
    fn renders_text_and_hex() {
        assert_eq!(render(&WebSocketMessage::text("héllo")), "héllo\n");
        assert_eq!(
            render(&WebSocketMessage::binary(vec![0u8, 15, 255])),
            "000fff\n"
        );
    }
}
