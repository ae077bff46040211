//! `svc-ws connect` as a process, against WebSocket servers on 127.0.0.1: well-behaved ones
//! (tokio-tungstenite) and raw TCP ones that misbehave. Each case asserts the exit status and
//! the exact last line on stderr, which says why the connection ended.

use std::{process::Stdio, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::oneshot,
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::derive_accept_key,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

const STEP: Duration = Duration::from_secs(20);

/// A server that sends one binary message, then echoes; or closes at once with `close`.
async fn server(close: Option<(u16, &'static str)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                if let Some((code, reason)) = close {
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                } else {
                    let _ = ws.send(Message::binary(vec![0xde, 0xad])).await;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("ws://{addr}/")
}

async fn run(url: &str, args: &[&str], stdin: &str) -> std::process::Output {
    run_with(url, args, &[], stdin, false).await
}

/// Runs `svc-ws connect URL ARGS` with `env`; with `keep_stdin_open` stdin stays open until
/// the process exits (so that only the server ends the connection).
async fn run_with(
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
    keep_stdin_open: bool,
) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svc-ws"))
        .arg("connect")
        .arg(url)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let (release, hold) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = input.write_all(stdin.as_bytes()).await;
        if keep_stdin_open {
            let _ = hold.await; // until the process has exited
        }
        // Dropping `input` closes stdin.
    });
    let out = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .expect("svc-ws connect did not exit")
        .unwrap();
    drop(release);
    out
}

/// The last line `svc-ws connect` wrote on stderr: why the connection ended.
fn last_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

/// Asserts the exit status and the last line on stderr.
#[track_caller]
fn assert_ended(out: &std::process::Output, code: i32, line: &str) {
    assert_eq!(
        (out.status.code(), last_line(out).as_str()),
        (Some(code), line),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// What a raw server does with the request before handing the socket on.
#[derive(Clone, Copy)]
enum Answer {
    /// A proper 101 response.
    Upgrade,
    /// Nothing: the socket is handed on as it is.
    Nothing,
}

/// A raw TCP server on 127.0.0.1 for one connection: reads the upgrade request, answers it
/// as `answer` says, then runs `then` on the socket; its result comes back on the receiver.
async fn raw_server<F, Fut, T>(answer: Answer, then: F) -> (String, oneshot::Receiver<T>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = within("accept", listener.accept()).await.unwrap();
        let key = within("the upgrade request", read_request(&mut tcp)).await;
        if let Answer::Upgrade = answer {
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            within("101", tcp.write_all(response.as_bytes()))
                .await
                .unwrap();
        }
        let _ = tx.send(then(tcp).await);
    });
    (format!("ws://{addr}/"), rx)
}

/// Reads the request head; returns its `Sec-WebSocket-Key`.
async fn read_request(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "request cut short");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("a Sec-WebSocket-Key")
}

/// Reads the client's close frame (masked, as a client's must be); returns its code.
async fn client_close_code(tcp: &mut TcpStream) -> u16 {
    within("the client's close frame", async {
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x88, "a final close frame");
        assert!(head[1] & 0x80 != 0, "masked");
        let len = usize::from(head[1] & 0x7f);
        let mut mask = [0u8; 4];
        tcp.read_exact(&mut mask).await.unwrap();
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        u16::from_be_bytes([payload[0], payload[1]])
    })
    .await
}

