//! permessage-deflate on the server, over real sockets with raw clients that offer it: the
//! negotiation (offers → responses, refused parameters), compressed messages in both
//! directions (fragmented ones too), a decompression bomb, a broadcast deflated once for
//! every recipient, recipients without compression or with a smaller window beside them;
//! `WS_COMPRESSION=dedicated` (context takeover per connection), a slow consumer's dropped
//! messages included.

mod common;

use std::net::SocketAddr;

use axum::{Router, extract::Path, response::Response, routing::get};
use bytes::BytesMut;
use common::{eventually, raw, server::serve, within};
use svc_infra::websocket::{
    Compression, ConnectionManager, SlowConsumerPolicy, WebSocketConfig, WsManager, WsUpgrade,
    add_websocket_manager_with,
    protocol::{self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_TEXT, deflate},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// `/ws/{user}`: registers with the manager and echoes every message back with
/// `Connection::send`.
async fn ws(ws: WsUpgrade, Path(user): Path<String>, WsManager(manager): WsManager) -> Response {
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

async fn start(config: WebSocketConfig) -> (SocketAddr, ConnectionManager) {
    start_with(ConnectionManager::new(config)).await
}

async fn start_with(manager: ConnectionManager) -> (SocketAddr, ConnectionManager) {
    let app = Router::new().route("/ws/{user}", get(ws));
    let addr = serve(add_websocket_manager_with(app, manager.clone())).await;
    (addr, manager)
}

/// Upgrades with `offer` as `Sec-WebSocket-Extensions` (none if empty); returns the
/// stream and the response's extension header, if any.
async fn upgrade(addr: SocketAddr, user: &str, offer: &str) -> (TcpStream, Option<String>) {
    let mut tcp = within("tcp", TcpStream::connect(addr)).await.unwrap();
    let extension = if offer.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Extensions: {offer}\r\n")
    };
    let request = format!(
        "GET /ws/{user} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extension}\r\n"
    );
    within("write", tcp.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("head", tcp.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let response = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| v.trim().to_owned())
    });
    (tcp, response)
}

/// A server frame as it came: RSV1, opcode, payload.
async fn read_frame(tcp: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let (header, payload) = raw::read_frame(tcp).await;
    assert!(header.mask.is_none(), "a server frame is not masked");
    (header.rsv & 0b100 != 0, header.opcode, payload)
}

/// The message of a server frame: inflated if RSV1 says it is compressed.
fn message_of((compressed, _, payload): &(bool, u8, Vec<u8>)) -> Vec<u8> {
    if *compressed {
        let mut inflater = deflate::Inflater::new(15, true);
        let out = inflater.inflate(&mut BytesMut::from(&payload[..]), 1 << 24);
        out.expect("valid deflate data").to_vec()
    } else {
        payload.clone()
    }
}

/// A masked client frame; `rsv1` marks a compressed message's first frame.
fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = protocol::encode_masked_frame(opcode, payload, [1, 2, 3, 4]).to_vec();
    if !fin {
        frame[0] &= 0x7F;
    }
    if rsv1 {
        frame[0] |= protocol::RSV1;
    }
    frame
}

fn deflated(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(deflate::Deflater::new(15, true).compress(message, &mut out));
    out
}

/// A realistic JSON message of about `n` bytes.
fn json_message(n: usize) -> String {
    let mut s = String::from("{\"type\":\"message\",\"room\":\"lobby\",\"items\":[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"id":{i},"user":"user-{}","text":"hello from the room","ts":17000000{i:02}}},"#,
            i % 7
        ));
        i += 1;
    }
    s.push_str("{}]}");
    s
}

const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[tokio::test]
async fn offers_get_the_documented_responses() {
    let (addr, _) = start(WebSocketConfig::default()).await;
    for (offer, response) in [
        ("", None),
        ("permessage-deflate", Some(BOTH.to_owned())),
        // What Chromium and Firefox send.
        (
            "permessage-deflate; client_max_window_bits",
            Some(BOTH.to_owned()),
        ),
        (
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=12",
            Some(format!(
                "{BOTH}; server_max_window_bits=10; client_max_window_bits=12"
            )),
        ),
        // The first acceptable of several offers.
        (
            "permessage-deflate; server_max_window_bits=99, permessage-deflate; server_max_window_bits=8",
            Some(format!("{BOTH}; server_max_window_bits=8")),
        ),
        ("permessage-deflate; unknown_parameter", None),
        ("x-webkit-deflate-frame", None),
    ] {
        let (_tcp, got) = upgrade(addr, "u", offer).await;
        assert_eq!(got, response, "offer {offer:?}");
    }
    // WS_COMPRESSION=off: never negotiated.
    let (addr, _) = start(WebSocketConfig::default().with_compression(Compression::Off)).await;
    let (_tcp, got) = upgrade(addr, "u", "permessage-deflate").await;
    assert_eq!(got, None);
}

