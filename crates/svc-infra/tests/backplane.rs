//! Managers joined by a backplane: in memory, and over a real `redis-server` (a private one
//! on a free port, killed and restarted by the tests). Without `redis-server` on PATH the
//! Redis tests fail when `CI` is set and are skipped (with a message) otherwise.

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::Path, response::Response, routing::get};
use common::{QUIET, eventually, redis::RedisServer, server::*};
use svc_infra::websocket::{
    ConnectionManager, WebSocketConfig, WsManager, WsUpgrade, add_websocket_manager_with,
    backplane::{Backplane, BackplaneStatus, InMemoryBackplane, RedisBackplane},
};

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
