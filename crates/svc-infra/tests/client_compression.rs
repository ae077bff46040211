//! permessage-deflate (RFC 7692) on the client, over real sockets: against our own server
//! (compressed both ways, seen on the wire through a recording TCP relay), and against raw
//! servers that answer without the extension, with context takeover, with windows, with
//! answers the client must refuse, with a decompression bomb; and `Compression::Off`.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::Path, response::Response, routing::get};
use bytes::BytesMut;
use common::{raw::raw_server, server::serve, step};
use svc_infra::websocket::{
    Compression, ConnectionManager, WebSocketClient, WebSocketConfig, WebSocketError, WsManager,
    WsUpgrade, add_websocket_manager_with,
    protocol::{self, FrameHeader, OP_BINARY, OP_CLOSE, OP_TEXT, deflate},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The client's offer, as Python websockets and browsers send it.
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits";

fn quiet() -> WebSocketConfig {
    WebSocketConfig::default().with_ping_interval(None)
}

async fn connect(url: &str, config: WebSocketConfig) -> WebSocketClient {
    step(WebSocketClient::builder(url).config(config).connect())
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// JSON-like text of about `n` bytes: compresses well.
fn json(n: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"id":{i},"user":"user-{}","text":"message number {i} to the room"}},"#,
            i % 7
        ));
        i += 1;
    }
    s.push(']');
    s
}

// ---------------------------------------------------------------------------------------
// Against our own server.

/// `/ws/{user}`: echoes every message back through the manager.
async fn echo(ws: WsUpgrade, Path(user): Path<String>, WsManager(manager): WsManager) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        while let Some(Ok(message)) = conn.recv().await {
            if conn.send(message).is_err() {
                break;
            }
        }
    })
}

/// Our server (default config: `WS_COMPRESSION=shared`) on 127.0.0.1:0.
async fn our_server() -> SocketAddr {
    let manager = ConnectionManager::new(WebSocketConfig::default());
    let app = Router::new().route("/ws/{user}", get(echo));
    serve(add_websocket_manager_with(app, manager)).await
}

/// The bytes a relay saw: client to server, server to client.
type Wire = Arc<Mutex<(Vec<u8>, Vec<u8>)>>;

/// A TCP relay on 127.0.0.1:0 in front of `server` that records every byte both ways.
async fn recording_relay(server: SocketAddr) -> (SocketAddr, Wire) {
    let listener = step(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wire: Wire = Arc::default();
    let log = Arc::clone(&wire);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(server).await else {
                continue;
            };
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = upstream.into_split();
            let up = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                    up.lock().unwrap().0.extend_from_slice(&buf[..n]);
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = server_tx.shutdown().await;
            });
            let down = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                    down.lock().unwrap().1.extend_from_slice(&buf[..n]);
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = client_tx.shutdown().await;
            });
        }
    });
    (addr, wire)
}

/// One frame as it crossed the wire: RSV1, opcode, the payload's length on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    rsv1: bool,
    opcode: u8,
    len: usize,
}

/// The HTTP head at the start of `bytes`, and the frames after it.
fn frames_after_head(bytes: &[u8]) -> (String, Vec<Seen>) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head")
        + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut frames = Vec::new();
    let mut rest = &bytes[end..];
    while let Ok(Some(h)) = FrameHeader::parse(rest) {
        let len = usize::try_from(h.payload_len).unwrap();
        frames.push(Seen {
            rsv1: h.rsv & 0b100 != 0,
            opcode: h.opcode,
            len,
        });
        rest = &rest[(h.len + len).min(rest.len())..];
    }
    (head, frames)
}

