//! ConnectionManager over real sockets: every method of the seed's table, rooms, hooks,
//! pruning, slow consumers, keepalive, shutdown.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, Query},
    response::Response,
    routing::get,
};
use common::{eventually, raw::*, server::*, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use svc_infra::websocket::{
    ConnectionHooks, ConnectionInfo, ConnectionManager, Json, SlowConsumerPolicy, WebSocketConfig,
    WebSocketError, WsManager, WsUpgrade, add_websocket_manager_with, protocol,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// `/ws/{user}`: registers with the manager (query parameters become metadata) and reads
/// until the connection ends.
async fn ws(
    ws: WsUpgrade,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    WsManager(manager): WsManager,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let metadata = q.into_iter().map(|(k, v)| (k, json!(v))).collect();
        let Ok(mut conn) = manager.connect_with_metadata(&user, socket, metadata).await else {
            return;
        };
        while let Some(item) = conn.recv().await {
            if item.is_err() {
                break;
            }
        }
    })
}

async fn start(manager: ConnectionManager) -> std::net::SocketAddr {
    let app = Router::new().route("/ws/{user}", get(ws));
    serve(add_websocket_manager_with(app, manager)).await
}

async fn connected(manager: &ConnectionManager, n: usize) {
    eventually(&format!("{n} connections"), || {
        manager.connection_count() == n
    })
    .await;
}

#[tokio::test]
async fn method_table() {
    let manager = ConnectionManager::default();
    let addr = start(manager.clone()).await;
    let mut a1 = connect(addr, "/ws/alice?device=phone").await;
    let mut a2 = connect(addr, "/ws/alice").await;
    let mut b = connect(addr, "/ws/bob").await;
    let mut c = connect(addr, "/ws/carol").await;
    connected(&manager, 4).await;

    assert_eq!(manager.active_users(), ["alice", "bob", "carol"]);
    assert!(manager.is_user_connected("alice"));
    assert!(!manager.is_user_connected("nobody"));
    let infos = manager.get_user_connections("alice");
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].user_id, "alice");
    assert_ne!(infos[0].connection_id, infos[1].connection_id);
    let phone = infos
        .iter()
        .find(|i| i.metadata.contains_key("device"))
        .expect("metadata");
    assert_eq!(phone.metadata["device"], "phone");
    assert!(manager.get_user_connections("nobody").is_empty());

    // send_to_user reaches every connection of the user, and only those.
    assert_eq!(manager.send_to_user("alice", "hi alice").await.unwrap(), 2);
    assert_eq!(next_text(&mut a1).await, "hi alice");
    assert_eq!(next_text(&mut a2).await, "hi alice");
    assert_eq!(manager.send_to_user("nobody", "x").await.unwrap(), 0);

    // broadcast, then broadcast excluding a user (all of their connections).
    assert_eq!(manager.broadcast(json!({"n": 1})).await.unwrap(), 4);
    for ws in [&mut a1, &mut a2, &mut b, &mut c] {
        assert_eq!(next_text(ws).await, r#"{"n":1}"#);
    }
    assert_eq!(
        manager
            .broadcast_excluding("not alice", "alice")
            .await
            .unwrap(),
        2
    );
    assert_eq!(next_text(&mut b).await, "not alice");
    assert_eq!(next_text(&mut c).await, "not alice");
    assert_silent(&mut a1, Duration::from_millis(100)).await;

    // Rooms.
    manager.join_room("alice", "general").await;
    manager.join_room("bob", "general").await;
    manager.join_room("bob", "general").await; // idempotent
    manager.join_room("carol", "vip").await;
    assert_eq!(manager.room_count(), 2);
    assert_eq!(manager.get_room_users("general"), ["alice", "bob"]);
    assert!(manager.get_room_users("nowhere").is_empty());
    assert_eq!(
        manager.room_count(),
        2,
        "asking about a room creates nothing"
    );
    assert_eq!(
        manager
            .broadcast_to_room("general", "room msg")
            .await
            .unwrap(),
        3
    );
    assert_eq!(next_text(&mut a1).await, "room msg");
    assert_eq!(next_text(&mut a2).await, "room msg");
    assert_eq!(next_text(&mut b).await, "room msg");
    assert_silent(&mut c, Duration::from_millis(100)).await;
    assert_eq!(
        manager
            .broadcast_to_room_excluding("general", "from alice", "alice")
            .await
            .unwrap(),
        1
    );
    assert_eq!(next_text(&mut b).await, "from alice");
    assert_eq!(manager.broadcast_to_room("nowhere", "x").await.unwrap(), 0);
    manager.leave_room("carol", "vip").await;
    assert_eq!(manager.room_count(), 1, "an empty room disappears");
    manager.leave_room("carol", "nowhere").await; // unknown: fine

    // disconnect one connection: the client sees 1000, the other stays.
    let first = manager.get_user_connections("alice")[0]
        .connection_id
        .clone();
    assert!(manager.disconnect("alice", &first).await);
    assert!(!manager.disconnect("alice", &first).await, "only once");
    assert_eq!(manager.connection_count(), 3);
    assert_eq!(next_close(&mut a1).await.map(|c| c.0), Some(1000));
    assert_eq!(manager.get_room_users("general"), ["alice", "bob"]);

    // disconnect_user closes the rest; alice leaves her rooms.
    assert_eq!(manager.disconnect_user("alice").await, 1);
    assert_eq!(next_close(&mut a2).await.map(|c| c.0), Some(1000));
    assert!(!manager.is_user_connected("alice"));
    assert_eq!(manager.get_room_users("general"), ["bob"]);
    assert_eq!(manager.connection_count(), 2);
}

