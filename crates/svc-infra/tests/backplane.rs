//! Managers joined by a backplane: in memory, and over a real `redis-server` (a private one
//! on a free port, killed and restarted by the tests). Without `redis-server` on PATH the
//! Redis tests fail when `CI` is set and are skipped (with a message) otherwise.

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::Path, response::Response, routing::get};
use bytes::BytesMut;
use common::{
    QUIET, eventually,
    raw::{deflate_upgrade, raw_upgrade, read_frame},
    redis::{PubSubFreezer, RedisServer},
    server::*,
};
use svc_infra::websocket::{
    ConnectionManager, WebSocketConfig, WsManager, WsUpgrade, add_websocket_manager_with,
    backplane::{Backplane, BackplaneStatus, Envelope, InMemoryBackplane, RedisBackplane},
    protocol::{self, OP_TEXT, deflate},
};
use tokio::net::TcpStream;

/// `/ws/{user}`: registers with the manager and reads until the connection ends.
async fn ws(ws: WsUpgrade, Path(user): Path<String>, WsManager(manager): WsManager) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        while let Some(Ok(_)) = conn.recv().await {}
    })
}

/// How often the test nodes tell each other who is connected.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// A manager on `backplane`, served on 127.0.0.1:0.
async fn node(backplane: impl Backplane) -> (ConnectionManager, SocketAddr) {
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .backplane(backplane)
        .presence_heartbeat(HEARTBEAT)
        .build();
    let app =
        add_websocket_manager_with(Router::new().route("/ws/{user}", get(ws)), manager.clone());
    (manager, serve(app).await)
}

/// Waits until `n` connections are registered with this node.
async fn connected(manager: &ConnectionManager, n: usize) {
    eventually(&format!("{n} connections"), || {
        manager.local_connection_count() == n
    })
    .await;
}

/// The scenario both backplanes must pass: two nodes, users on each, one user on both.
/// `ready` waits until the backplane carries what the nodes now subscribe to (channel,
/// number of nodes).
async fn two_nodes_act_as_one(
    (a, addr_a): (ConnectionManager, SocketAddr),
    (b, addr_b): (ConnectionManager, SocketAddr),
    ready: impl AsyncFn(&[(&str, i64)]),
) {
    let mut alice = connect(addr_a, "/ws/alice").await;
    let mut bob = connect(addr_b, "/ws/bob").await;
    let mut carol = connect(addr_b, "/ws/carol").await;
    let mut dave_a = connect(addr_a, "/ws/dave").await;
    let mut dave_b = connect(addr_b, "/ws/dave").await;
    connected(&a, 2).await;
    connected(&b, 3).await;
    a.join_room("alice", "lobby").await;
    b.join_room("carol", "lobby").await;
    ready(&[
        ("all", 2),
        ("user:alice", 1),
        ("user:bob", 1),
        ("user:carol", 1),
        ("user:dave", 2),
        ("room:lobby", 2),
    ])
    .await;

    // A broadcast reaches every connection of both nodes once; the count is this node's.
    assert_eq!(a.broadcast("to all").await.unwrap(), 2);
    for ws in [&mut alice, &mut bob, &mut carol, &mut dave_a, &mut dave_b] {
        assert_eq!(next_text(ws).await, "to all");
    }
    // Excluding a user excludes them on every node.
    assert_eq!(b.broadcast_excluding("not dave", "dave").await.unwrap(), 2);
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(next_text(ws).await, "not dave");
    }
    // A room's members on both nodes.
    assert_eq!(b.broadcast_to_room("lobby", "lobby news").await.unwrap(), 1);
    assert_eq!(next_text(&mut alice).await, "lobby news");
    assert_eq!(next_text(&mut carol).await, "lobby news");
    assert_eq!(
        a.broadcast_to_room_excluding("lobby", "carol only", "alice")
            .await
            .unwrap(),
        0
    );
    assert_eq!(next_text(&mut carol).await, "carol only");
    // Every connection of a user, wherever it is.
    assert_eq!(a.send_to_user("dave", "dm").await.unwrap(), 1);
    assert_eq!(next_text(&mut dave_a).await, "dm");
    assert_eq!(next_text(&mut dave_b).await, "dm");
    // Nothing arrived twice, nothing went where it should not.
    for ws in [&mut alice, &mut bob, &mut carol, &mut dave_a, &mut dave_b] {
        assert_silent(ws, QUIET).await;
    }

    // Presence answers for the cluster, on either node.
    for m in [&a, &b] {
        eventually("the cluster's presence", || {
            m.connection_count() == 5
                && m.active_users() == ["alice", "bob", "carol", "dave"]
                && m.get_room_users("lobby") == ["alice", "carol"]
                && m.room_count() == 1
        })
        .await;
        assert!(m.is_user_connected("alice") && m.is_user_connected("bob"));
        assert!(!m.is_user_connected("erin"));
    }
    assert_eq!(a.local_connection_count(), 2);
    // Leaving is seen everywhere: the last connection, a room.
    drop(bob);
    b.leave_room("carol", "lobby").await;
    eventually("bob gone and carol out of the lobby, seen from a", || {
        !a.is_user_connected("bob")
            && a.get_room_users("lobby") == ["alice"]
            && a.connection_count() == 4
    })
    .await;
}

