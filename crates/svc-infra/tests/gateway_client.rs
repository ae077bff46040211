//! `GatewayClient` against the gateway in process, through a forwarder that cuts its
//! connections: it reconnects, re-joins from its last position and gets every message once,
//! in order; without recovery it misses them; after the history is lost it is told.

mod common;

use std::time::Duration;

use common::{
    cutter::Cutter,
    gateway::{Running, publish, start},
    within,
};
use serde_json::{Value, json};
use svc_infra::{
    gateway::GatewayConfig,
    websocket::{GatewayClient, GatewayEvent, WebSocketClient, WebSocketConfig},
};

const KEY: &str = "X-API-Key: ops-key-123\r\n";

fn config() -> GatewayConfig {
    GatewayConfig::from_vars([
        ("WS_GATEWAY_ANONYMOUS", "true"),
        ("WS_API_KEYS", "ops:ops-key-123:"),
        ("WS_HISTORY_SIZE", "100"),
    ])
    .unwrap()
}

fn client(cutter: &Cutter, recover: bool) -> GatewayClient {
    let mut ws = WebSocketConfig::default();
    ws.reconnect_backoff_base = Duration::from_millis(50);
    ws.reconnect_backoff_max = Duration::from_millis(200);
    ws.reconnect_max_attempts = 0;
    let url = format!("ws://{}/ws?user=alice", cutter.addr);
    GatewayClient::with_recovery(WebSocketClient::builder(url).config(ws), recover)
}

/// The next event that is not `Other` (acks, presence).
async fn next(client: &mut GatewayClient) -> GatewayEvent {
    within("an event", async {
        loop {
            match client.next_event().await.expect("the client is running") {
                GatewayEvent::Other(_) => {}
                event => return event,
            }
        }
    })
    .await
}

async fn joined(client: &mut GatewayClient) {
    match next(client).await {
        GatewayEvent::Joined { .. } => {}
        other => panic!("expected joined, got {other:?}"),
    }
}

