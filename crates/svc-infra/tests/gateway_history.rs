//! The gateway's protocol for rooms with history (`WS_HISTORY_SIZE`): messages carry their
//! position, `join` recovers from one, `history` reads, `POST /api/publish` answers with the
//! position; and across two gateways on one Redis, a client that drops and comes back on
//! the other gateway gets what it missed.

mod common;

use std::time::Duration;

use common::{
    gateway::{Running, connect, get_json, next, publish, send, silent, start},
    redis::RedisServer,
    within,
};
use serde_json::{Value, json};
use svc_infra::gateway::GatewayConfig;

fn config(extra: &[(&str, &str)]) -> GatewayConfig {
    let mut vars = vec![
        ("WS_GATEWAY_ANONYMOUS", "true"),
        ("WS_API_KEYS", "ops:ops-key-123:"),
        ("WS_HISTORY_SIZE", "100"),
        ("WS_HISTORY_TTL", "300"),
    ];
    vars.extend_from_slice(extra);
    GatewayConfig::from_vars(vars).unwrap()
}

const KEY: &str = "X-API-Key: ops-key-123\r\n";

async fn joined(ws: &mut common::server::Client, room: &str, since: Option<Value>) -> Value {
    let mut request = json!({"type": "join", "room": room, "id": "j"});
    if let Some(since) = since {
        request["since"] = since;
    }
    send(ws, request).await;
    let answer = next(ws).await;
    assert_eq!(answer["type"], "joined", "{answer}");
    assert_eq!(answer["id"], "j");
    answer
}

#[tokio::test]
async fn messages_of_rooms_with_history_carry_positions_and_a_join_recovers() {
    let gw = start(config(&[])).await;
    let mut alice = connect(&gw, "?user=alice").await;
    let mut bob = connect(&gw, "?user=bob").await;
    let answer = joined(&mut alice, "chat", None).await;
    assert_eq!(
        answer,
        json!({"type": "joined", "room": "chat", "recovered": true, "offset": 0, "epoch": "", "replayed": 0, "id": "j"})
    );

    // Bob publishes: his acks carry the positions, Alice's messages too.
    let mut epoch = String::new();
    for n in 1..=3 {
        send(
            &mut bob,
            json!({"type": "publish", "room": "chat", "data": n, "id": n}),
        )
        .await;
        let ack = next(&mut bob).await;
        assert_eq!(
            (ack["type"].as_str(), ack["offset"].as_u64()),
            (Some("ack"), Some(n))
        );
        epoch = ack["epoch"].as_str().unwrap().to_owned();
        assert_eq!(
            next(&mut alice).await,
            json!({"type": "message", "room": "chat", "from": "bob", "data": n, "offset": n, "epoch": epoch})
        );
    }

    // Alice drops; two more arrive (one through POST /api/publish, which answers with the
    // position); she comes back from offset 3 and gets them, then the live ones.
    drop(alice);
    send(
        &mut bob,
        json!({"type": "publish", "room": "chat", "data": 4}),
    )
    .await;
    let (status, body) = publish(&gw, KEY, json!({"room": "chat", "data": 5})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"offset": 5, "epoch": epoch}));
    let mut alice = connect(&gw, "?user=alice").await;
    let answer = joined(
        &mut alice,
        "chat",
        Some(json!({"offset": 3, "epoch": epoch})),
    )
    .await;
    assert_eq!(answer["recovered"], true);
    assert_eq!(answer["replayed"], 2);
    assert_eq!(
        (answer["offset"].as_u64(), answer["epoch"].as_str()),
        (Some(5), Some(epoch.as_str()))
    );
    assert_eq!(next(&mut alice).await["data"], 4);
    let fifth = next(&mut alice).await;
    assert_eq!(
        (fifth["data"].as_u64(), fifth["from"].as_str()),
        (Some(5), Some("ops"))
    );
    send(
        &mut bob,
        json!({"type": "publish", "room": "chat", "data": 6}),
    )
    .await;
    assert_eq!(next(&mut alice).await["offset"], 6);

    // A position of another epoch: recovered false, the current position, nothing replayed.
    let mut carol = connect(&gw, "?user=carol").await;
    let answer = joined(
        &mut carol,
        "chat",
        Some(json!({"offset": 2, "epoch": "nope"})),
    )
    .await;
    assert_eq!(answer["recovered"], false);
    assert_eq!(answer["offset"], 6);
    silent(&mut carol).await;

    // `history`: the publications after a position, as members got them.
    send(
        &mut carol,
        json!({"type": "history", "room": "chat", "since": {"offset": 4, "epoch": epoch}, "id": 9}),
    )
    .await;
    let history = next(&mut carol).await;
    assert_eq!(history["type"], "history");
    assert_eq!(
        (history["offset"].as_u64(), history["id"].as_u64()),
        (Some(6), Some(9))
    );
    let offsets: Vec<u64> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [5, 6]);
    send(
        &mut carol,
        json!({"type": "history", "room": "chat", "limit": 2}),
    )
    .await;
    let history = next(&mut carol).await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 2);
    assert_eq!(history["publications"][0]["offset"], 1);
}