/// A node that stops telling the others about itself (it crashed, or lost the backplane)
/// is forgotten after three of its own heartbeats, and not before, even when they are
/// slower than the listener's.
#[tokio::test]
async fn a_silent_node_is_forgotten() {
    let hub = InMemoryBackplane::new();
    let a = ConnectionManager::builder(WebSocketConfig::default())
        .backplane(hub.clone())
        .presence_heartbeat(HEARTBEAT)
        .build();
    let b = ConnectionManager::builder(WebSocketConfig::default())
        .backplane(hub.clone())
        .presence_heartbeat(HEARTBEAT * 4)
        .build();
    b.join_room("zed", "attic").await; // a member need not be connected
    assert_eq!(a.get_room_users("attic"), ["zed"]);
    assert_eq!(a.room_count(), 1);
    // Never missing while b keeps telling, every 400 ms (a's own period is 100 ms).
    let watch = tokio::time::Instant::now();
    while watch.elapsed() < HEARTBEAT * 12 {
        assert_eq!(
            a.get_room_users("attic"),
            ["zed"],
            "after {:?}",
            watch.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
    eventually("zed forgotten", || a.get_room_users("attic").is_empty()).await;
    assert_eq!(a.room_count(), 0);
}

#[tokio::test]
async fn in_memory_backplane_joins_managers_of_one_process() {
    let hub = InMemoryBackplane::new();
    let a = node(hub.clone()).await;
    let b = node(hub.clone()).await;
    assert_eq!(a.0.backplane_status(), Some(BackplaneStatus::Connected));
    assert_ne!(a.0.node_id(), b.0.node_id());
    two_nodes_act_as_one(a, b, async |_: &[(&str, i64)]| {}).await;
}

/// A room's chat messages as JSON, about `n` bytes (deflates about 3:1 or better).
fn json_message(n: usize, tag: &str) -> String {
    let mut s = format!("{{\"type\":\"message\",\"room\":\"news\",\"tag\":\"{tag}\",\"items\":[");
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

/// The next server frame: whether RSV1 marks it compressed, and its payload.
async fn next_frame(tcp: &mut TcpStream) -> (bool, Vec<u8>) {
    let (header, payload) = read_frame(tcp).await;
    assert!(header.mask.is_none() && header.fin);
    assert_eq!(header.opcode, OP_TEXT);
    (header.rsv & 0b100 != 0, payload)
}

/// What a browser would make of a compressed payload.
fn inflated(payload: &[u8]) -> Vec<u8> {
    let mut inflater = deflate::Inflater::new(15, true);
    let out = inflater.inflate(&mut BytesMut::from(payload), 1 << 24);
    out.expect("valid deflate data").to_vec()
}

/// A room broadcast crosses nodes deflated when the origin deflated it: both nodes' clients
/// with compression get the same compressed bytes, a plain client on the other node the
/// plain message, and the message is deflated once in the cluster. An origin without a
/// compressed recipient of its own publishes plain, and the other node deflates once.
async fn a_deflated_broadcast_is_deflated_once_in_the_cluster(
    (a, addr_a): (ConnectionManager, SocketAddr),
    (b, addr_b): (ConnectionManager, SocketAddr),
    ready: impl AsyncFn(&[(&str, i64)]),
) {
    let (mut zip_a, accepted_a) = deflate_upgrade(addr_a, "/ws/zip-a").await;
    let (mut zip_b, accepted_b) = deflate_upgrade(addr_b, "/ws/zip-b").await;
    assert!(accepted_a && accepted_b, "permessage-deflate negotiated");
    let mut plain_b = raw_upgrade(addr_b, "/ws/plain-b").await;
    connected(&a, 1).await;
    connected(&b, 2).await;
    a.join_room("zip-a", "news").await;
    b.join_room("zip-b", "news").await;
    b.join_room("plain-b", "news").await;
    b.join_room("zip-b", "quiet").await;
    b.join_room("plain-b", "quiet").await;
    ready(&[("room:news", 2), ("room:quiet", 1)]).await;

    let text = json_message(1_024, "from a");
    assert_eq!(a.broadcast_to_room("news", text.as_str()).await.unwrap(), 1);
    let (rsv1_a, bytes_a) = next_frame(&mut zip_a).await;
    let (rsv1_b, bytes_b) = next_frame(&mut zip_b).await;
    assert!(rsv1_a && rsv1_b, "compressed on both nodes");
    assert_eq!(bytes_a, bytes_b, "the origin's bytes, byte for byte");
    assert!(
        bytes_a.len() * 3 < text.len(),
        "{} of {}",
        bytes_a.len(),
        text.len()
    );
    assert_eq!(inflated(&bytes_b), text.as_bytes());
    assert_eq!(
        next_frame(&mut plain_b).await,
        (false, text.clone().into_bytes())
    );
    assert_eq!(a.stats().deflated, 1, "deflated at the origin");
    assert_eq!(b.stats().deflated, 0, "not again on the other node");

    // Nobody here to compress for: plain on the backplane, deflated once on b.
    let text = json_message(1_024, "plain across");
    assert_eq!(
        a.broadcast_to_room("quiet", text.as_str()).await.unwrap(),
        0
    );
    let (rsv1, bytes) = next_frame(&mut zip_b).await;
    assert!(rsv1);
    assert_eq!(inflated(&bytes), text.as_bytes());
    assert_eq!(
        next_frame(&mut plain_b).await,
        (false, text.clone().into_bytes())
    );
    assert_eq!((a.stats().deflated, b.stats().deflated), (1, 1));
}

#[tokio::test]
async fn in_memory_backplane_carries_the_origins_deflated_frame() {
    let hub = InMemoryBackplane::new();
    let a = node(hub.clone()).await;
    let b = node(hub.clone()).await;
    a_deflated_broadcast_is_deflated_once_in_the_cluster(a, b, async |_: &[(&str, i64)]| {}).await;
}

/// An envelope whose deflated frame does not inflate reaches none of the recipients that
/// need it plain (and panics nothing); the next message arrives as usual.
#[tokio::test]
async fn a_deflated_envelope_that_does_not_inflate_is_dropped_for_plain_recipients() {
    let hub = InMemoryBackplane::new();
    let (b, addr_b) = node(hub.clone()).await;
    let mut plain = raw_upgrade(addr_b, "/ws/plain").await;
    let (mut zip, _) = deflate_upgrade(addr_b, "/ws/zip").await;
    connected(&b, 2).await;
    b.join_room("plain", "news").await;
    b.join_room("zip", "news").await;
    // Another node's envelope, as Redis would hand it over: version 3, room "news".
    let mut wire = vec![3];
    wire.extend_from_slice(&42u64.to_be_bytes());
    wire.extend_from_slice(&1u64.to_be_bytes());
    wire.extend_from_slice(&[1, 0, 4]);
    wire.extend_from_slice(b"news");
    wire.push(0);
    wire.extend_from_slice(&protocol::encode_deflated_frame(OP_TEXT, &[0xff; 64]));
    let corrupt = Envelope::from_bytes(&wire).expect("it decodes: the frame is opaque there");
    assert!(corrupt.is_deflated());
    hub.clone().publish(corrupt);
    // Too large for this node once inflated: 2 MiB of spaces against the 1 MiB default.
    let mut big = Vec::new();
    assert!(deflate::Deflater::new(15, true).compress(&vec![b' '; 2 << 20], &mut big));
    let at = wire.len() - protocol::encode_deflated_frame(OP_TEXT, &[0xff; 64]).len();
    wire.truncate(at);
    wire.extend_from_slice(&protocol::encode_deflated_frame(OP_TEXT, &big));
    hub.clone().publish(Envelope::from_bytes(&wire).unwrap());
    // Both arrived: a client with compression has them as they came (this node does not
    // inflate what it forwards as it is, as it does not check a plain frame either).
    assert_eq!(next_frame(&mut zip).await, (true, vec![0xff; 64]));
    assert_eq!(next_frame(&mut zip).await, (true, big));
    assert_eq!(b.local_connection_count(), 2);
    assert_eq!(b.broadcast_to_room("news", "after").await.unwrap(), 2);
    assert_eq!(next_frame(&mut plain).await, (false, b"after".to_vec()));
    assert_eq!(next_frame(&mut zip).await, (false, b"after".to_vec()));
    assert_eq!(b.stats().deflated, 0);
}

#[tokio::test]
async fn without_a_backplane_a_manager_is_one_node() {
    let manager = ConnectionManager::new(WebSocketConfig::default());
    assert_eq!(manager.backplane_status(), None);
}

async fn redis_node(redis: &RedisServer) -> (ConnectionManager, SocketAddr) {
    node(RedisBackplane::new(&redis.url()).unwrap()).await
}

async fn status_is(manager: &ConnectionManager, status: BackplaneStatus) {
    eventually(&format!("backplane {status:?}"), || {
        manager.backplane_status() == Some(status)
    })
    .await;
}

#[tokio::test]
async fn redis_backplane_joins_two_nodes() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let a = redis_node(&redis).await;
    let b = redis_node(&redis).await;
    status_is(&a.0, BackplaneStatus::Connected).await;
    status_is(&b.0, BackplaneStatus::Connected).await;
    two_nodes_act_as_one(a, b, async |channels: &[(&str, i64)]| {
        for (channel, nodes) in channels {
            redis.subscribers(&[channel], *nodes).await;
        }
    })
    .await;
}

#[tokio::test]
async fn redis_carries_the_origins_deflated_frame() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let a = redis_node(&redis).await;
    let b = redis_node(&redis).await;
    status_is(&a.0, BackplaneStatus::Connected).await;
    status_is(&b.0, BackplaneStatus::Connected).await;
    a_deflated_broadcast_is_deflated_once_in_the_cluster(
        a,
        b,
        async |channels: &[(&str, i64)]| {
            for (channel, nodes) in channels {
                redis.subscribers(&[channel], *nodes).await;
            }
        },
    )
    .await;
}

#[tokio::test]
async fn redis_going_away_keeps_local_delivery_and_recovers() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let (a, addr_a) = redis_node(&redis).await;
    let (b, addr_b) = redis_node(&redis).await;
    let mut alice = connect(addr_a, "/ws/alice").await;
    let mut bob = connect(addr_b, "/ws/bob").await;
    connected(&a, 1).await;
    connected(&b, 1).await;
    b.join_room("bob", "lobby").await;
    redis.subscribers(&["all"], 2).await;
    redis
        .subscribers(&["user:alice", "user:bob", "room:lobby"], 1)
        .await;

    eventually("bob seen from a", || a.is_user_connected("bob")).await;

    redis.kill();
    status_is(&a, BackplaneStatus::Disconnected).await;
    status_is(&b, BackplaneStatus::Disconnected).await;
    // Cut off, each node answers for itself.
    eventually("a forgets bob", || !a.is_user_connected("bob")).await;
    assert!(a.is_user_connected("alice"));
    // Each node still serves its own connections.
    assert_eq!(a.broadcast("local only").await.unwrap(), 1);
    assert_eq!(next_text(&mut alice).await, "local only");
    assert_eq!(b.send_to_user("bob", "still here").await.unwrap(), 1);
    assert_eq!(next_text(&mut bob).await, "still here");
    assert_silent(&mut bob, QUIET).await;

    // A user who arrives during the outage is subscribed once Redis is back.
    let mut carol = connect(addr_a, "/ws/carol").await;
    connected(&a, 2).await;

    redis.restart().await;
    status_is(&a, BackplaneStatus::Connected).await;
    status_is(&b, BackplaneStatus::Connected).await;
    redis.subscribers(&["all"], 2).await;
    redis
        .subscribers(&["user:alice", "user:bob", "user:carol", "room:lobby"], 1)
        .await;
    eventually("presence again", || {
        a.active_users() == ["alice", "bob", "carol"] && b.connection_count() == 3
    })
    .await;
    assert_eq!(a.broadcast("back").await.unwrap(), 2);
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(next_text(ws).await, "back");
    }
    assert_eq!(b.send_to_user("carol", "welcome").await.unwrap(), 0);
    assert_eq!(next_text(&mut carol).await, "welcome");
    assert_eq!(a.broadcast_to_room("lobby", "lobby").await.unwrap(), 0);
    assert_eq!(next_text(&mut bob).await, "lobby");
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_silent(ws, QUIET).await;
    }
}