/// Holds the socket until the client goes away.
async fn hold(mut tcp: TcpStream) {
    let mut buf = [0u8; 1024];
    within("the client to go away", async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn pipes_stdin_out_and_messages_to_stdout() {
    let url = server(None).await;
    let out = run(
        &url,
        &["--json", "-H", "X-Test: 1"],
        "{\"a\":1}\nnot json\n[2]\n",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not JSON"), "{stderr}");
    assert_eq!(stdout, "dead\n{\"a\":1}\n[2]\n");
    assert_ended(&out, 0, "svc-ws: closed: end of input");
}

#[tokio::test]
async fn exit_status_follows_the_close() {
    let url = server(Some((1000, "done"))).await;
    let out = run(&url, &[], "").await;
    assert!(out.status.success());

    // The server's close ends the program even while stdin is still open.
    let started = std::time::Instant::now();
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(&out, 0, r#"svc-ws: closed by the server: 1000 "done""#);
    assert!(started.elapsed() < Duration::from_secs(5));

    let url = server(Some((1001, ""))).await;
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(&out, 0, "svc-ws: closed by the server: 1001");

    let url = server(Some((4001, "bye"))).await;
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(&out, 1, r#"svc-ws: closed by the server: 4001 "bye""#);
}

/// The last line on stderr says why the connection ended, as the library reports it; the
/// exit status is 1 for all of these.
#[tokio::test]
async fn a_policy_close_names_its_code_and_reason() {
    let url = server(Some((1008, "policy violation"))).await;
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(
        &out,
        1,
        r#"svc-ws: closed by the server: 1008 "policy violation""#,
    );
}

#[tokio::test]
async fn a_200_mb_frame_is_message_too_big_with_its_size_and_limit() {
    let (url, seen) = raw_server(Answer::Upgrade, |mut tcp| async move {
        // A binary frame announcing 200 MB (64-bit length), and none of its payload.
        let mut header = vec![0x82, 127];
        header.extend_from_slice(&209_715_200u64.to_be_bytes());
        within("frame header", tcp.write_all(&header))
            .await
            .unwrap();
        client_close_code(&mut tcp).await
    })
    .await;
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(
        &out,
        1,
        "svc-ws: message too big: 209715200 bytes, limit 1048576 (WS_MAX_MESSAGE_SIZE)",
    );
    assert_eq!(within("server", seen).await.unwrap(), 1009);

    // The limit is the configured one.
    let (url, _seen) = raw_server(Answer::Upgrade, |mut tcp| async move {
        let header = [0x81, 126, 0x10, 0x00]; // text, 4096 bytes announced
        within("frame header", tcp.write_all(&header))
            .await
            .unwrap();
        hold(tcp).await;
    })
    .await;
    let out = run_with(&url, &[], &[("WS_MAX_MESSAGE_SIZE", "1000")], "", true).await;
    assert_ended(
        &out,
        1,
        "svc-ws: message too big: 4096 bytes, limit 1000 (WS_MAX_MESSAGE_SIZE)",
    );
}

#[tokio::test]
async fn garbage_after_the_upgrade_is_a_protocol_error() {
    let (url, seen) = raw_server(Answer::Upgrade, |mut tcp| async move {
        within(
            "garbage",
            tcp.write_all(b"this is not a WebSocket frame\r\n"),
        )
        .await
        .unwrap();
        client_close_code(&mut tcp).await
    })
    .await;
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(
        &out,
        1,
        // The first byte, 't' (0x74), has the three reserved bits set.
        "svc-ws: protocol error: reserved bits set without an extension (closed with 1002)",
    );
    assert_eq!(within("server", seen).await.unwrap(), 1002);
}

#[tokio::test]
async fn a_connection_dropped_without_a_close_frame_is_lost() {
    let (url, _seen) = raw_server(Answer::Upgrade, |tcp| async move { drop(tcp) }).await;
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(&out, 1, "svc-ws: connection lost: no close frame (1006)");
}

#[tokio::test]
async fn a_refused_handshake_names_the_http_status() {
    let (url, _seen) = raw_server(Answer::Nothing, |mut tcp| async move {
        let response = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\
                        Content-Length: 23\r\nConnection: close\r\n\r\nbusy,\n  try again later";
        within("503", tcp.write_all(response.as_bytes()))
            .await
            .unwrap();
        hold(tcp).await;
    })
    .await;
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(
        &out,
        1,
        "svc-ws: handshake refused: HTTP 503 Service Unavailable (Retry-After: 5 s): busy, try \
         again later",
    );

    let (url, _seen) = raw_server(Answer::Nothing, |mut tcp| async move {
        let response = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 24\r\n\r\n\
                        {\"error\":\"unauthorized\"}";
        within("401", tcp.write_all(response.as_bytes()))
            .await
            .unwrap();
        hold(tcp).await;
    })
    .await;
    let out = run_with(&url, &[], &[], "", true).await;
    assert_ended(
        &out,
        1,
        r#"svc-ws: authentication failed: HTTP 401: {"error":"unauthorized"}"#,
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_handshake_timeout() {
    let (url, _seen) = raw_server(Answer::Nothing, hold).await;
    let started = std::time::Instant::now();
    let out = run_with(&url, &[], &[("WS_OPEN_TIMEOUT", "0.5")], "", true).await;
    assert_ended(
        &out,
        1,
        "svc-ws: handshake timeout: no answer within 0.5 s (WS_OPEN_TIMEOUT)",
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn refused_and_reset_connections_say_so() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}/");
    let out = run(&url, &[], "").await;
    assert_ended(
        &out,
        1,
        &format!("svc-ws: cannot connect to {url}: connection refused"),
    );

    // The server resets the connection instead of answering the upgrade.
    let (url, _seen) = raw_server(Answer::Nothing, |tcp| async move {
        tcp.set_zero_linger().unwrap();
        drop(tcp);
    })
    .await;
    let out = run(&url, &[], "").await;
    assert_ended(
        &out,
        1,
        &format!("svc-ws: cannot connect to {url}: connection reset by the server"),
    );
}

#[tokio::test]
async fn a_line_over_the_limit_is_not_sent_and_ends_with_1() {
    let url = server(None).await;
    let line = "x".repeat(20);
    let out = run_with(
        &url,
        &[],
        &[("WS_MAX_MESSAGE_SIZE", "16")],
        &format!("{line}\n"),
        true,
    )
    .await;
    assert_ended(
        &out,
        1,
        "svc-ws: message too big to send: 20 bytes, limit 16 (WS_MAX_MESSAGE_SIZE)",
    );
}