#[tokio::test]
async fn rooms_without_history_keep_the_plain_protocol() {
    let gw = start(config(&[("WS_HISTORY_SIZE", "0")])).await;
    let mut alice = connect(&gw, "?user=alice").await;
    send(&mut alice, json!({"type": "join", "room": "chat", "id": 1})).await;
    assert_eq!(next(&mut alice).await, json!({"type": "ack", "id": 1}));
    send(
        &mut alice,
        json!({"type": "history", "room": "chat", "id": 2}),
    )
    .await;
    let answer = next(&mut alice).await;
    assert_eq!(answer["type"], "error", "{answer}");
    let (status, body) = publish(&gw, KEY, json!({"room": "chat", "data": 1})).await;
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(1)));
    let m = next(&mut alice).await;
    assert!(m.get("offset").is_none(), "{m}");
}

async fn connected(gw: &Running) {
    within("backplane connected", async {
        while get_json(gw.addr, "/health").await["backplane"] != "connected" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A client of gateway A drops; publications go on through gateway B; it comes back on B
/// with its last position and gets exactly what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_across_two_gateways_on_one_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let redis_url = redis.url();
    let cfg = config(&[("REDIS_URL", redis_url.as_str())]);
    let (a, b) = (start(cfg.clone()).await, start(cfg).await);
    connected(&a).await;
    connected(&b).await;
    let mut alice = connect(&a, "?user=alice").await;
    joined(&mut alice, "chat", None).await;
    redis.subscribers(&["room:chat"], 1).await;
    let mut last = Value::Null;
    for n in 1..=3 {
        let (status, body) = publish(&b, KEY, json!({"room": "chat", "data": n})).await;
        assert_eq!(status, 200, "{body}");
        let m = next(&mut alice).await;
        assert_eq!(
            (m["data"].as_u64(), m["offset"].as_u64()),
            (Some(n), Some(n))
        );
        last = json!({"offset": m["offset"], "epoch": m["epoch"]});
    }
    drop(alice);
    for n in 4..=7 {
        publish(&b, KEY, json!({"room": "chat", "data": n})).await;
    }
    let mut alice = connect(&b, "?user=alice").await;
    let answer = joined(&mut alice, "chat", Some(last)).await;
    assert_eq!(
        (answer["recovered"].as_bool(), answer["replayed"].as_u64()),
        (Some(true), Some(4))
    );
    for n in 4..=7 {
        let m = next(&mut alice).await;
        assert_eq!(
            (m["data"].as_u64(), m["offset"].as_u64()),
            (Some(n), Some(n))
        );
    }
    silent(&mut alice).await;
}

/// With history on, direct messages go through the recipient's own stream (`@user:V`):
/// they have positions, and a client that comes back re-joins its stream from the last one.
#[tokio::test]
async fn direct_messages_have_positions_and_are_recovered() {
    let gw = start(config(&[])).await;
    let mut alice = connect(&gw, "?user=alice").await;
    let mut bob = connect(&gw, "?user=bob").await;
    common::gateway::registered(&gw, 2).await;
    send(
        &mut alice,
        json!({"type": "send", "to": "bob", "data": 1, "id": 1}),
    )
    .await;
    let ack = next(&mut alice).await;
    assert_eq!(
        (ack["type"].as_str(), ack["offset"].as_u64()),
        (Some("ack"), Some(1))
    );
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        next(&mut bob).await,
        json!({"type": "message", "room": "@user:bob", "from": "alice", "data": 1, "offset": 1, "epoch": epoch})
    );
    // Bob drops; two more arrive (one from a service); he re-joins his stream from 1.
    drop(bob);
    send(&mut alice, json!({"type": "send", "to": "bob", "data": 2})).await;
    let (status, body) = publish(&gw, KEY, json!({"to": "bob", "data": 3})).await;
    assert_eq!((status, body["offset"].as_u64()), (200, Some(3)), "{body}");
    let mut bob = connect(&gw, "?user=bob").await;
    let answer = joined(
        &mut bob,
        "@user:bob",
        Some(json!({"offset": 1, "epoch": epoch})),
    )
    .await;
    assert_eq!(
        (answer["recovered"].as_bool(), answer["replayed"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(next(&mut bob).await["data"], 2);
    assert_eq!(next(&mut bob).await["data"], 3);
    // Nobody else joins, reads or publishes to Bob's stream.
    for request in [
        json!({"type": "join", "room": "@user:bob", "id": 7}),
        json!({"type": "history", "room": "@user:bob", "id": 7}),
        json!({"type": "publish", "room": "@user:bob", "data": 0, "id": 7}),
        json!({"type": "publish", "room": "@user:alice", "data": 0, "id": 7}),
    ] {
        send(&mut alice, request.clone()).await;
        let answer = next(&mut alice).await;
        assert_eq!(answer["type"], "error", "{request} → {answer}");
    }
    silent(&mut bob).await;
}