/// How long a node may take to notice a Redis that hangs (`RedisBackplane`'s detection
/// bound, see its docs), plus slack for a loaded test machine.
const DETECTION: Duration = Duration::from_millis(2_500);
/// How soon after Redis answers again cross-node delivery must be back.
const RESUMPTION: Duration = Duration::from_secs(2);
/// How long each local delivery may take while Redis hangs.
const LOCAL: Duration = Duration::from_millis(100);

/// The next text message within `limit`, or `None`.
async fn text_within(ws: &mut common::server::Client, limit: Duration) -> Option<String> {
    tokio::time::timeout(limit, next_text(ws)).await.ok()
}

/// Broadcasts a probe from `from` every 50 ms until every client in `to` has received one,
/// and fails the test unless that takes at most [`RESUMPTION`] (other messages fail it too).
async fn cross_node_resumes(from: &ConnectionManager, to: &mut [&mut common::server::Client]) {
    let started = tokio::time::Instant::now();
    for (i, ws) in to.iter_mut().enumerate() {
        let mut n = 0u32;
        loop {
            assert!(
                started.elapsed() <= RESUMPTION + Duration::from_secs(1),
                "client {i}: no cross-node delivery after {:?}",
                started.elapsed()
            );
            from.broadcast(format!("probe {n}")).await.unwrap();
            n += 1;
            if let Some(text) = text_within(ws, Duration::from_millis(50)).await {
                assert!(text.starts_with("probe "), "client {i} got {text:?}");
                break;
            }
        }
    }
    let took = started.elapsed();
    eprintln!("cross-node delivery resumed after {took:?}");
    assert!(took <= RESUMPTION, "resumed after {took:?}");
}

