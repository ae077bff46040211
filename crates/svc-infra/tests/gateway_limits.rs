//! Every limit the gateway documents, set the way an operator sets it (`WS_*` variables read
//! by `GatewayConfig::from_vars`), reaching the gateway's sockets: one test per setting, each
//! over real sockets, checking the status or close code and, where there is one, the metric.
//! Also: a client that writes thousands of requests before reading any answer is slowed
//! down, not disconnected.

mod common;

use std::time::{Duration, Instant};

use common::{
    gateway::*,
    raw::{http, read_server_frame, upgrade_on, upgrade_request},
    server::next_close,
    within,
};
use serde_json::{Value, json};
use svc_infra::{gateway::GatewayConfig, websocket::protocol};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A gateway from these variables, anonymous connections allowed.
async fn gateway(vars: &[(&str, &str)]) -> Running {
    let mut all = vec![
        ("WS_GATEWAY_ANONYMOUS", "true"),
        ("AUTH_JWT__SECRET", SECRET),
    ];
    all.extend_from_slice(vars);
    start(GatewayConfig::from_vars(all).expect("valid settings")).await
}

/// The value of the series `series` (name and labels, as printed) in `/metrics`; 0 if absent.
async fn metric(gw: &Running, series: &str) -> f64 {
    let (status, text) = http(gw.addr, "GET", "/metrics", "", "").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The status line and `Retry-After` of an upgrade of `/ws{query}` refused before upgrading.
async fn refused(gw: &Running, query: &str) -> (String, Option<String>) {
    let tcp = within("tcp", TcpStream::connect(gw.addr)).await.unwrap();
    let (_, head) = upgrade_request(tcp, gw.addr, &format!("/ws{query}")).await;
    let status = head.lines().next().unwrap_or_default().to_owned();
    let retry = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .map(str::to_owned);
    (status, retry)
}

/// Reads until the server's close frame; returns its code.
async fn close_code(tcp: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_server_frame(tcp).await;
        if opcode == protocol::OP_CLOSE {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

fn text_frame(v: &Value) -> bytes::Bytes {
    protocol::encode_masked_frame(protocol::OP_TEXT, v.to_string().as_bytes(), [7, 7, 7, 7])
}

#[tokio::test]
async fn ws_handshake_timeout() {
    let gw = gateway(&[("WS_HANDSHAKE_TIMEOUT", "0.3")]).await;
    let before = metric(&gw, "svc_ws_handshake_timeouts_total").await;
    let started = Instant::now();
    let mut silent = within("tcp", TcpStream::connect(gw.addr)).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within("closed", silent.read(&mut buf)).await.unwrap_or(0);
    let took = started.elapsed();
    assert_eq!(n, 0);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The counter is process-wide: other tests may add to it, never take away.
    assert!(metric(&gw, "svc_ws_handshake_timeouts_total").await > before);
}

#[tokio::test]
async fn ws_handshake_timeout_also_bounds_a_slow_publish_body() {
    let gw = gateway(&[("WS_HANDSHAKE_TIMEOUT", "0.3")]).await;
    let mut tcp = within("tcp", TcpStream::connect(gw.addr)).await.unwrap();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"data\":",
        token("ops", &["admin"])
    );
    let started = Instant::now();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within("response", tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed without a response");
        response.extend_from_slice(&buf[..n]);
    }
    let took = started.elapsed();
    assert!(
        response.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn ws_max_connections() {
    let gw = gateway(&[("WS_MAX_CONNECTIONS", "2")]).await;
    let _a = connect(&gw, "?user=a").await;
    let _b = connect(&gw, "?user=b").await;
    registered(&gw, 2).await;
    let (status, retry) = refused(&gw, "?user=c").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert!(metric(&gw, "svc_ws_upgrades_refused_total{reason=\"node_full\"}").await >= 1.0);
}

#[tokio::test]
async fn ws_max_connections_per_user() {
    let gw = gateway(&[("WS_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let _a1 = connect(&gw, "?user=alice").await;
    let _a2 = connect(&gw, "?user=alice").await;
    registered(&gw, 2).await;
    let (status, retry) = refused(&gw, "?user=alice").await;
    assert!(status.starts_with("HTTP/1.1 429"), "{status}");
    assert_eq!(retry.as_deref(), Some("5"));
    let mut bob = connect(&gw, "?user=bob").await;
    send(&mut bob, json!({"type": "echo", "data": 1})).await;
    assert_eq!(next(&mut bob).await["data"], 1);
    assert!(metric(&gw, "svc_ws_upgrades_refused_total{reason=\"user_full\"}").await >= 1.0);
}

#[tokio::test]
async fn ws_ping_interval_and_timeout() {
    let gw = gateway(&[("WS_PING_INTERVAL", "0.2"), ("WS_PING_TIMEOUT", "0.3")]).await;
    let tcp = within("tcp", TcpStream::connect(gw.addr)).await.unwrap();
    let mut tcp = upgrade_on(tcp, gw.addr, "/ws?user=quiet").await;
    let started = Instant::now();
    // A ping arrives after the interval; unanswered, the connection fails with 1011.
    let (opcode, _) = read_server_frame(&mut tcp).await;
    assert_eq!(opcode, protocol::OP_PING);
    assert_eq!(close_code(&mut tcp).await, 1011);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn ws_close_timeout() {
    // A close the server starts (here: the rate limit's 1008) waits for the client's close
    // frame for WS_CLOSE_TIMEOUT, then drops the TCP connection.
    let gw = gateway(&[
        ("WS_CLOSE_TIMEOUT", "0.3"),
        ("WS_GATEWAY_REQUEST_RATE", "0.001"),
        ("WS_GATEWAY_REQUEST_BURST", "1"),
    ])
    .await;
    let tcp = within("tcp", TcpStream::connect(gw.addr)).await.unwrap();
    let mut tcp = upgrade_on(tcp, gw.addr, "/ws?user=mute").await;
    for i in 0..3 {
        let echo = json!({"type": "echo", "data": i});
        tcp.write_all(&text_frame(&echo)).await.unwrap();
    }
    assert_eq!(close_code(&mut tcp).await, 1008);
    // We never answer the close.
    let started = Instant::now();
    let mut buf = [0u8; 64];
    while within("TCP closed", tcp.read(&mut buf)).await.unwrap_or(0) != 0 {}
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn ws_max_queue_size() {
    /// How many 512 KiB publishes a client that never reads (with a small receive buffer)
    /// takes before the gateway closes it as a slow consumer; `None` if it survives `n`.
    async fn survives(queue: &str, n: usize) -> Option<usize> {
        let gw = gateway(&[("WS_MAX_QUEUE_SIZE", queue)]).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = within("tcp", socket.connect(gw.addr)).await.unwrap();
        let mut tcp = upgrade_on(tcp, gw.addr, "/ws?user=sloth").await;
        tcp.write_all(&text_frame(&json!({"type": "join", "room": "r", "id": 1})))
            .await
            .unwrap();
        let (_, ack) = read_server_frame(&mut tcp).await;
        assert_eq!(
            serde_json::from_slice::<Value>(&ack).unwrap()["type"],
            "ack"
        );
        let admin = format!("Authorization: Bearer {}\r\n", token("ops", &["admin"]));
        let big = "x".repeat(512 * 1024);
        for i in 1..=n {
            let (status, body) = publish(&gw, &admin, json!({"room": "r", "data": big})).await;
            assert_eq!(status, 200, "{body}");
            if body["delivered"] == 0 {
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
    // A queue of 1 overflows within a few publishes; one of 64 holds 10 of them.
    let closed_after = survives("1", 10).await;
    assert!(
        closed_after.is_some(),
        "a queue of 1 held 10 messages of 512 KiB"
    );
    assert_eq!(survives("64", 10).await, None);
}

#[tokio::test]
async fn ws_gateway_max_rooms_per_user() {
    let gw = gateway(&[("WS_GATEWAY_MAX_ROOMS_PER_USER", "2")]).await;
    let mut ws = connect(&gw, "?user=roomy").await;
    for (i, room) in ["a", "b"].iter().enumerate() {
        send(&mut ws, json!({"type": "join", "room": room, "id": i})).await;
        assert_eq!(next(&mut ws).await["type"], "ack");
    }
    send(&mut ws, json!({"type": "join", "room": "c", "id": "c"})).await;
    let answer = next(&mut ws).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["id"], "c");
    assert!(
        answer["error"].as_str().unwrap().contains("room limit"),
        "{answer}"
    );
    // Joining a room the user is in already is not a new room.
    send(&mut ws, json!({"type": "join", "room": "a", "id": "again"})).await;
    assert_eq!(next(&mut ws).await["type"], "ack");
    // Another connection of the same user shares the count.
    let mut ws2 = connect(&gw, "?user=roomy").await;
    send(&mut ws2, json!({"type": "join", "room": "d", "id": 9})).await;
    assert_eq!(next(&mut ws2).await["type"], "error");
}

#[tokio::test]
async fn ws_gateway_request_rate_and_burst() {
    let gw = gateway(&[
        ("WS_GATEWAY_REQUEST_RATE", "1"),
        ("WS_GATEWAY_REQUEST_BURST", "5"),
    ])
    .await;
    let mut ws = connect(&gw, "?user=chatty").await;
    // Five within the burst, then five refused with an error, then the close.
    for i in 0..11 {
        send(&mut ws, json!({"type": "echo", "data": i, "id": i})).await;
    }
    for i in 0..5 {
        let answer = next(&mut ws).await;
        assert_eq!(answer, json!({"type": "echo", "data": i, "id": i}));
    }
    for i in 5..10 {
        let answer = next(&mut ws).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["id"], i);
        assert!(answer["error"].as_str().unwrap().contains("rate limit"));
    }
    assert_eq!(
        next_close(&mut ws).await,
        Some((1008, "rate limit exceeded".to_owned()))
    );
    assert!(metric(&gw, "svc_ws_gateway_rate_limit_closes_total").await >= 1.0);
}

#[tokio::test]
async fn ws_max_incoming_rate_and_burst() {
    // 200 frames/s, bursts of 20: 120 requests written at once take at least 0.5 s to be read
    // (the gateway's own request rate, 500/s with bursts of 5,000, never refuses them).
    let gw = gateway(&[
        ("WS_MAX_INCOMING_RATE", "200"),
        ("WS_MAX_INCOMING_BURST", "20"),
    ])
    .await;
    let mut ws = connect(&gw, "?user=hasty").await;
    let start = Instant::now();
    for i in 0..120 {
        send(&mut ws, json!({"type": "echo", "data": i, "id": i})).await;
    }
    for i in 0..120 {
        assert_eq!(
            next(&mut ws).await,
            json!({"type": "echo", "data": i, "id": i})
        );
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(metric(&gw, "svc_ws_read_pauses_total").await >= 1.0);
}

#[tokio::test]
async fn a_client_that_writes_before_reading_is_slowed_down_not_disconnected() {
    // The default queue (16 messages) and rate; 3,000 requests written before any answer is
    // read, as a client does that stops reading its socket while it writes.
    // A small receive buffer, so that the answers fill the kernel's buffers as they do for a
    // client that reads nothing (on loopback they would otherwise absorb megabytes).
    let gw = gateway(&[]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = within("tcp", socket.connect(gw.addr)).await.unwrap();
    let tcp = upgrade_on(tcp, gw.addr, "/ws?user=eager").await;
    let requests: Vec<u8> = (0..3000)
        .flat_map(|i| text_frame(&json!({"type": "echo", "data": "y".repeat(1000), "id": i})))
        .collect();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&requests).await.unwrap();
        wr
    });
    // Start reading only once the writer is stuck or done (the server stopped reading).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3000 {
        let (opcode, payload) = read_server_frame(&mut rd).await;
        assert_eq!(opcode, protocol::OP_TEXT, "answer {i}");
        let answer: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(answer["type"], "echo", "answer {i}: {answer}");
        assert_eq!(answer["id"], i);
    }
    // Still open and answering.
    let mut wr = within("writer", writer).await.unwrap();
    wr.write_all(&text_frame(
        &json!({"type": "echo", "data": "last", "id": "last"}),
    ))
    .await
    .unwrap();
    let (_, payload) = read_server_frame(&mut rd).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["id"],
        "last"
    );
}