#[tokio::test]
async fn against_our_server_messages_go_compressed_both_ways_and_arrive_intact() {
    let (relay, wire) = recording_relay(our_server().await).await;
    let mut ws = connect(&format!("ws://{relay}/ws/alice"), quiet()).await;
    let text = json(4000);
    let binary: Vec<u8> = (0..6000u32).map(|i| (i % 64) as u8).collect();
    step(ws.send(text.as_str())).await.unwrap();
    assert_eq!(
        step(ws.recv()).await.unwrap().as_text(),
        Some(text.as_str())
    );
    step(ws.send(binary.clone())).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_bytes(), &binary[..]);
    // Below compression_min_size (128 bytes): plain both ways.
    step(ws.send("short")).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("short"));
    // Many in a row: the shared compressors are reset after each message.
    for i in 0..20 {
        let m = json(300 + i * 50);
        step(ws.send(m.as_str())).await.unwrap();
        assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some(m.as_str()));
    }
    step(ws.close(1000, "")).await.unwrap();

    let (up, down) = wire.lock().unwrap().clone();
    let (request, sent) = frames_after_head(&up);
    let (response, received) = frames_after_head(&down);
    assert!(request.contains(OFFER), "{request}");
    let response = response.to_ascii_lowercase();
    assert!(
        response.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover"
        ),
        "{response}"
    );
    let data = |frames: &[Seen]| -> Vec<Seen> {
        frames
            .iter()
            .copied()
            .filter(|f| matches!(f.opcode, OP_TEXT | OP_BINARY))
            .collect()
    };
    for (direction, frames) in [
        ("client to server", data(&sent)),
        ("server to client", data(&received)),
    ] {
        assert_eq!(frames.len(), 23, "{direction}: {frames:?}");
        // The two large messages shrank a lot; "short" went plain.
        assert!(
            frames[0].rsv1 && frames[0].len < text.len() / 4,
            "{direction}: {frames:?}"
        );
        assert!(
            frames[1].rsv1 && frames[1].len < binary.len() / 4,
            "{direction}: {frames:?}"
        );
        assert_eq!((frames[2].rsv1, frames[2].len), (false, 5), "{direction}");
        assert!(
            frames[3..].iter().all(|f| f.rsv1),
            "{direction}: {frames:?}"
        );
    }
    assert!(sent.iter().any(|f| f.opcode == OP_CLOSE && !f.rsv1));
}

// ---------------------------------------------------------------------------------------
// Against raw servers.

/// Reads the upgrade request and answers 101 with `extensions` as
/// `Sec-WebSocket-Extensions` (no header if empty); returns the request.
async fn answer(stream: &mut TcpStream, extensions: &str) -> String {
    let extension = if extensions.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Extensions: {extensions}\r\n")
    };
    common::raw::raw_handshake(stream, &extension).await
}

/// A client frame as it came: RSV1, opcode, unmasked payload.
async fn read_client_frame(stream: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let (header, payload) = common::raw::read_frame(stream).await;
    assert!(header.mask.is_some(), "client frames are masked");
    (header.rsv & 0b100 != 0, header.opcode, payload)
}

/// An unmasked server frame, RSV1 set if `compressed`.
fn server_frame(compressed: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    if compressed {
        protocol::encode_deflated_frame(opcode, payload).to_vec()
    } else {
        protocol::encode_frame(opcode, payload).to_vec()
    }
}