/// A Redis that hangs (`SIGSTOP`: connections open, nothing answers) for 5 s: every node
/// keeps delivering to its own connections at once, notices the hang within the detection
/// bound (a node that publishes all the time, one that only sends to its own user, and a
/// quiet one), and after `SIGCONT` cross-node delivery is back within 2 s.
#[tokio::test]
async fn redis_hanging_keeps_local_delivery_and_recovers_within_2_s() {
    common::init_tracing();
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, addr_a) = redis_node(&redis).await;
    let (b, addr_b) = redis_node(&redis).await;
    // A quiet node: no presence heartbeat to publish while the test runs.
    let c = ConnectionManager::builder(WebSocketConfig::default())
        .backplane(RedisBackplane::new(&redis.url()).unwrap())
        .presence_heartbeat(Duration::from_secs(3600))
        .build();
    let app = add_websocket_manager_with(Router::new().route("/ws/{user}", get(ws)), c.clone());
    let addr_c = serve(app).await;
    let mut alice = connect(addr_a, "/ws/alice").await;
    let mut bob = connect(addr_b, "/ws/bob").await;
    let mut carol = connect(addr_c, "/ws/carol").await;
    connected(&a, 1).await;
    connected(&b, 1).await;
    connected(&c, 1).await;
    redis.subscribers(&["all"], 3).await;
    redis
        .subscribers(&["user:alice", "user:bob", "user:carol"], 1)
        .await;
    assert_eq!(a.broadcast("before").await.unwrap(), 1);
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(next_text(ws).await, "before");
    }

    const HANG: Duration = Duration::from_secs(5);
    redis.stop();
    let stopped = tokio::time::Instant::now();
    assert!(
        !redis.answers_within(Duration::from_millis(200)).await,
        "redis-server still answers: it was not stopped"
    );
    // While it hangs: a broadcasts and b sends to its own user every 10 ms; each send
    // returns and arrives within LOCAL, and each node notices within DETECTION.
    let mut noticed: [Option<Duration>; 3] = [None; 3];
    let mut sent = 0u32;
    while stopped.elapsed() < HANG {
        let t = tokio::time::Instant::now();
        assert_eq!(a.broadcast(format!("a {sent}")).await.unwrap(), 1);
        assert_eq!(b.send_to_user("bob", format!("b {sent}")).await.unwrap(), 1);
        assert_eq!(
            text_within(&mut alice, LOCAL).await.as_deref(),
            Some(format!("a {sent}").as_str()),
            "a local broadcast during the hang"
        );
        assert_eq!(
            text_within(&mut bob, LOCAL).await.as_deref(),
            Some(format!("b {sent}").as_str()),
            "a local send during the hang"
        );
        assert!(
            t.elapsed() <= LOCAL,
            "two local sends took {:?}",
            t.elapsed()
        );
        for (seen, m) in noticed.iter_mut().zip([&a, &b, &c]) {
            if seen.is_none() && m.backplane_status() == Some(BackplaneStatus::Disconnected) {
                *seen = Some(stopped.elapsed());
            }
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{sent} local sends per node during the hang; noticed after {noticed:?}");
    for (node, seen) in ["a (publishing)", "b (local sends)", "c (quiet)"]
        .iter()
        .zip(noticed)
    {
        let seen = seen.unwrap_or_else(|| panic!("{node} never noticed the hang"));
        assert!(seen <= DETECTION, "{node} noticed the hang after {seen:?}");
    }
    assert!(
        !redis.answers_within(Duration::from_millis(100)).await,
        "redis-server answered during the hang"
    );
    assert_silent(&mut carol, Duration::from_millis(10)).await;

    redis.resume();
    cross_node_resumes(&a, &mut [&mut bob, &mut carol]).await;
    for m in [&a, &b, &c] {
        status_is(m, BackplaneStatus::Connected).await;
    }
    // Nothing sent during the hang arrives late (only more probes), and c reaches a.
    for ws in [&mut alice, &mut bob, &mut carol] {
        while let Some(text) = text_within(ws, QUIET).await {
            assert!(text.starts_with("probe "), "late: {text:?}");
        }
    }
    assert_eq!(c.send_to_user("alice", "from c").await.unwrap(), 0);
    assert_eq!(next_text(&mut alice).await, "from c");
}

/// Only the subscription connection hangs (a proxy stops passing its bytes, the connection
/// stays open) while publishing works: the node notices through the ping on that connection
/// within the detection bound, connects again, and receives from the other node again.
#[tokio::test]
async fn a_hung_subscription_connection_is_noticed_and_replaced() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let proxy = PubSubFreezer::start(&redis).await;
    let (a, addr_a) = node(RedisBackplane::new(&proxy.url()).unwrap()).await;
    let (b, _) = redis_node(&redis).await;
    let mut alice = connect(addr_a, "/ws/alice").await;
    connected(&a, 1).await;
    redis.subscribers(&["all"], 2).await;
    redis.subscribers(&["user:alice"], 1).await;
    assert_eq!(b.send_to_user("alice", "before").await.unwrap(), 0);
    assert_eq!(next_text(&mut alice).await, "before");

    assert_eq!(proxy.freeze_pubsub(), 1, "a's one pub/sub connection");
    let frozen = tokio::time::Instant::now();
    // a keeps publishing (its heartbeat, every 100 ms) on its other connection, which works.
    status_is(&a, BackplaneStatus::Disconnected).await;
    let noticed = frozen.elapsed();
    eprintln!("the hung subscription was noticed after {noticed:?}");
    assert!(noticed <= DETECTION, "noticed after {noticed:?}");
    cross_node_resumes(&b, &mut [&mut alice]).await;
    status_is(&a, BackplaneStatus::Connected).await;
}
