//! The limits that hold against hostile clients, over real sockets: the handshake timeout of
//! `svc_infra::websocket::serve` (slowloris), and the admission limits (`WS_MAX_CONNECTIONS`,
//! `WS_MAX_CONNECTIONS_PER_USER`) answered before the upgrade with 503 / 429 and
//! `Retry-After`, and enforced after it with a close when a handshake got past the check.

mod common;

use std::time::{Duration, Instant};

use axum::{Router, extract::Path, response::Response, routing::get};
use common::{eventually, raw::*, server::*, within};
use svc_infra::websocket::{
    ConnectionManager, WebSocketConfig, WsManager, WsUpgrade, add_websocket_manager_with, protocol,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// `/ws/{user}` names its user before the upgrade (`for_user`); `/late/{user}` does not, so
/// only registration can refuse it. Both echo (`reply`) until the connection ends.
async fn start(manager: ConnectionManager, handshake_timeout: Duration) -> std::net::SocketAddr {
    async fn run(ws: WsUpgrade, user: String, manager: ConnectionManager) -> Response {
        ws.on_upgrade(move |socket| async move {
            let Ok(mut conn) = manager.connect(&user, socket).await else {
                return;
            };
            while let Some(Ok(message)) = conn.recv().await {
                if conn.reply(message).await.is_err() {
                    break;
                }
            }
        })
    }
    let app = Router::new()
        .route(
            "/ws/{user}",
            get(
                |ws: WsUpgrade, Path(user): Path<String>, WsManager(m): WsManager| async move {
                    run(ws.for_user(user.clone()), user, m).await
                },
            ),
        )
        .route(
            "/late/{user}",
            get(
                |ws: WsUpgrade, Path(user): Path<String>, WsManager(m): WsManager| async move {
                    run(ws, user, m).await
                },
            ),
        );
    serve_with(add_websocket_manager_with(app, manager), handshake_timeout).await
}

/// Reads until the server closes the connection; returns how long that took.
async fn time_to_close(tcp: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 256];
    loop {
        match within("server closes", tcp.read(&mut buf)).await {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

/// The status line and `Retry-After` of an upgrade answered without upgrading.
async fn refused(addr: std::net::SocketAddr, path: &str) -> (String, Option<String>) {
    let tcp = within("tcp", TcpStream::connect(addr)).await.unwrap();
    let (_, head) = upgrade_request(tcp, addr, path).await;
    let status = head.lines().next().unwrap_or_default().to_owned();
    let retry_after = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .map(str::to_owned);
    (status, retry_after)
}

#[tokio::test]
async fn stalled_handshakes_are_closed_at_the_handshake_timeout() {
    let timeout = Duration::from_millis(400);
    let addr = start(ConnectionManager::default(), timeout).await;

    // Nothing at all.
    let start = Instant::now();
    let mut silent = within("tcp", TcpStream::connect(addr)).await.unwrap();
    // Headers one byte at a time, each within the timeout, never finished.
    let mut slow = within("tcp", TcpStream::connect(addr)).await.unwrap();
    let drip = tokio::spawn(async move {
        for byte in b"GET /ws/slow HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        time_to_close(&mut slow, start).await
    });
    // A request line, then silence.
    let mut partial = within("tcp", TcpStream::connect(addr)).await.unwrap();
    partial.write_all(b"GET /ws/p HTTP/1.1\r\n").await.unwrap();

    for (what, took) in [
        ("silent", time_to_close(&mut silent, start).await),
        ("partial", time_to_close(&mut partial, start).await),
        ("one byte at a time", within("drip", drip).await.unwrap()),
    ] {
        assert!(
            took >= timeout - Duration::from_millis(50) && took < timeout * 4,
            "{what}: closed after {took:?}, timeout {timeout:?}"
        );
    }

    // A connection that upgraded is not cut by the timer: it echoes long after it.
    let mut ws = connect(addr, "/ws/alice").await;
    tokio::time::sleep(timeout * 2).await;
    send_text(&mut ws, "still here").await;
    assert_eq!(next_text(&mut ws).await, "still here");
}

#[tokio::test]
async fn the_node_limit_answers_503_with_retry_after() {
    let config = WebSocketConfig::from_vars([("WS_MAX_CONNECTIONS", "2")]).unwrap();
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone(), Duration::from_secs(10)).await;
    let a = connect(addr, "/ws/a").await;
    let _b = connect(addr, "/ws/b").await;
    eventually("2 connections", || manager.connection_count() == 2).await;

    let (status, retry_after) = refused(addr, "/ws/c").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(manager.connection_count(), 2);

    // A place frees up: the next one gets in.
    drop(a);
    eventually("a leaves", || manager.connection_count() == 1).await;
    let mut c = connect(addr, "/ws/c").await;
    send_text(&mut c, "in").await;
    assert_eq!(next_text(&mut c).await, "in");
}

#[tokio::test]
async fn the_user_limit_answers_429_and_other_users_still_get_in() {
    let config = WebSocketConfig::default().with_max_connections_per_user(2);
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone(), Duration::from_secs(10)).await;
    let _a1 = connect(addr, "/ws/alice").await;
    let _a2 = connect(addr, "/ws/alice").await;
    eventually("alice twice", || {
        manager.get_user_connections("alice").len() == 2
    })
    .await;

    let (status, retry_after) = refused(addr, "/ws/alice").await;
    assert!(status.starts_with("HTTP/1.1 429"), "{status}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    let mut bob = connect(addr, "/ws/bob").await;
    send_text(&mut bob, "hi").await;
    assert_eq!(next_text(&mut bob).await, "hi");
    assert_eq!(manager.get_user_connections("alice").len(), 2);
}

#[tokio::test]
async fn a_handler_that_does_not_name_its_user_still_meets_the_limit_as_a_close() {
    let config = WebSocketConfig::default().with_max_connections_per_user(1);
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone(), Duration::from_secs(10)).await;
    let _first = connect(addr, "/late/alice").await;
    eventually("alice once", || manager.connection_count() == 1).await;

    let mut second = connect(addr, "/late/alice").await;
    assert_eq!(
        next_close(&mut second).await,
        Some((1008, "too many connections for this user".to_owned()))
    );
    assert_eq!(manager.get_user_connections("alice").len(), 1);
}

#[tokio::test]
async fn racing_handshakes_never_exceed_the_user_limit() {
    let limit = 3;
    let config = WebSocketConfig::default().with_max_connections_per_user(limit);
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone(), Duration::from_secs(10)).await;

    // 20 handshakes of one user at once: some pass the check before the upgrade together,
    // registration lets only `limit` in; the rest get 429 or, past the check, a 1008 close.
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let (mut tcp, head) = upgrade_request(tcp, addr, "/ws/mallory").await;
                if !head.starts_with("HTTP/1.1 101") {
                    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
                    return (false, tcp);
                }
                // Upgraded: either it stays (echo) or it is closed with 1008 at once.
                let ping = protocol::encode_masked_frame(protocol::OP_TEXT, b"x", [1, 2, 3, 4]);
                tcp.write_all(&ping).await.unwrap();
                let (opcode, payload) = read_server_frame(&mut tcp).await;
                match opcode {
                    protocol::OP_TEXT => (true, tcp),
                    protocol::OP_CLOSE => {
                        assert_eq!(&payload[..2], &1008u16.to_be_bytes());
                        (false, tcp)
                    }
                    other => panic!("unexpected opcode {other}"),
                }
            })
        })
        .collect();
    let mut kept = Vec::new();
    for attempt in attempts {
        let (admitted, tcp) = within("attempt", attempt).await.unwrap();
        if admitted {
            kept.push(tcp);
        }
    }
    assert_eq!(kept.len(), limit);
    assert_eq!(manager.get_user_connections("mallory").len(), limit);
}