/// Serves one connection with `handler` after answering with `extensions`; returns the
/// address and a channel that gets the upgrade request.
async fn raw_peer<F, Fut>(
    extensions: &'static str,
    handler: F,
) -> (SocketAddr, tokio::sync::mpsc::Receiver<String>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let handler = Arc::new(handler);
    let (addr, _) = raw_server(move |mut stream| {
        let tx = tx.clone();
        let handler = Arc::clone(&handler);
        async move {
            let request = answer(&mut stream, extensions).await;
            let _ = tx.send(request).await;
            handler(stream).await;
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test]
async fn a_server_without_the_extension_gets_plain_messages() {
    let (done_tx, mut done) = tokio::sync::mpsc::channel(1);
    let (addr, mut requests) = raw_peer("", move |mut s| {
        let done_tx = done_tx.clone();
        async move {
            let frame = read_client_frame(&mut s).await;
            let _ = done_tx.send(frame).await;
            let _ = s.write_all(&server_frame(false, OP_TEXT, b"ok")).await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
    .await;
    let mut ws = connect(&format!("ws://{addr}/"), quiet()).await;
    assert!(step(requests.recv()).await.unwrap().contains(OFFER));
    let text = json(3000);
    step(ws.send(text.as_str())).await.unwrap();
    let (rsv1, opcode, payload) = step(done.recv()).await.unwrap();
    assert_eq!((rsv1, opcode), (false, OP_TEXT));
    assert_eq!(payload, text.as_bytes());
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("ok"));
}

#[tokio::test]
async fn context_takeover_both_ways() {
    // The server keeps its context (no server_no_context_takeover) and lets the client keep
    // its own: each side's later messages refer back to earlier ones.
    let message = json(2000);
    let (report_tx, mut report) = tokio::sync::mpsc::channel(1);
    let sent_by_server = message.clone();
    let (addr, _) = raw_peer("permessage-deflate", move |mut s| {
        let report_tx = report_tx.clone();
        let message = sent_by_server.clone();
        async move {
            let mut deflater = deflate::Deflater::new(15, false);
            let mut sizes = Vec::new();
            let mut wire = Vec::new();
            for _ in 0..4 {
                let mut packed = Vec::new();
                assert!(deflater.compress(message.as_bytes(), &mut packed));
                sizes.push(packed.len());
                wire.extend(server_frame(true, OP_TEXT, &packed));
            }
            s.write_all(&wire).await.unwrap();
            // What the client sends: inflated with a context of our own.
            let mut inflater = deflate::Inflater::new(15, false);
            let mut got = Vec::new();
            for _ in 0..5 {
                let (rsv1, opcode, payload) = read_client_frame(&mut s).await;
                let message = if rsv1 {
                    inflater
                        .inflate(&mut BytesMut::from(&payload[..]), 1 << 20)
                        .expect("inflates with the client's context")
                        .to_vec()
                } else {
                    payload.clone()
                };
                got.push((rsv1, opcode, payload.len(), message));
            }
            let _ = report_tx.send((sizes, got)).await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
    .await;
    let mut ws = connect(&format!("ws://{addr}/"), quiet()).await;
    for _ in 0..4 {
        assert_eq!(
            step(ws.recv()).await.unwrap().as_text(),
            Some(message.as_str())
        );
    }
    // Three compressible messages, one that does not shrink (it goes plain and the
    // client's compressor starts afresh), then one more.
    let noise: Vec<u8> = (0..2000).map(|_| rand::random()).collect();
    step(ws.send(message.as_str())).await.unwrap();
    step(ws.send(message.as_str())).await.unwrap();
    step(ws.send(message.as_str())).await.unwrap();
    step(ws.send(noise.clone())).await.unwrap();
    step(ws.send(message.as_str())).await.unwrap();
    let (sizes, got) = step(report.recv()).await.unwrap();
    assert!(sizes[1] * 4 < sizes[0], "the server's context: {sizes:?}");
    for (i, (rsv1, opcode, _, m)) in got.iter().enumerate() {
        if i == 3 {
            assert_eq!((*rsv1, *opcode, &m[..]), (false, OP_BINARY, &noise[..]));
        } else {
            assert_eq!(
                (*rsv1, *opcode, &m[..]),
                (true, OP_TEXT, message.as_bytes())
            );
        }
    }
    // The client's second message referred back to its first.
    assert!(got[1].2 * 4 < got[0].2, "the client's context: {got:?}");
}

/// Connects to a raw server that answers `extensions`, sends `message` twice, and returns
/// what the server saw of each: the compressed size and the message inflated (with a
/// 32 KiB context).
async fn sent_twice(extensions: &'static str, message: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let (report_tx, mut report) = tokio::sync::mpsc::channel(1);
    let (addr, _) = raw_peer(extensions, move |mut s| {
        let report_tx = report_tx.clone();
        async move {
            let mut inflater = deflate::Inflater::new(15, false);
            let mut got = Vec::new();
            for _ in 0..2 {
                let (rsv1, _, payload) = read_client_frame(&mut s).await;
                assert!(rsv1, "compressed");
                let inflated = inflater
                    .inflate(&mut BytesMut::from(&payload[..]), 1 << 20)
                    .expect("valid deflate data");
                got.push((payload.len(), inflated.to_vec()));
            }
            let _ = report_tx.send(got).await;
        }
    })
    .await;
    let ws = connect(&format!("ws://{addr}/"), quiet()).await;
    step(ws.send(message.to_vec())).await.unwrap();
    step(ws.send(message.to_vec())).await.unwrap();
    step(report.recv()).await.unwrap()
}

#[tokio::test]
async fn the_client_keeps_to_the_window_the_server_names() {
    // 4,000 random letters: deflate only saves the bits of the alphabet, unless the second
    // copy can refer back to the first, 4,000 bytes away. With our window at 32 KiB (no
    // client_max_window_bits in the answer) it can: the second copy costs a few bytes.
    // With client_max_window_bits=9 (512 bytes) it cannot: it costs as much as the first.
    let message: Vec<u8> = (0..4000)
        .map(|_| b'a' + rand::random::<u8>() % 26)
        .collect();
    let wide = sent_twice("permessage-deflate", &message).await;
    let narrow = sent_twice(
        "permessage-deflate; client_max_window_bits=9; server_max_window_bits=10",
        &message,
    )
    .await;
    for (size, inflated) in wide.iter().chain(&narrow) {
        assert_eq!(inflated, &message);
        assert!(*size < message.len(), "{size}");
    }
    assert!(wide[1].0 * 10 < wide[0].0, "{:?}", (wide[0].0, wide[1].0));
    assert!(
        narrow[1].0 * 2 > narrow[0].0,
        "{:?}",
        (narrow[0].0, narrow[1].0)
    );
}

#[tokio::test]
async fn answers_the_client_may_not_accept_fail_the_handshake() {
    for answer in [
        "x-webkit-deflate-frame",
        "permessage-deflate, x-other",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; unknown_parameter",
        "permessage-deflate, permessage-deflate",
    ] {
        let answer: &'static str = Box::leak(answer.to_owned().into_boxed_str());
        let (addr, _) = raw_peer(answer, |_s| async {}).await;
        let err = step(WebSocketClient::builder(format!("ws://{addr}/")).connect())
            .await
            .unwrap_err();
        let WebSocketError::Protocol(why) = &err else {
            panic!("{answer}: {err:?}");
        };
        assert!(why.contains("Sec-WebSocket-Extensions"), "{answer}: {why}");
        assert!(!err.is_retryable(), "{answer}");
    }
    // With compression off, even a valid permessage-deflate answer was not offered.
    let (addr, _) = raw_peer("permessage-deflate", |_s| async {}).await;
    let err = step(
        WebSocketClient::builder(format!("ws://{addr}/"))
            .config(quiet().with_compression(Compression::Off))
            .connect(),
    )
    .await
    .unwrap_err();
    let WebSocketError::Protocol(why) = &err else {
        panic!("{err:?}");
    };
    assert!(why.contains("not offered"), "{why}");
}

/// Peak resident memory of this process, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_decompression_bomb_fails_with_1009_within_the_limit() {
    // 1 MiB of zeros deflates to about a kilobyte; 2,048 of those back to back are one
    // valid message of 2 GiB in about 2 MiB of frame.
    let mut one = Vec::new();
    assert!(deflate::Deflater::new(15, true).compress(&vec![0u8; 1 << 20], &mut one));
    one.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut bomb = one.repeat(2048);
    bomb.truncate(bomb.len() - 4);
    let bomb = Arc::new(bomb);
    let (close_tx, mut closes) = tokio::sync::mpsc::channel(1);
    let (addr, _) = raw_peer(
        "permessage-deflate; server_no_context_takeover",
        move |mut s| {
            let bomb = Arc::clone(&bomb);
            let close_tx = close_tx.clone();
            async move {
                let _ = s.write_all(&server_frame(true, OP_BINARY, &bomb)).await;
                let (_, opcode, payload) = read_client_frame(&mut s).await;
                assert_eq!(opcode, OP_CLOSE);
                let _ = close_tx.send(payload).await;
            }
        },
    )
    .await;
    let limit = 4 << 20;
    let peak_before = peak_rss_kib();
    let mut ws = connect(
        &format!("ws://{addr}/"),
        quiet().with_max_message_size(limit),
    )
    .await;
    let err = step(ws.recv()).await.unwrap_err();
    assert!(
        matches!(err, WebSocketError::MessageTooLarge { size, limit: l } if l == limit && size == limit + 1),
        "{err:?}"
    );
    let close = step(closes.recv()).await.unwrap();
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
    assert_eq!(ws.close_status().map(|s| s.0), Some(1009));
    // The inflated output stopped at the limit: nowhere near 2 GiB was ever resident.
    let grown = peak_rss_kib().saturating_sub(peak_before);
    assert!(grown < 128 * 1024, "peak RSS grew by {grown} KiB");
}

#[tokio::test]
async fn compression_off_sends_no_offer_and_plain_messages() {
    let (frame_tx, mut frames) = tokio::sync::mpsc::channel(1);
    let (addr, mut requests) = raw_peer("", move |mut s| {
        let frame_tx = frame_tx.clone();
        async move {
            let frame = read_client_frame(&mut s).await;
            let _ = frame_tx.send(frame).await;
        }
    })
    .await;
    let config = quiet().with_compression(Compression::Off);
    let ws = connect(&format!("ws://{addr}/"), config).await;
    let request = step(requests.recv()).await.unwrap();
    assert!(
        !request
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{request}"
    );
    let text = json(3000);
    step(ws.send(text.as_str())).await.unwrap();
    let (rsv1, _, payload) = step(frames.recv()).await.unwrap();
    assert!(!rsv1);
    assert_eq!(payload, text.as_bytes());

    // WS_COMPRESSION=off says the same through the environment's configuration.
    let from_env = WebSocketConfig::from_vars([("WS_COMPRESSION", "off")]).unwrap();
    assert_eq!(from_env.compression, Compression::Off);
}