#[tokio::test]
async fn compressed_messages_both_ways_whole_and_fragmented() {
    let (addr, manager) = start(WebSocketConfig::default()).await;
    let (mut tcp, ext) = upgrade(addr, "alice", "permessage-deflate").await;
    assert!(ext.is_some());
    let text = json_message(2_000);
    let packed = deflated(text.as_bytes());

    // Whole: echoed back compressed, and the same text.
    within(
        "send",
        tcp.write_all(&client_frame(true, true, OP_TEXT, &packed)),
    )
    .await
    .unwrap();
    let echo = read_frame(&mut tcp).await;
    assert!(echo.0, "the echo is compressed");
    assert!(echo.2.len() < text.len() / 2, "{} bytes", echo.2.len());
    assert_eq!(message_of(&echo), text.as_bytes());

    // Fragmented in three, RSV1 on the first frame only.
    let (a, rest) = packed.split_at(packed.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut wire = client_frame(false, true, OP_TEXT, a);
    wire.extend(client_frame(false, false, OP_CONTINUATION, b));
    wire.extend(client_frame(true, false, OP_CONTINUATION, c));
    within("send", tcp.write_all(&wire)).await.unwrap();
    assert_eq!(message_of(&read_frame(&mut tcp).await), text.as_bytes());

    // A plain message on the same connection; a short one goes back plain (below
    // WS_COMPRESSION_MIN_SIZE, 128 bytes).
    within(
        "send",
        tcp.write_all(&client_frame(true, false, OP_TEXT, b"short")),
    )
    .await
    .unwrap();
    assert_eq!(
        read_frame(&mut tcp).await,
        (false, OP_TEXT, b"short".to_vec())
    );
    // Three sends, three deflates (two long echoes; the short one was not long enough).
    assert_eq!(manager.stats().deflated, 2);
}

#[tokio::test]
async fn a_decompression_bomb_closes_with_1009_at_the_limit() {
    let (addr, manager) = start(WebSocketConfig::default().with_max_message_size(64 * 1024)).await;
    let (mut tcp, _) = upgrade(addr, "mallory", "permessage-deflate").await;
    eventually("registered", || manager.connection_count() == 1).await;
    // 16 MiB of zeros deflate to about 16 KiB: under the limit on the wire, 256 times over
    // it inflated.
    let bomb = deflated(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 64 * 1024);
    within(
        "send",
        tcp.write_all(&client_frame(true, true, OP_BINARY, &bomb)),
    )
    .await
    .unwrap();
    let (_, opcode, payload) = read_frame(&mut tcp).await;
    assert_eq!(opcode, OP_CLOSE);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
    eventually("removed", || manager.connection_count() == 0).await;
}

#[tokio::test]
async fn invalid_compressed_data_and_misplaced_rsv1_fail_the_connection() {
    let (addr, _) = start(WebSocketConfig::default()).await;
    for (offer, wire, code) in [
        // Not deflate data.
        (
            "permessage-deflate",
            client_frame(true, true, OP_BINARY, &[0xff; 16]),
            1007,
        ),
        // RSV1 without the extension.
        (
            "",
            client_frame(true, true, OP_TEXT, &deflated(&[b'a'; 300])),
            1002,
        ),
        // RSV1 on a continuation frame.
        (
            "permessage-deflate",
            {
                let packed = deflated(&[b'a'; 300]);
                let mut w = client_frame(false, true, OP_TEXT, &packed[..1]);
                w.extend(client_frame(true, true, OP_CONTINUATION, &packed[1..]));
                w
            },
            1002,
        ),
    ] {
        let (mut tcp, _) = upgrade(addr, "u", offer).await;
        within("send", tcp.write_all(&wire)).await.unwrap();
        let (_, opcode, payload) = read_frame(&mut tcp).await;
        assert_eq!(opcode, OP_CLOSE, "{offer:?}");
        assert_eq!(
            u16::from_be_bytes([payload[0], payload[1]]),
            code,
            "{offer:?}"
        );
    }
}

#[tokio::test]
async fn a_broadcast_is_deflated_once_for_every_recipient() {
    let (addr, manager) = start(WebSocketConfig::default()).await;
    let mut compressed = Vec::new();
    for i in 0..20 {
        compressed.push(
            upgrade(
                addr,
                &format!("c{i}"),
                "permessage-deflate; client_max_window_bits",
            )
            .await
            .0,
        );
    }
    let mut plain = Vec::new();
    for i in 0..5 {
        plain.push(upgrade(addr, &format!("p{i}"), "").await.0);
    }
    // A smaller window than the shared frame's: it gets the plain frame in a broadcast...
    let (mut small, ext) = upgrade(
        addr,
        "small",
        "permessage-deflate; server_max_window_bits=10",
    )
    .await;
    assert!(ext.unwrap().contains("server_max_window_bits=10"));
    eventually("26 connections", || manager.connection_count() == 26).await;

    let text = json_message(1_024);
    let before = manager.stats();
    assert_eq!(manager.broadcast(text.as_str()).await.unwrap(), 26);
    let after = manager.stats();
    assert_eq!(
        after.deflated - before.deflated,
        1,
        "one deflate for 20 recipients"
    );

    let mut shared = None;
    for tcp in &mut compressed {
        let frame = read_frame(tcp).await;
        assert!(frame.0, "compressed");
        assert_eq!(message_of(&frame), text.as_bytes());
        // The same bytes for everyone.
        match &shared {
            None => shared = Some(frame.2.clone()),
            Some(bytes) => assert_eq!(&frame.2, bytes),
        }
        assert!(
            frame.2.len() * 3 < text.len(),
            "{} of {}",
            frame.2.len(),
            text.len()
        );
    }
    for tcp in &mut plain {
        assert_eq!(
            read_frame(tcp).await,
            (false, OP_TEXT, text.as_bytes().to_vec())
        );
    }
    assert_eq!(
        read_frame(&mut small).await,
        (false, OP_TEXT, text.as_bytes().to_vec())
    );

    // ...and one deflated for it alone when a message is for it only (the echo:
    // `Connection::send`).
    let wire = client_frame(true, false, OP_TEXT, text.as_bytes());
    within("send", small.write_all(&wire)).await.unwrap();
    let frame = read_frame(&mut small).await;
    assert!(frame.0);
    // Inflated with the 1 KiB window it asked for: nothing refers further back.
    let mut inflater = deflate::Inflater::new(10, true);
    let inflated = inflater.inflate(&mut BytesMut::from(&frame.2[..]), 1 << 20);
    assert_eq!(inflated.unwrap(), text.as_bytes());
    assert_eq!(manager.stats().deflated - after.deflated, 1);
}

#[tokio::test]
async fn a_message_that_does_not_shrink_goes_plain() {
    let (addr, manager) = start(WebSocketConfig::default()).await;
    let (mut tcp, _) = upgrade(addr, "u", "permessage-deflate").await;
    eventually("registered", || manager.connection_count() == 1).await;
    let noise: Vec<u8> = (0..4096).map(|_| rand::random()).collect();
    manager.broadcast(noise.clone()).await.unwrap();
    assert_eq!(read_frame(&mut tcp).await, (false, OP_BINARY, noise));
    assert_eq!(manager.stats().deflated, 1, "tried once");
}

fn dedicated() -> WebSocketConfig {
    WebSocketConfig::default().with_compression(Compression::Dedicated)
}

#[tokio::test]
async fn dedicated_mode_keeps_context_takeover_where_the_client_allows_it() {
    let (addr, _) = start(dedicated()).await;
    for (offer, response) in [
        ("permessage-deflate", Some("permessage-deflate")),
        (
            "permessage-deflate; client_max_window_bits",
            Some("permessage-deflate"),
        ),
        // What the client asks for is kept: no takeover on its side or ours.
        (
            "permessage-deflate; server_no_context_takeover",
            Some("permessage-deflate; server_no_context_takeover"),
        ),
        (
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=9",
            Some("permessage-deflate; client_no_context_takeover; client_max_window_bits=9"),
        ),
    ] {
        let (_tcp, got) = upgrade(addr, "u", offer).await;
        assert_eq!(got.as_deref(), response, "offer {offer:?}");
    }
    // WS_COMPRESSION_WINDOW_BITS=10 caps the client's window: named where the client lets
    // the server choose, lowered where it named a larger one, and an offer that cannot be
    // limited is declined.
    let (addr, _) = start(dedicated().with_compression_window_bits(10)).await;
    for (offer, response) in [
        (
            "permessage-deflate; client_max_window_bits",
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        (
            "permessage-deflate; client_max_window_bits=12",
            Some("permessage-deflate; client_max_window_bits=10"),
        ),
        ("permessage-deflate", None),
    ] {
        let (_tcp, got) = upgrade(addr, "u", offer).await;
        assert_eq!(got.as_deref(), response, "offer {offer:?}");
    }
}

#[tokio::test]
async fn dedicated_mode_compresses_with_each_connections_own_context() {
    let (addr, manager) = start(dedicated()).await;
    let (mut tcp, ext) = upgrade(addr, "alice", "permessage-deflate; client_max_window_bits").await;
    assert_eq!(ext.as_deref(), Some("permessage-deflate"));
    let text = json_message(2_000);
    // The client keeps its context too: its second message refers back to the first.
    let mut ours = deflate::Deflater::new(15, false);
    let mut theirs = deflate::Inflater::new(15, false);
    let mut sizes = Vec::new();
    for round in 0..3 {
        let mut packed = Vec::new();
        assert!(ours.compress(text.as_bytes(), &mut packed));
        let frame = client_frame(true, true, OP_TEXT, &packed);
        within("send", tcp.write_all(&frame)).await.unwrap();
        let (compressed, opcode, payload) = read_frame(&mut tcp).await;
        assert!(compressed && opcode == OP_TEXT, "round {round}");
        let echo = theirs.inflate(&mut BytesMut::from(&payload[..]), 1 << 20);
        assert_eq!(echo.unwrap(), text.as_bytes(), "round {round}");
        sizes.push(payload.len());
    }
    // With context takeover a repeated message costs a few bytes of back-references.
    assert!(sizes[1] * 10 < sizes[0], "{sizes:?}");
    assert!(sizes[2] * 10 < sizes[0], "{sizes:?}");

    // A broadcast goes through the same compressor: it refers back to the echoes.
    assert_eq!(manager.broadcast(text.as_str()).await.unwrap(), 1);
    let (compressed, _, payload) = read_frame(&mut tcp).await;
    assert!(compressed);
    assert!(payload.len() * 10 < sizes[0], "{} bytes", payload.len());
    let got = theirs.inflate(&mut BytesMut::from(&payload[..]), 1 << 20);
    assert_eq!(got.unwrap(), text.as_bytes());
}

/// Frames dropped for a slow consumer never reach its connection's compressor, so what it
/// does receive inflates with its context intact: the reader here is slow (a millisecond per
/// frame), so the flusher deflates queued frames before the socket takes them, and the
/// policy must drop others than those.
#[tokio::test]
async fn dedicated_mode_survives_drop_oldest_for_a_slow_consumer() {
    let manager = ConnectionManager::builder(dedicated())
        .slow_consumer_policy(SlowConsumerPolicy::DropOldest)
        .build();
    let (addr, manager) = start_with(manager).await;
    let (mut slow, _) = upgrade(addr, "slow", "permessage-deflate").await;
    eventually("connected", || manager.connection_count() == 1).await;
    let publishing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let slow_while = publishing.clone();
    let reader = tokio::spawn(async move {
        let mut theirs = deflate::Inflater::new(15, false);
        let (mut last, mut received) = (-1i64, 0usize);
        loop {
            let (compressed, opcode, payload) = read_frame(&mut slow).await;
            assert_eq!(opcode, OP_TEXT);
            let text = if compressed {
                let out = theirs.inflate(&mut BytesMut::from(&payload[..]), 1 << 20);
                out.expect("every frame inflates with the connection's context")
                    .to_vec()
            } else {
                payload
            };
            let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
            let Some(n) = value["n"].as_i64() else {
                assert_eq!(value["n"], "last");
                return received;
            };
            assert!(n > last, "in order: {n} after {last}");
            last = n;
            received += 1;
            if slow_while.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    });
    // Distinct messages that deflate to about half (hex digits of a pseudo-random
    // sequence), far more than the socket's buffers and the queue (16) hold.
    let mut sent = 0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    while manager.stats().dropped < 200 {
        let pad: String = (0..64)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                format!("{seed:016x}")
            })
            .collect();
        let message = format!("{{\"n\":{sent},\"pad\":\"{pad}\"}}");
        manager.broadcast(message.as_str()).await.unwrap();
        // Lets the reader and the flusher run.
        tokio::task::yield_now().await;
        sent += 1;
        assert!(sent < 200_000, "nothing was ever dropped");
    }
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    manager.broadcast("{\"n\":\"last\"}").await.unwrap();
    let received = within("the reader", reader).await.unwrap();
    assert!(received < sent, "some were dropped: {received} of {sent}");
    eprintln!("{received} of {sent} received");
}