#[tokio::test]
async fn rooms_follow_the_users_last_connection() {
    let manager = ConnectionManager::default();
    let addr = start(manager.clone()).await;
    let mut one = connect(addr, "/ws/dave").await;
    let two = connect(addr, "/ws/dave").await;
    connected(&manager, 2).await;
    manager.join_room("dave", "r1").await;
    manager.join_room("dave", "r2").await;

    // One of two connections closing changes nothing.
    drop(two);
    connected(&manager, 1).await;
    assert_eq!(manager.room_count(), 2);
    assert_eq!(manager.get_room_users("r1"), ["dave"]);

    // The last one closing (client close handshake) removes dave from every room.
    within("close", one.close(None)).await.unwrap();
    connected(&manager, 0).await;
    assert_eq!(manager.room_count(), 0);
    assert!(manager.active_users().is_empty());
}

#[derive(Default)]
struct Counting {
    connects: AtomicUsize,
    disconnects: AtomicUsize,
}

struct CountingHooks(Arc<Counting>);

impl ConnectionHooks for CountingHooks {
    async fn on_connect(
        &self,
        manager: &ConnectionManager,
        info: &ConnectionInfo,
    ) -> Result<(), svc_infra::websocket::BoxError> {
        self.0.connects.fetch_add(1, Ordering::SeqCst);
        if info.user_id == "rejected" {
            return Err("not today".into());
        }
        // A broadcast from inside the hook reaches the new connection too.
        if info.user_id == "greeted" {
            manager
                .broadcast(Json(json!({"event": "user_joined", "user": info.user_id})))
                .await?;
        }
        Ok(())
    }

    async fn on_disconnect(&self, _: &ConnectionManager, _: &ConnectionInfo) {
        self.0.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn hooks_fire_exactly_once_under_a_connect_disconnect_storm() {
    let counts = Arc::new(Counting::default());
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .hooks(CountingHooks(counts.clone()))
        .build();
    let addr = start(manager.clone()).await;

    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(addr, &format!("/ws/user{}", i % 20)).await;
            match i % 3 {
                // clean close handshake
                0 => within("close", ws.close(None)).await.unwrap(),
                // TCP dropped without a close frame
                1 => drop(ws),
                // a message, then a close
                _ => {
                    send_text(&mut ws, "hello").await;
                    within("close", ws.close(None)).await.unwrap();
                }
            }
        }));
    }
    // Meanwhile the server disconnects whole users.
    for i in 0..20 {
        manager.disconnect_user(&format!("user{i}")).await;
        tokio::task::yield_now().await;
    }
    for t in tasks {
        within("client task", t).await.unwrap();
    }
    connected(&manager, 0).await;
    eventually("all hooks", || {
        counts.disconnects.load(Ordering::SeqCst) == 200
    })
    .await;
    assert_eq!(counts.connects.load(Ordering::SeqCst), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        counts.disconnects.load(Ordering::SeqCst),
        200,
        "exactly once"
    );
    let stats = manager.stats();
    assert_eq!((stats.connects, stats.disconnects), (200, 200));
    assert_eq!(manager.room_count(), 0);
}

