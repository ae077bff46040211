//! The library's log lines about connections (`docs/operations.md`, "Logs"), read from a
//! subscriber that captures them: a refused upgrade, a refused registration, and the closes
//! decided outside the connection's task (keepalive, slow consumer), each with its code and
//! reason and the connection's id and user. `crates/svc-ws/tests/logs.rs` reads the JSON of a
//! whole gateway run, and checks that no secret is written.

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::Path, response::Response, routing::get};
use common::{eventually, raw::*, server::*};
use futures_util::StreamExt;
use svc_infra::websocket::{
    ConnectionManager, SlowConsumerPolicy, WebSocketConfig, WsManager, WsUpgrade,
    add_websocket_manager_with,
};
use tracing::subscriber::DefaultGuard;

/// The lines written while the guard lives, on this thread (the test's runtime is
/// single-threaded, so its tasks too), at debug for the library.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn start() -> (Self, DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("svc_infra=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The lines that contain every one of `parts`.
    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
            .collect()
    }
}

/// `/ws/{user}`: registers with the manager (without naming the user to `WsUpgrade`, so the
/// per-user limit is found at registration) and reads until the connection ends.
async fn ws(ws: WsUpgrade, Path(user): Path<String>, WsManager(manager): WsManager) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        while let Some(Ok(_)) = conn.recv().await {}
    })
}

async fn start(manager: ConnectionManager) -> std::net::SocketAddr {
    let app = Router::new().route("/ws/{user}", get(ws));
    serve(add_websocket_manager_with(app, manager)).await
}

#[tokio::test]
async fn a_keepalive_timeout_is_one_line_with_the_connection_and_the_code() {
    let (logs, _guard) = Captured::start();
    let config = WebSocketConfig::default()
        .with_ping_interval(Some(Duration::from_millis(100)))
        .with_ping_timeout(Some(Duration::from_millis(100)))
        .with_close_timeout(Duration::from_millis(100));
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone()).await;
    let _mute = raw_upgrade(addr, "/ws/mute").await; // never answers a ping
    eventually("mute reaped", || manager.stats().keepalive_timeouts == 1).await;
    let registered = logs.lines_with(&["connection registered", r#"user="mute""#]);
    assert_eq!(registered.len(), 1, "{}", logs.text());
    // Written in the connection's span.
    assert!(
        registered[0].contains(r#"connection{peer=127.0.0.1:"#)
            && registered[0].contains(r#"conn_id=1 user="mute"}"#),
        "{}",
        registered[0]
    );
    let closed = logs.lines_with(&["connection closed", "conn_id=1", r#"user="mute""#]);
    assert_eq!(closed.len(), 1, "{}", logs.text());
    assert!(
        closed[0].contains(r#"code=1011 reason="keepalive ping timeout""#),
        "{}",
        closed[0]
    );
    // Decided by the keepalive task: outside any connection's span.
    assert!(!closed[0].contains("connection{"), "{}", closed[0]);
}

#[tokio::test]
async fn a_slow_consumer_close_is_one_line_with_1013() {
    let (logs, _guard) = Captured::start();
    let config = WebSocketConfig::default().with_max_queue_size(4);
    let manager = ConnectionManager::builder(config)
        .slow_consumer_policy(SlowConsumerPolicy::Disconnect)
        .build();
    let addr = start(manager.clone()).await;
    let _slow = raw_upgrade(addr, "/ws/slow").await; // never reads
    eventually("registered", || manager.connection_count() == 1).await;
    let payload = "x".repeat(64 * 1024);
    let mut sent = 0;
    while manager.is_user_connected("slow") {
        assert!(sent < 2000, "slow consumer never detected");
        manager.broadcast(payload.as_str()).await.unwrap();
        sent += 1;
        tokio::task::yield_now().await;
    }
    let closed = logs.lines_with(&["connection closed", r#"user="slow""#]);
    assert_eq!(closed.len(), 1, "{}", logs.text());
    assert!(
        closed[0].contains(r#"code=1013 reason="slow consumer""#),
        "{}",
        closed[0]
    );
}

#[tokio::test]
async fn refusals_say_why_before_and_after_the_upgrade() {
    let (logs, _guard) = Captured::start();
    let config = WebSocketConfig::default()
        .with_max_connections_per_user(1)
        .with_allowed_origins(["https://app.example.com"]);
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone()).await;

    // Before the upgrade: an origin that is not allowed.
    let refused = connect_from_origin(&format!("ws://{addr}/ws/eve"), Some("https://evil.test"))
        .await
        .map(drop);
    assert_eq!(refused, Err(403));
    let line = logs.lines_with(&["websocket upgrade refused"]);
    assert_eq!(line.len(), 1, "{}", logs.text());
    for part in [
        "status=403",
        r#"reason="Origin not allowed""#,
        r#"kind="origin""#,
        r#"origin="https://evil.test""#,
        "peer=127.0.0.1:",
    ] {
        assert!(line[0].contains(part), "{part} in {}", line[0]);
    }

    // After it: a second connection of the same user, found at registration (1008).
    let mut first = connect(addr, "/ws/amy").await;
    eventually("registered", || manager.connection_count() == 1).await;
    let mut second = connect(addr, "/ws/amy").await;
    match common::within("close", second.next()).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008);
        }
        other => panic!("expected a close, got {other:?}"),
    }
    let line = logs.lines_with(&["connection refused after the upgrade"]);
    assert_eq!(line.len(), 1, "{}", logs.text());
    for part in [
        r#"conn_id=2 user="amy"}"#, // the span
        "code=1008",
        r#"reason="too many connections for this user""#,
        r#"kind="user_full""#,
    ] {
        assert!(line[0].contains(part), "{part} in {}", line[0]);
    }
    // The first one closes from the client: its own line, in its span, with its code.
    first.close(None).await.unwrap();
    eventually("closed", || manager.connection_count() == 0).await;
    let closed = logs.lines_with(&["connection closed", r#"user="amy""#]);
    assert_eq!(closed.len(), 1, "{}", logs.text());
    assert!(
        closed[0].contains(r#"conn_id=1 user="amy"}"#) && closed[0].contains("code=1005"),
        "{}",
        closed[0]
    );
}