#[tokio::test]
async fn a_manager_shutting_down_answers_503() {
    let manager = ConnectionManager::default();
    let addr = start(manager.clone(), Duration::from_secs(10)).await;
    manager
        .shutdown(1001, "server shutting down", Duration::from_millis(100))
        .await;
    let (status, retry_after) = refused(addr, "/ws/late").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert_eq!(retry_after.as_deref(), Some("5"));
}

/// Writes `n` numbered text frames in one go, then reads their echoes: the time from the
/// write to the last echo, after checking each arrived, in order.
async fn echo_burst(addr: std::net::SocketAddr, path: &str, n: usize) -> (Duration, TcpStream) {
    let mut tcp = raw_upgrade(addr, path).await;
    let frames: Vec<u8> = (0..n)
        .flat_map(|i| {
            protocol::encode_masked_frame(protocol::OP_TEXT, i.to_string().as_bytes(), [1, 2, 3, 4])
        })
        .collect();
    let start = Instant::now();
    within("write the burst", tcp.write_all(&frames))
        .await
        .unwrap();
    for i in 0..n {
        let (opcode, payload) = read_server_frame(&mut tcp).await;
        assert_eq!(opcode, protocol::OP_TEXT, "frame {i}: {payload:?}");
        assert_eq!(String::from_utf8(payload).unwrap(), i.to_string());
    }
    (start.elapsed(), tcp)
}

#[tokio::test]
async fn a_connection_over_its_read_budget_is_slowed_down_not_closed() {
    // 1,000 frames/s, bursts of 50: 550 frames written at once take at least 0.5 s to read.
    let config = WebSocketConfig::default().with_max_incoming_rate(1_000, 50);
    let addr = start(ConnectionManager::new(config), Duration::from_secs(10)).await;
    let (slowed, mut tcp) = echo_burst(addr, "/ws/flooder", 550).await;
    assert!(slowed >= Duration::from_millis(450), "{slowed:?}");
    // Still open, and a frame within the budget is answered at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ping = protocol::encode_masked_frame(protocol::OP_TEXT, b"still here", [1, 2, 3, 4]);
    tcp.write_all(&ping).await.unwrap();
    let (_, payload) = within("answer", read_server_frame(&mut tcp)).await;
    assert_eq!(payload, b"still here");

    // The same burst without a budget is read as fast as it comes.
    let unlimited = WebSocketConfig::default().with_max_incoming_rate(0, 1);
    let addr = start(ConnectionManager::new(unlimited), Duration::from_secs(10)).await;
    let (fast, _) = echo_burst(addr, "/ws/flooder", 550).await;
    assert!(fast < Duration::from_millis(300), "{fast:?}");
}