/// The `data` of the next message.
async fn message(client: &mut GatewayClient) -> (Value, u64) {
    match next(client).await {
        GatewayEvent::Message { data, position, .. } => (data, position.unwrap().offset),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn post(gw: &Running, n: u64) {
    let (status, body) = publish(gw, KEY, json!({"room": "chat", "data": n})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_cut_connection_is_recovered_from_the_last_position() {
    let gw = start(config()).await;
    let cutter = Cutter::start(gw.addr).await;
    let mut alice = client(&cutter, true);
    alice.join("chat");
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    joined(&mut alice).await;
    for n in 1..=3 {
        post(&gw, n).await;
        assert_eq!(message(&mut alice).await, (json!(n), n));
    }
    cutter.cut_all();
    assert!(matches!(
        next(&mut alice).await,
        GatewayEvent::Disconnected { code: 1006 }
    ));
    // Published while Alice is away: replayed after the answer to her re-join.
    for n in 4..=6 {
        post(&gw, n).await;
    }
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    match next(&mut alice).await {
        GatewayEvent::Joined {
            recovered,
            replayed,
            ..
        } => assert_eq!((recovered, replayed), (true, 3)),
        other => panic!("{other:?}"),
    }
    for n in 4..=7 {
        if n == 7 {
            post(&gw, 7).await;
        }
        assert_eq!(message(&mut alice).await, (json!(n), n));
    }
    assert_eq!(alice.position("chat").unwrap().offset, 7);
    assert_eq!(alice.stats().connections, 2);
}

#[tokio::test]
async fn without_recovery_what_was_published_meanwhile_is_missed() {
    let gw = start(config()).await;
    let cutter = Cutter::start(gw.addr).await;
    let mut alice = client(&cutter, false);
    alice.join("chat");
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    joined(&mut alice).await;
    post(&gw, 1).await;
    assert_eq!(message(&mut alice).await, (json!(1), 1));
    cutter.cut_all();
    assert!(matches!(
        next(&mut alice).await,
        GatewayEvent::Disconnected { .. }
    ));
    post(&gw, 2).await;
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    joined(&mut alice).await;
    post(&gw, 3).await;
    assert_eq!(message(&mut alice).await, (json!(3), 3), "2 was missed");
}

/// A gateway restarted (its history was in memory): the re-join cannot recover, and says so.
#[tokio::test]
async fn a_lost_history_is_signalled() {
    let first = start(config()).await;
    let cutter = Cutter::start(first.addr).await;
    let mut alice = client(&cutter, true);
    alice.join("chat");
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    joined(&mut alice).await;
    post(&first, 1).await;
    assert_eq!(message(&mut alice).await, (json!(1), 1));
    let second = start(config()).await;
    cutter.set_upstream(second.addr);
    cutter.cut_all();
    assert!(matches!(
        next(&mut alice).await,
        GatewayEvent::Disconnected { .. }
    ));
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    match next(&mut alice).await {
        GatewayEvent::Lost { room, position } => {
            assert_eq!((room.as_str(), position.offset), ("chat", 0));
        }
        other => panic!("expected lost, got {other:?}"),
    }
    post(&second, 2).await;
    assert_eq!(message(&mut alice).await, (json!(2), 1));
}

/// A gateway that skips offsets 3 and 4 on the live path (what a slow-consumer policy that
/// drops does): the client notices the gap, re-joins from 2, and gets 3, 4, 5 from the
/// replay, then 6, each once.
#[tokio::test]
async fn a_gap_on_the_live_path_makes_the_client_re_join_from_its_last_position() {
    use axum::{
        Router,
        extract::ws::{Message, WebSocket, WebSocketUpgrade},
        routing::get,
    };
    use futures_util::StreamExt;

    async fn request(ws: &mut WebSocket) -> Value {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            panic!("expected a request");
        };
        serde_json::from_str(&text).unwrap()
    }

    async fn script(mut ws: WebSocket) {
        let m = |offset: u64| {
            Message::text(
                json!({"type": "message", "room": "chat", "from": "x", "data": offset, "offset": offset, "epoch": "e"})
                    .to_string(),
            )
        };
        let joined = |offset: u64, replayed: u64| {
            Message::text(
                json!({"type": "joined", "room": "chat", "recovered": true, "offset": offset, "epoch": "e", "replayed": replayed})
                    .to_string(),
            )
        };
        assert_eq!(
            request(&mut ws).await,
            json!({"type": "join", "room": "chat"})
        );
        for message in [joined(0, 0), m(1), m(2), m(5)] {
            ws.send(message).await.unwrap();
        }
        let rejoin = request(&mut ws).await;
        assert_eq!(
            rejoin,
            json!({"type": "join", "room": "chat", "since": {"offset": 2, "epoch": "e"}})
        );
        // 6 was on its way before the re-join arrived: dropped by the client (replayed).
        for message in [m(6), joined(6, 4), m(3), m(4), m(5), m(6), m(7)] {
            ws.send(message).await.unwrap();
        }
        while ws.next().await.is_some() {}
    }

    let app = Router::new().route(
        "/ws",
        get(|up: WebSocketUpgrade| async move { up.on_upgrade(script) }),
    );
    let addr = common::server::serve(app).await;
    let mut ws = WebSocketConfig::default();
    ws.reconnect_max_attempts = 1;
    let mut alice =
        GatewayClient::connect(WebSocketClient::builder(format!("ws://{addr}/ws")).config(ws));
    alice.join("chat");
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    joined(&mut alice).await;
    assert_eq!(message(&mut alice).await, (json!(1), 1));
    assert_eq!(message(&mut alice).await, (json!(2), 2));
    joined(&mut alice).await;
    for n in 3..=7 {
        assert_eq!(message(&mut alice).await, (json!(n), n));
    }
    assert_eq!(alice.stats().gaps, 1);
}

/// A client's own publications are not sent back to it: the gaps they leave in the room's
/// offsets are no gaps (the ack says which offset each took), so it does not re-join.
#[tokio::test]
async fn its_own_publications_leave_no_gap() {
    let gw = start(config()).await;
    let cutter = Cutter::start(gw.addr).await;
    let mut alice = client(&cutter, true);
    alice.join("chat");
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    joined(&mut alice).await;
    post(&gw, 1).await;
    assert_eq!(message(&mut alice).await, (json!(1), 1));
    alice.publish("chat", json!("mine"));
    alice.publish("chat", json!("mine too"));
    // Bob's comes after Alice's two (offsets 2 and 3).
    tokio::time::sleep(Duration::from_millis(100)).await;
    post(&gw, 4).await;
    assert_eq!(message(&mut alice).await, (json!(4), 4));
    assert_eq!(alice.stats().gaps, 0, "no re-join for its own publications");
}

/// Direct messages with history: the client follows its own stream and recovers it after
/// a cut, without having joined it.
#[tokio::test]
async fn direct_messages_are_recovered_after_a_cut() {
    let gw = start(config()).await;
    let cutter = Cutter::start(gw.addr).await;
    let mut alice = client(&cutter, true);
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    common::gateway::registered(&gw, 1).await;
    let to_alice = |n: u64| json!({"to": "alice", "data": n});
    let (status, _) = publish(&gw, KEY, to_alice(1)).await;
    assert_eq!(status, 200);
    assert_eq!(message(&mut alice).await, (json!(1), 1));
    cutter.cut_all();
    assert!(matches!(
        next(&mut alice).await,
        GatewayEvent::Disconnected { .. }
    ));
    for n in 2..=3 {
        publish(&gw, KEY, to_alice(n)).await;
    }
    assert_eq!(next(&mut alice).await, GatewayEvent::Connected);
    joined(&mut alice).await;
    assert_eq!(message(&mut alice).await, (json!(2), 2));
    assert_eq!(message(&mut alice).await, (json!(3), 3));
    assert_eq!(alice.position("@user:alice").unwrap().offset, 3);
}