#[tokio::test]
async fn failing_on_connect_rolls_back_and_closes_1011() {
    let counts = Arc::new(Counting::default());
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .hooks(CountingHooks(counts.clone()))
        .build();
    let addr = start(manager.clone()).await;

    let mut ws = connect(addr, "/ws/rejected").await;
    assert_eq!(next_close(&mut ws).await.map(|c| c.0), Some(1011));
    assert_eq!(manager.connection_count(), 0);
    assert!(!manager.is_user_connected("rejected"));
    assert_eq!(
        counts.disconnects.load(Ordering::SeqCst),
        0,
        "never completed"
    );

    let mut greeted = connect(addr, "/ws/greeted").await;
    assert_eq!(
        next_text(&mut greeted).await,
        r#"{"event":"user_joined","user":"greeted"}"#
    );
}

#[tokio::test]
async fn closure_hooks() {
    let joined = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(0));
    let (j, l) = (joined.clone(), left.clone());
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .on_connect(move |_, _| {
            let j = j.clone();
            async move {
                j.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .on_disconnect(move |_, info| {
            let l = l.clone();
            async move {
                assert_eq!(info.user_id, "erin");
                l.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    let addr = start(manager.clone()).await;
    let ws = connect(addr, "/ws/erin").await;
    connected(&manager, 1).await;
    drop(ws);
    eventually("disconnect hook", || left.load(Ordering::SeqCst) == 1).await;
    assert_eq!(joined.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn vanished_peer_is_pruned() {
    let manager = ConnectionManager::default();
    let addr = start(manager.clone()).await;
    let gone = connect(addr, "/ws/ghost").await;
    let mut alive = connect(addr, "/ws/live").await;
    connected(&manager, 2).await;
    // Drop the TCP connection without a close frame.
    drop(gone);
    connected(&manager, 1).await;
    assert!(!manager.is_user_connected("ghost"));
    assert_eq!(manager.broadcast("still here").await.unwrap(), 1);
    assert_eq!(next_text(&mut alive).await, "still here");
}

/// Fills a non-reading client's socket and queue with big broadcasts while a reading
/// client keeps receiving every one of them.
async fn flood_until(
    manager: &ConnectionManager,
    reader: &mut Client,
    mut done: impl FnMut(&ConnectionManager) -> bool,
) -> usize {
    let payload = "x".repeat(64 * 1024);
    let mut sent = 0;
    while !done(manager) {
        assert!(sent < 2000, "slow consumer never detected");
        manager.broadcast(payload.as_str()).await.unwrap();
        sent += 1;
        // The reading client gets each broadcast promptly.
        let got = next_text(reader).await;
        assert_eq!(got.len(), payload.len());
    }
    sent
}

#[tokio::test]
async fn slow_consumer_is_disconnected_with_1013_and_counted() {
    let config = WebSocketConfig::default().with_max_queue_size(4);
    let manager = ConnectionManager::builder(config)
        .slow_consumer_policy(SlowConsumerPolicy::Disconnect)
        .build();
    let addr = start(manager.clone()).await;
    let mut fast = connect(addr, "/ws/fast").await;
    let _slow = connect(addr, "/ws/slow").await; // never reads
    connected(&manager, 2).await;
    flood_until(&manager, &mut fast, |m| !m.is_user_connected("slow")).await;
    assert_eq!(manager.stats().slow_consumer_disconnects, 1);
    assert!(manager.is_user_connected("fast"));
    // The fast client is unaffected afterwards too.
    assert_eq!(manager.broadcast("after").await.unwrap(), 1);
    assert_eq!(next_text(&mut fast).await, "after");
}

#[tokio::test]
async fn slow_consumer_drop_policies_keep_the_connection_and_count_drops() {
    for policy in [
        SlowConsumerPolicy::DropNewest,
        SlowConsumerPolicy::DropOldest,
    ] {
        let config = WebSocketConfig::default().with_max_queue_size(4);
        let manager = ConnectionManager::builder(config)
            .slow_consumer_policy(policy)
            .build();
        let addr = start(manager.clone()).await;
        let mut fast = connect(addr, "/ws/fast").await;
        let _slow = connect(addr, "/ws/slow").await;
        connected(&manager, 2).await;
        flood_until(&manager, &mut fast, |m| m.stats().dropped >= 3).await;
        assert!(manager.is_user_connected("slow"), "{policy:?}");
        assert_eq!(manager.stats().slow_consumer_disconnects, 0, "{policy:?}");
    }
}

#[tokio::test]
async fn dead_peer_reaped_by_keepalive() {
    let config = WebSocketConfig::default()
        .with_ping_interval(Some(Duration::from_millis(200)))
        .with_ping_timeout(Some(Duration::from_millis(200)))
        .with_close_timeout(Duration::from_millis(200));
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone()).await;
    // A raw client that completes the handshake and then never answers anything.
    let _mute = raw_upgrade(addr, "/ws/mute").await;
    // A well-behaved client alongside it answers pings (tungstenite does on read).
    let mut good = connect(addr, "/ws/good").await;
    connected(&manager, 2).await;
    let started = std::time::Instant::now();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        // Keep reading so pings are answered, until told to stop.
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                m = good.next() => if !matches!(m, Some(Ok(_))) { panic!("good client lost: {m:?}") },
            }
        }
        good
    });
    eventually("mute client reaped", || !manager.is_user_connected("mute")).await;
    let took = started.elapsed();
    // interval + timeout + one keepalive tick, with scheduling slack.
    assert!(took < Duration::from_millis(900), "reaped after {took:?}");
    assert_eq!(manager.stats().keepalive_timeouts, 1);
    assert!(manager.is_user_connected("good"), "answering client stays");
    let _ = stop.send(());
    let good = within("reader", reader).await.unwrap();
    drop(good);
}

#[tokio::test]
async fn shutdown_says_goodbye_with_1001_and_refuses_new_connections() {
    let counts = Arc::new(Counting::default());
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .hooks(CountingHooks(counts.clone()))
        .build();
    let addr = start(manager.clone()).await;
    let mut a = connect(addr, "/ws/a").await;
    let mut b = connect(addr, "/ws/b").await;
    connected(&manager, 2).await;
    manager.broadcast("last words").await.unwrap();
    let m = manager.clone();
    let shutdown = tokio::spawn(async move {
        m.shutdown(1001, "server shutting down", Duration::from_secs(5))
            .await
    });
    for ws in [&mut a, &mut b] {
        // Queued messages drain before the goodbye.
        assert_eq!(next_text(ws).await, "last words");
        assert_eq!(
            next_close(ws).await,
            Some((1001, "server shutting down".to_owned()))
        );
    }
    within("shutdown", shutdown).await.unwrap();
    assert_eq!(manager.connection_count(), 0);
    assert_eq!(counts.disconnects.load(Ordering::SeqCst), 2);
    // Refused before the upgrade, with 503, so that a load balancer tries another node.
    let late = connect_from_origin(&format!("ws://{addr}/ws/late"), None).await;
    assert_eq!(late.err(), Some(503));
}

#[tokio::test]
async fn manager_not_installed_is_a_clear_500() {
    async fn stats(WsManager(m): WsManager) -> String {
        m.connection_count().to_string()
    }
    let addr = serve(Router::new().route("/ws/stats", get(stats))).await;
    let mut tcp = within("tcp", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    within(
        "write",
        tcp.write_all(b"GET /ws/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
    .unwrap();
    let mut body = String::new();
    within("read", tcp.read_to_string(&mut body)).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 500"), "{body}");
    assert!(
        body.contains("Did you forget to call add_websocket_manager(app)?"),
        "{body}"
    );
}

#[tokio::test]
async fn bad_input_gets_clean_close_codes() {
    let config = WebSocketConfig::default().with_max_message_size(1024);
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone()).await;

    // Oversized frame → 1009.
    let mut big = connect(addr, "/ws/big").await;
    within("send", big.send(Message::binary(vec![0u8; 2048])))
        .await
        .unwrap();
    assert_eq!(next_close(&mut big).await.map(|c| c.0), Some(1009));

    // Invalid UTF-8 in a text frame → 1007.
    let mut tcp = raw_upgrade(addr, "/ws/utf8").await;
    let bad = protocol::encode_masked_frame(protocol::OP_TEXT, &[0xff], [1, 2, 3, 4]);
    within("write", tcp.write_all(&bad)).await.unwrap();
    let mut frame = [0u8; 64];
    let n = within("close", tcp.read(&mut frame)).await.unwrap();
    let header = protocol::FrameHeader::parse(&frame[..n]).unwrap().unwrap();
    assert_eq!(header.opcode, protocol::OP_CLOSE, "{:?}", &frame[..n]);
    let close = protocol::parse_close(&frame[header.len..n]).unwrap();
    assert_eq!(close.map(|c| c.0), Some(1007));
    // The server closes its side without waiting for us.
    connected(&manager, 0).await;
    drop(tcp);

    // A flood of pings from a client that never reads: no unbounded growth, and others
    // are unaffected.
    let mut flood = raw_upgrade(addr, "/ws/pinger").await;
    let mut other = connect(addr, "/ws/other").await;
    connected(&manager, 2).await;
    let ping = protocol::encode_masked_frame(protocol::OP_PING, b"", [1, 2, 3, 4]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 10_000)
        .collect();
    for _ in 0..20 {
        if within("flood", flood.write_all(&burst)).await.is_err() {
            break;
        }
    }
    assert_eq!(manager.send_to_user("other", "fine").await.unwrap(), 1);
    assert_eq!(next_text(&mut other).await, "fine");
}

/// A handler busy elsewhere (not in `recv`) must not make a healthy, reading client look
/// slow: a send writes whatever the socket takes before the queue counts as full.
#[tokio::test]
async fn busy_handler_does_not_make_a_reading_client_a_slow_consumer() {
    async fn busy(ws: WsUpgrade, WsManager(manager): WsManager) -> Response {
        ws.on_upgrade(move |socket| async move {
            let Ok(conn) = manager.connect("busy", socket).await else {
                return;
            };
            // Never calls recv: the application is doing something else for a while.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(conn);
        })
    }
    let config = WebSocketConfig::default()
        .with_max_queue_size(2)
        .with_max_message_size(64 << 20);
    let manager = ConnectionManager::builder(config)
        .slow_consumer_policy(SlowConsumerPolicy::Disconnect)
        .build();
    let app = add_websocket_manager_with(Router::new().route("/busy", get(busy)), manager.clone());
    let addr = serve(app).await;
    let (mut client, _) = within(
        "connect",
        tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/busy"),
            Some(
                tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(64 << 20))
                    .max_frame_size(Some(64 << 20)),
            ),
            false,
        ),
    )
    .await
    .unwrap();
    connected(&manager, 1).await;
    let reader = tokio::spawn(async move {
        let mut messages = 0;
        while messages < 101 {
            match within("read", client.next()).await {
                Some(Ok(Message::Binary(_))) => messages += 1,
                other => panic!("reader: {other:?}"),
            }
        }
        messages
    });
    // 8 MiB cannot fit in the socket buffers: the rest waits in the queue while the client
    // reads it; the small messages after it must find the socket drained, not a full queue.
    let big = vec![1u8; 8 << 20];
    assert_eq!(manager.send_to_user("busy", big).await.unwrap(), 1);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        manager.send_to_user("busy", &b"small"[..]).await.unwrap();
    }
    assert_eq!(within("reader", reader).await.unwrap(), 101);
    assert_eq!(manager.stats().slow_consumer_disconnects, 0);
    assert!(manager.is_user_connected("busy"));
}

/// `Connection::send` to a client that never reads follows the policy and is counted like a
/// broadcast: `DropNewest` keeps the connection and counts drops; `Disconnect` errors with
/// 1013 and counts the disconnect.
#[tokio::test]
async fn connection_send_to_a_stuck_client_follows_the_policy_and_is_counted() {
    async fn spam(ws: WsUpgrade, WsManager(manager): WsManager) -> Response {
        ws.on_upgrade(move |socket| async move {
            let Ok(conn) = manager.connect("stuck", socket).await else {
                return;
            };
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..2000 {
                if conn.send(chunk.as_slice()).is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
    }
    for (policy, check) in [
        (
            SlowConsumerPolicy::DropNewest,
            (|s: svc_infra::websocket::ManagerStats| {
                s.dropped > 0 && s.slow_consumer_disconnects == 0
            }) as fn(svc_infra::websocket::ManagerStats) -> bool,
        ),
        (SlowConsumerPolicy::Disconnect, |s| {
            s.slow_consumer_disconnects == 1
        }),
    ] {
        let config = WebSocketConfig::default().with_max_queue_size(4);
        let manager = ConnectionManager::builder(config)
            .slow_consumer_policy(policy)
            .build();
        let app =
            add_websocket_manager_with(Router::new().route("/spam", get(spam)), manager.clone());
        let addr = serve(app).await;
        let _client = connect(addr, "/spam").await; // never reads
        eventually(&format!("{policy:?} counted"), || check(manager.stats())).await;
    }
}

/// Broadcasts to more connections than one task writes per turn (tokio's budget is 128
/// writes), many of them in flight at once, with one client that never reads and whose
/// socket fills: every reading client gets every message, in order, and the stuck one is
/// waited for on the side, holding up no one.
#[tokio::test]
async fn broadcasts_to_hundreds_arrive_in_order_while_one_socket_is_full() {
    const CLIENTS: usize = 300;
    const MESSAGES: u32 = 40;
    const SIZE: usize = 16 * 1024;
    let config = WebSocketConfig::default().with_max_queue_size(64);
    let manager = ConnectionManager::builder(config)
        .slow_consumer_policy(SlowConsumerPolicy::Disconnect)
        .build();
    // Small, fixed send buffers on the server's sockets (loopback ones otherwise grow to
    // megabytes), so that sockets really fill: the stuck one for good, the others often.
    let listener = within("bind", tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        socket2::SockRef::from(&*tcp)
            .set_send_buffer_size(4096)
            .unwrap();
    });
    let app =
        add_websocket_manager_with(Router::new().route("/ws/{user}", get(ws)), manager.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A small receive buffer that never grows either: this client never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = within("tcp", socket.connect(addr)).await.unwrap();
    let stuck = upgrade_on(tcp, addr, "/ws/stuck").await;
    connected(&manager, 1).await;
    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let mut tcp = raw_upgrade(addr, &format!("/ws/u{i}")).await;
        readers.push(tokio::spawn(async move {
            for seq in 0..MESSAGES {
                let (_, payload) = within("frame", read_server_frame(&mut tcp)).await;
                assert_eq!(payload.len(), SIZE);
                assert_eq!(payload[..4], seq.to_be_bytes(), "client {i}: out of order");
            }
        }));
    }
    connected(&manager, CLIENTS + 1).await;
    for seq in 0..MESSAGES {
        let mut message = vec![0u8; SIZE];
        message[..4].copy_from_slice(&seq.to_be_bytes());
        assert_eq!(manager.broadcast(message).await.unwrap(), CLIENTS + 1);
        if seq % 8 == 7 {
            tokio::task::yield_now().await; // let the flusher take a turn mid-stream
        }
    }
    for reader in readers {
        within("reader", reader).await.unwrap();
    }
    // 640 KiB did not fit the stuck client's socket, yet nothing was dropped or closed.
    let stats = manager.stats();
    assert_eq!(stats.slow_consumer_disconnects, 0);
    assert_eq!(stats.dropped, 0);
    assert!(manager.is_user_connected("stuck"));
    drop(stuck);
}

/// `max_message_size` holds for what the manager sends: every send path refuses a larger
/// message with `MessageTooLarge` before anything goes out, and the connections stay open.
#[tokio::test]
async fn sends_over_the_size_limit_are_refused_before_sending() {
    let manager = ConnectionManager::new(WebSocketConfig::default().with_max_message_size(1024));
    let addr = start(manager.clone()).await;
    let mut ws = connect(addr, "/ws/amy").await;
    connected(&manager, 1).await;
    manager.join_room("amy", "lobby").await;

    let big = "x".repeat(1025);
    let refusals = [
        manager.broadcast(big.as_str()).await,
        manager.broadcast_excluding(big.as_str(), "nobody").await,
        manager.broadcast_to_room("lobby", big.as_str()).await,
        manager
            .broadcast_to_room_excluding("lobby", big.as_str(), "nobody")
            .await,
        manager.send_to_user("amy", big.as_str()).await,
        manager.send_to_user("amy", big.as_bytes().to_vec()).await,
    ];
    for result in refusals {
        match result {
            Err(WebSocketError::MessageTooLarge { size, limit }) => {
                assert_eq!((size, limit), (1025, 1024));
            }
            other => panic!("expected MessageTooLarge, got {other:?}"),
        }
    }
    assert_silent(&mut ws, Duration::from_millis(200)).await;
    assert_eq!(manager.stats().frames_sent, 0);

    // Exactly the limit is fine, and the connection is still open.
    let fits = "y".repeat(1024);
    assert_eq!(manager.broadcast(fits.as_str()).await.unwrap(), 1);
    assert_eq!(next_text(&mut ws).await, fits);
}

/// `allowed_origins`: a browser upgrade from another origin gets 403 before the upgrade
/// (nothing registers); a listed origin, any case, and a client without `Origin` get in.
#[tokio::test]
async fn upgrades_from_origins_not_allowed_get_403() {
    let config = WebSocketConfig::from_vars([(
        "WS_ALLOWED_ORIGINS",
        "https://app.example.com, http://localhost:3000/",
    )])
    .unwrap();
    assert_eq!(
        config.allowed_origins.as_deref(),
        Some(
            &[
                "https://app.example.com".to_owned(),
                "http://localhost:3000".to_owned()
            ][..]
        )
    );
    let manager = ConnectionManager::new(config);
    let addr = start(manager.clone()).await;
    let url = format!("ws://{addr}/ws/u");
    for refused in [
        "https://evil.example",
        "https://app.example.com.evil",
        "null",
    ] {
        let status = connect_from_origin(&url, Some(refused)).await.err();
        assert_eq!(status, Some(403), "{refused}");
    }
    assert_eq!(manager.stats().connects, 0);
    for allowed in [
        Some("https://APP.example.com"),
        Some("http://localhost:3000"),
        None,
    ] {
        let ws = connect_from_origin(&url, allowed)
            .await
            .unwrap_or_else(|status| panic!("{allowed:?}: HTTP {status}"));
        drop(ws);
    }
    eventually("3 connects", || manager.stats().connects == 3).await;

    for bad in ["", "app.example.com", "https://a.example/path", " , "] {
        assert!(
            WebSocketConfig::from_vars([("WS_ALLOWED_ORIGINS", bad)]).is_err(),
            "{bad:?}"
        );
    }
    let any = WebSocketConfig::from_vars([("WS_ALLOWED_ORIGINS", "*")]).unwrap();
    assert_eq!(any.allowed_origins, None);
}

/// A peer that neither reads nor closes holds nothing once shutdown gives up on it: the
/// connection is released after the drain timeout and its handler's `recv` ends at once,
/// instead of waiting for a FIN that never comes (the handler's task would live on).
#[tokio::test]
async fn shutdown_ends_the_handler_of_a_peer_that_never_closes() {
    let manager = ConnectionManager::new(WebSocketConfig::default());
    let ended = Arc::new(tokio::sync::Notify::new());
    let app = {
        let ended = ended.clone();
        Router::new().route(
            "/ws/{user}",
            get(
                move |ws: WsUpgrade, Path(user): Path<String>, WsManager(m): WsManager| {
                    let ended = ended.clone();
                    async move {
                        ws.on_upgrade(move |socket| async move {
                            let Ok(mut conn) = m.connect(&user, socket).await else {
                                return;
                            };
                            while conn.recv().await.is_some() {}
                            ended.notify_one();
                        })
                    }
                },
            ),
        )
    };
    let addr = serve(add_websocket_manager_with(app, manager.clone())).await;
    // Upgraded, then silent: it never reads, never answers the close, never closes.
    let _mute = raw_upgrade(addr, "/ws/mute").await;
    connected(&manager, 1).await;
    let m = manager.clone();
    within(
        "shutdown",
        m.shutdown(1001, "server shutting down", Duration::from_millis(200)),
    )
    .await;
    assert_eq!(manager.connection_count(), 0);
    // Well before the close timeout (10 s), which would end it otherwise.
    let ended = tokio::time::timeout(Duration::from_secs(2), ended.notified()).await;
    assert!(
        ended.is_ok(),
        "the handler's recv did not end after the release"
    );
}
