//! The gateway in process (`svc_infra::gateway`), served on 127.0.0.1:0 with
//! `Gateway::serve(listener, shutdown)`: the `/ws` protocol (docs/protocol.md),
//! authentication, the HTTP endpoints, graceful shutdown, the router beside an application's
//! own routes, and two gateways joined by a private `redis-server` (without it on PATH that
//! test fails when `CI` is set and is skipped, with a message, otherwise).
//!
//! What needs the real binary (signals, exit codes, the printed port, the flags) is in
//! `crates/svc-ws/tests/serve.rs`.

mod common;

use std::time::Duration;

use axum::{Router, routing::get};
use common::{
    gateway::*,
    raw::{http, http_get},
    redis::RedisServer,
    server::{Client, connect_from_origin, next_close},
    within,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use svc_infra::gateway::{Gateway, GatewayConfig};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

#[tokio::test]
async fn the_protocol_in_anonymous_mode() {
    let gw = start(GatewayConfig::default()).await;
    let mut alice = connect(&gw, "?user=alice").await;
    let mut bob = connect(&gw, "?user=bob").await;
    let mut bob2 = connect(&gw, "?user=bob").await;
    registered(&gw, 3).await;

    // join with an id is acknowledged; without, silently done.
    send(
        &mut alice,
        json!({"type": "join", "room": "lobby", "id": 1}),
    )
    .await;
    assert_eq!(next(&mut alice).await, json!({"type": "ack", "id": 1}));
    send(&mut bob, json!({"type": "join", "room": "lobby"})).await;
    send(
        &mut bob,
        json!({"type": "presence", "room": "lobby", "id": "p"}),
    )
    .await;
    assert_eq!(
        next(&mut bob).await,
        json!({"type": "presence", "room": "lobby", "users": ["alice", "bob"], "id": "p"})
    );

    // publish reaches the room's other users (every connection of theirs), not the sender.
    send(
        &mut alice,
        json!({"type": "publish", "room": "lobby", "data": {"text": "hi"}, "id": 2}),
    )
    .await;
    assert_eq!(next(&mut alice).await, json!({"type": "ack", "id": 2}));
    let expected =
        json!({"type": "message", "room": "lobby", "from": "alice", "data": {"text": "hi"}});
    assert_eq!(next(&mut bob).await, expected);
    assert_eq!(next(&mut bob2).await, expected);

    // send reaches every connection of one user.
    send(&mut bob, json!({"type": "send", "to": "alice", "data": 42})).await;
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "message", "from": "bob", "data": 42})
    );

    // echo; presence of everyone.
    send(&mut alice, json!({"type": "echo", "data": [1, 2]})).await;
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "echo", "data": [1, 2]})
    );
    send(&mut alice, json!({"type": "presence"})).await;
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "presence", "room": null, "users": ["alice", "bob"]})
    );

    // Bad requests get an error and the connection stays open.
    send(
        &mut alice,
        json!({"type": "broadcast", "data": "x", "id": 3}),
    )
    .await;
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "error", "error": "broadcast needs the `broadcast` scope", "id": 3})
    );
    within("send", alice.send(Message::text("not json")))
        .await
        .unwrap();
    let err = next(&mut alice).await;
    assert_eq!(err["type"], "error");
    assert!(
        err["error"].as_str().unwrap().starts_with("bad request"),
        "{err}"
    );
    send(&mut alice, json!({"type": "fly", "id": 4})).await;
    let err = next(&mut alice).await;
    assert_eq!(
        (err["type"].as_str(), err["id"].as_i64()),
        (Some("error"), Some(4))
    );
    send(
        &mut alice,
        json!({"type": "echo", "data": 1, "extra": 2, "id": 8}),
    )
    .await;
    let err = next(&mut alice).await;
    assert_eq!(
        (err["type"].as_str(), err["id"].as_i64()),
        (Some("error"), Some(8))
    );
    send(&mut alice, json!({"type": "join", "id": 5})).await;
    assert_eq!(next(&mut alice).await["type"], "error"); // no room
    send(&mut alice, json!({"type": "join", "room": "", "id": 6})).await;
    assert_eq!(next(&mut alice).await["type"], "error");
    within("send", alice.send(Message::binary(vec![1, 2])))
        .await
        .unwrap();
    assert_eq!(next(&mut alice).await["type"], "error");
    send(&mut alice, json!({"type": "echo", "data": "still here"})).await;
    assert_eq!(next(&mut alice).await["data"], "still here");

    // leave: no more room messages.
    send(&mut bob, json!({"type": "leave", "room": "lobby", "id": 7})).await;
    assert_eq!(next(&mut bob).await, json!({"type": "ack", "id": 7}));
    send(
        &mut alice,
        json!({"type": "publish", "room": "lobby", "data": "anyone?"}),
    )
    .await;
    silent(&mut bob).await;
    silent(&mut bob2).await;

    let stats = get_json(gw.addr, "/ws/stats").await;
    assert_eq!(stats["connections"], 3);
    assert_eq!(stats["users"], 2);
    assert_eq!(
        stats["nodes"],
        json!([{"node": stats["node"], "connections": 3, "backplane": "none", "last_seen_ms": 0}])
    );
    // The demo page speaks the same protocol, through the JavaScript client.
    let (status, page) = http(gw.addr, "GET", "/", "", "").await;
    assert_eq!(status, 200);
    for needle in ["from \"/client.js\"", "/ws/stats"] {
        assert!(page.contains(needle), "demo page lacks {needle}");
    }
    let (status, client) = http(gw.addr, "GET", "/client.js", "", "").await;
    assert_eq!(status, 200);
    for needle in [
        r#"type: "join""#,
        r#"type: "publish""#,
        r#"type: "presence""#,
        r#"["bearer", token]"#,
    ] {
        assert!(client.contains(needle), "client.js lacks {needle}");
    }
    let health = get_json(gw.addr, "/health").await;
    assert_eq!(
        health,
        json!({"status": "ok", "backplane": "none", "connections": 3})
    );
}

/// `GET /client.js` and `GET /client.d.ts` serve `clients/js` byte for byte, as modules a
/// browser runs, revalidated with their `ETag` each time.
#[tokio::test]
async fn the_javascript_client_is_served() {
    let gw = start(GatewayConfig::default()).await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/js/");
    for (path, file, content_type) in [
        ("/client.js", "svc-ws.js", "text/javascript; charset=utf-8"),
        (
            "/client.d.ts",
            "svc-ws.d.ts",
            "application/typescript; charset=utf-8",
        ),
    ] {
        let expected = std::fs::read_to_string(format!("{root}{file}")).unwrap();
        let (status, headers, body) = http_get(gw.addr, path, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(body == expected, "{path} is not clients/js/{file}");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{path}: no {name}"))
        };
        assert_eq!(header("content-type"), content_type);
        assert_eq!(header("cache-control"), "no-cache");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("access-control-allow-origin"), "*");
        assert_eq!(header("content-length"), expected.len().to_string());
        // The browser's revalidation: 304 and no body while the file is the same.
        let etag = header("etag");
        let (status, headers, body) =
            http_get(gw.addr, path, &format!("If-None-Match: {etag}\r\n")).await;
        assert_eq!(status, 304, "{path}");
        assert!(body.is_empty());
        assert!(headers.iter().any(|(k, v)| k == "etag" && *v == etag));
        let (status, _, _) = http_get(gw.addr, path, "If-None-Match: \"other\"\r\n").await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test]
async fn with_a_jwt_key_credentials_are_required_and_scopes_count() {
    let gw = start(with_secret()).await;
    // No token: 401 before the upgrade.
    let url = format!("ws://{}/ws?user=mallory", gw.addr);
    match within("connect", tokio_tungstenite::connect_async(&url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // The token's subject is the user, whatever `?user=` says; the scope allows broadcast.
    let mut admin = connect(
        &gw,
        &format!("?token={}&user=mallory", token("root", &["broadcast"])),
    )
    .await;
    let mut req = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("carol", &[])).parse().unwrap(),
    );
    let (mut carol, _) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    registered(&gw, 2).await;
    send(&mut admin, json!({"type": "presence", "id": 1})).await;
    assert_eq!(next(&mut admin).await["users"], json!(["carol", "root"]));
    send(
        &mut admin,
        json!({"type": "broadcast", "data": "all hands", "id": 2}),
    )
    .await;
    assert_eq!(
        next(&mut admin).await,
        json!({"type": "message", "from": "root", "data": "all hands"})
    );
    assert_eq!(next(&mut admin).await, json!({"type": "ack", "id": 2}));
    assert_eq!(next(&mut carol).await["data"], "all hands");
    send(
        &mut carol,
        json!({"type": "broadcast", "data": "me too", "id": 3}),
    )
    .await;
    assert_eq!(next(&mut carol).await["type"], "error");
}

/// A custom broadcast scope, and anonymous connections explicitly allowed beside a key.
#[tokio::test]
async fn the_scopes_and_anonymous_mode_are_configurable() {
    let gw = start(
        with_secret()
            .with_anonymous(true)
            .with_broadcast_scope("announce")
            .with_metrics(false),
    )
    .await;
    let mut guest = connect(&gw, "?user=guest").await;
    let mut ops = connect(&gw, &format!("?token={}", token("ops", &["announce"]))).await;
    registered(&gw, 2).await;
    send(&mut guest, json!({"type": "broadcast", "data": 1, "id": 1})).await;
    assert_eq!(
        next(&mut guest).await,
        json!({"type": "error", "error": "broadcast needs the `announce` scope", "id": 1})
    );
    send(&mut ops, json!({"type": "broadcast", "data": 2})).await;
    assert_eq!(next(&mut guest).await["from"], "ops");
    // A given token must be valid even when anonymous connections are allowed.
    let url = format!("ws://{}/ws?token=garbage", gw.addr);
    match within("connect", tokio_tungstenite::connect_async(&url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // Without metrics: 404.
    let (status, _) = http(gw.addr, "GET", "/metrics", "", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn two_gateways_on_one_redis_are_one_cluster() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let config = GatewayConfig::default().with_redis_url(redis.url());
    let a = start(config.clone()).await;
    let b = start(config).await;
    for gw in [&a, &b] {
        within("backplane connected", async {
            while get_json(gw.addr, "/health").await["backplane"] != "connected" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    let mut alice = connect(&a, "?user=alice").await;
    let mut bob = connect(&b, "?user=bob").await;
    send(&mut bob, json!({"type": "join", "room": "lobby", "id": 1})).await;
    assert_eq!(next(&mut bob).await["type"], "ack");
    // Presence spans both gateways once they have told each other (heartbeat 1 s).
    within("presence across gateways", async {
        loop {
            send(&mut alice, json!({"type": "presence", "room": "lobby"})).await;
            if next(&mut alice).await["users"] == json!(["bob"]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    send(
        &mut alice,
        json!({"type": "publish", "room": "lobby", "data": "across", "id": 2}),
    )
    .await;
    assert_eq!(next(&mut alice).await["type"], "ack");
    assert_eq!(
        next(&mut bob).await,
        json!({"type": "message", "room": "lobby", "from": "alice", "data": "across"})
    );
    send(
        &mut bob,
        json!({"type": "send", "to": "alice", "data": "back"}),
    )
    .await;
    assert_eq!(next(&mut alice).await["data"], "back");
    // Both crossed the backplane with the origin's timestamp, and were timed on arrival (the
    // recorder is the process's: at least these two).
    let lag_count = counter(b.addr, "svc_ws_backplane_delivery_lag_seconds_count").await;
    assert!(lag_count >= 2, "{lag_count}");

    // `/ws/stats` lists the nodes: this one first, with its backplane, then the other.
    let (sa, sb) = (
        get_json(a.addr, "/ws/stats").await,
        get_json(b.addr, "/ws/stats").await,
    );
    for (this, other) in [(&sa, &sb), (&sb, &sa)] {
        let nodes = this["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2, "{this}");
        assert_eq!(nodes[0]["node"], this["node"]);
        assert_eq!(nodes[0]["backplane"], "connected");
        assert_eq!(nodes[0]["connections"], 1);
        assert_eq!(nodes[1]["node"], other["node"]);
        assert_eq!(nodes[1]["connections"], 1);
        assert!(nodes[1]["last_seen_ms"].as_u64().unwrap() < 3_000, "{this}");
    }

    // Redis gone: each gateway says so and keeps serving its own users.
    drop(redis);
    within("degraded", async {
        while get_json(a.addr, "/health").await["status"] != "degraded" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let nodes = get_json(a.addr, "/ws/stats").await["nodes"].clone();
    assert_eq!(nodes[0]["backplane"], "disconnected", "{nodes}");
    send(&mut alice, json!({"type": "echo", "data": "alone"})).await;
    assert_eq!(next(&mut alice).await["data"], "alone");
}

/// Redis that hangs (`SIGSTOP`: connections open, nothing answers) rather than dies: a
/// gateway keeps answering `/health` and its own users at once, says `degraded` within the
/// backplane's detection bound (2 s), drops and counts what it sends meanwhile to the other
/// gateway, and after `SIGCONT` delivers across gateways again within 2 s.
#[tokio::test]
async fn malformed_backplane_messages_are_dropped_and_counted() {
    // A peer (or anyone who can publish on the Redis) sends garbage on the channels every node
    // listens to: it is dropped with a warning, counted, and nothing else changes.
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gw = start(GatewayConfig::default().with_redis_url(redis.url())).await;
    within("backplane connected", async {
        while get_json(gw.addr, "/health").await["backplane"] != "connected" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut alice = connect(&gw, "?user=alice").await;
    send(
        &mut alice,
        json!({"type": "join", "room": "lobby", "id": 1}),
    )
    .await;
    assert_eq!(next(&mut alice).await["type"], "ack");

    // The recorder is the process's: other tests' gateways count into it too.
    let before = counter(gw.addr, "svc_ws_backplane_malformed_total").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = within("redis", client.get_multiplexed_async_connection())
        .await
        .unwrap();
    let garbage: [(&str, &[u8]); 3] = [
        ("svc-ws:all", b"\xff\x00not an envelope"),
        ("svc-ws:room:lobby", b"{\"type\":\"message\"}"),
        ("svc-ws:presence", b""),
    ];
    for (channel, payload) in garbage {
        let receivers: i64 = within(
            "publish",
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(&mut c),
        )
        .await
        .unwrap();
        assert!(receivers >= 1, "nobody listens on {channel}");
    }
    within("counted", async {
        while counter(gw.addr, "svc_ws_backplane_malformed_total").await < before + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    silent(&mut alice).await;
    // Still a working node: a publish from another connection reaches alice.
    let mut bob = connect(&gw, "?user=bob").await;
    send(
        &mut bob,
        json!({"type": "publish", "room": "lobby", "data": "still", "id": 2}),
    )
    .await;
    assert_eq!(next(&mut bob).await["type"], "ack");
    assert_eq!(next(&mut alice).await["data"], "still");
    assert_eq!(get_json(gw.addr, "/health").await["status"], "ok");
}

#[tokio::test]
async fn a_gateway_is_degraded_while_redis_hangs() {
    const PROMPT: Duration = Duration::from_millis(100);
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let config = GatewayConfig::default().with_redis_url(redis.url());
    let a = start(config.clone()).await;
    let b = start(config).await;
    for gw in [&a, &b] {
        within("backplane connected", async {
            while get_json(gw.addr, "/health").await["status"] != "ok" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    let mut alice = connect(&a, "?user=alice").await;
    let mut bob = connect(&b, "?user=bob").await;
    // Sends from a to bob every 50 ms until one arrives; how long that took.
    async fn reaches_bob(alice: &mut Client, bob: &mut Client, what: &str) -> Duration {
        let started = tokio::time::Instant::now();
        within(&format!("{what} reaches bob"), async {
            for n in 0.. {
                let data = format!("{what} {n}");
                send(alice, json!({"type": "send", "to": "bob", "data": data})).await;
                if let Ok(got) = tokio::time::timeout(Duration::from_millis(50), next(bob)).await {
                    assert!(got["data"].as_str().unwrap().starts_with(what), "{got}");
                    return;
                }
            }
        })
        .await;
        started.elapsed()
    }
    reaches_bob(&mut alice, &mut bob, "hello").await;

    redis.stop();
    let stopped = tokio::time::Instant::now();
    assert!(
        !redis.answers_within(Duration::from_millis(200)).await,
        "redis-server still answers: it was not stopped"
    );
    let mut degraded = None;
    for n in 0.. {
        let t = tokio::time::Instant::now();
        let health = get_json(a.addr, "/health").await;
        send(&mut alice, json!({"type": "echo", "data": n})).await;
        assert_eq!(next(&mut alice).await["data"], n);
        assert!(
            t.elapsed() <= PROMPT,
            "/health and an echo took {:?}",
            t.elapsed()
        );
        if health["status"] == "degraded" {
            assert_eq!(health["backplane"], "disconnected");
            degraded = Some(stopped.elapsed());
            break;
        }
        assert!(
            stopped.elapsed() <= Duration::from_secs(3),
            "never degraded: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let degraded = degraded.unwrap();
    eprintln!("degraded {degraded:?} after Redis stopped");
    assert!(
        degraded <= Duration::from_millis(2_500),
        "degraded after {degraded:?}"
    );
    let dropped = counter(a.addr, "svc_ws_backplane_dropped_total").await;
    for data in ["lost 1", "lost 2"] {
        send(
            &mut alice,
            json!({"type": "send", "to": "bob", "data": data}),
        )
        .await;
    }
    send(&mut alice, json!({"type": "echo", "data": "after"})).await;
    assert_eq!(next(&mut alice).await["data"], "after");
    let now = counter(a.addr, "svc_ws_backplane_dropped_total").await;
    assert!(now >= dropped + 2, "dropped {dropped} then {now}");
    assert!(
        !redis.answers_within(Duration::from_millis(100)).await,
        "redis-server answered during the hang"
    );

    redis.resume();
    // The first message bob gets is a probe: what a sent during the hang is gone.
    let took = reaches_bob(&mut alice, &mut bob, "probe").await;
    eprintln!("cross-gateway delivery resumed {took:?} after SIGCONT");
    assert!(took <= Duration::from_secs(2), "resumed after {took:?}");
    for gw in [&a, &b] {
        assert_eq!(get_json(gw.addr, "/health").await["status"], "ok");
    }
}

/// Other services push through `POST /api/publish` with an API key or an admin JWT. The
/// configuration comes from variables, as `svc-ws serve` reads them.
#[tokio::test]
async fn api_publish_and_metrics() {
    let config = GatewayConfig::from_vars([
        ("AUTH_JWT__SECRET", SECRET),
        ("WS_API_KEYS", "billing:billing-key-123:"),
        ("WS_GATEWAY_ANONYMOUS", "true"),
    ])
    .unwrap();
    let gw = start(config).await;
    let connects_before = connects_total(gw.addr).await;
    let mut alice = connect(&gw, "?user=alice").await;
    let mut bob = connect(&gw, "?user=bob").await;
    registered(&gw, 2).await;
    send(
        &mut alice,
        json!({"type": "join", "room": "lobby", "id": 1}),
    )
    .await;
    assert_eq!(next(&mut alice).await["type"], "ack");

    // Refused: no credentials (401), a JWT without the admin scope (403), a bad key (401).
    let (status, body) = publish(&gw, "", json!({"data": 1})).await;
    assert_eq!(status, 401, "{body}");
    let user_jwt = format!("Authorization: Bearer {}\r\n", token("carol", &[]));
    let (status, body) = publish(&gw, &user_jwt, json!({"data": 1})).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, _) = publish(&gw, "X-API-Key: wrong\r\n", json!({"data": 1})).await;
    assert_eq!(status, 401);
    silent(&mut alice).await;

    // An API key: to a user, to a room, to everyone but one user.
    let key = "X-API-Key: billing-key-123\r\n";
    let (status, body) = publish(&gw, key, json!({"to": "bob", "data": {"paid": true}})).await;
    assert_eq!((status, body), (200, json!({"delivered": 1})));
    assert_eq!(
        next(&mut bob).await,
        json!({"type": "message", "from": "billing", "data": {"paid": true}})
    );
    let (status, _) = publish(&gw, key, json!({"room": "lobby", "data": "room"})).await;
    assert_eq!(status, 200);
    assert_eq!(next(&mut alice).await["room"], "lobby");
    let admin = format!("Authorization: Bearer {}\r\n", token("ops", &["admin"]));
    let (status, body) = publish(&gw, &admin, json!({"exclude": "alice", "data": "all"})).await;
    assert_eq!((status, body), (200, json!({"delivered": 1})));
    assert_eq!(next(&mut bob).await["from"], "ops");
    silent(&mut alice).await;

    // Bad bodies: 400, nothing sent.
    for bad in [
        json!({"to": "bob", "room": "lobby", "data": 1}),
        json!({"data": 1, "x": 2}),
        json!({"to": "bob"}),
    ] {
        let (status, body) = publish(&gw, key, bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
    }
    silent(&mut bob).await;

    // Prometheus text with the manager's counters (shared by every gateway of the process,
    // so at least our two connects).
    let after = connects_total(gw.addr).await;
    assert!(after >= connects_before + 2, "{connects_before} -> {after}");
}

/// The shutdown future closes every connection with 1012, as docs/protocol.md says, and
/// `serve` returns; the listener is closed.
#[tokio::test]
async fn shutdown_closes_connections_with_1012() {
    let mut gw = start(GatewayConfig::default()).await;
    let mut alice = connect(&gw, "?user=alice").await;
    registered(&gw, 1).await;
    gw.stop.take().unwrap().send(()).unwrap();
    assert_eq!(
        next_close(&mut alice).await,
        Some((1012, "service restart".to_owned()))
    );
    // Keep reading so the client's close reply goes out and the drain ends at once.
    while let Some(Ok(_)) = within("end of stream", alice.next()).await {}
    within("serve to return", &mut gw.served)
        .await
        .unwrap()
        .unwrap();
    let refused = within("connect", tokio::net::TcpStream::connect(gw.addr)).await;
    assert!(refused.is_err(), "the listener is closed");
}

/// A rolling restart: the moment shutdown begins, `/health/ready` says 503 and new upgrades
/// get 503 with `Retry-After`, while every connection stays open for the grace period and
/// `/health/live` still says 200; then the connections are closed with 1012 spread over the
/// window, not all at once.
#[tokio::test]
async fn shutdown_turns_unready_first_then_closes_over_the_spread() {
    const N: usize = 20;
    let grace = Duration::from_millis(400);
    let spread = Duration::from_millis(800);
    let mut gw = start(GatewayConfig::default().with_shutdown_ramp(grace, spread)).await;
    assert_eq!(http(gw.addr, "GET", "/health/ready", "", "").await.0, 200);
    let mut closes = Vec::new();
    for i in 0..N {
        let mut ws = connect(&gw, &format!("?user=u{i}")).await;
        closes.push(tokio::spawn(async move {
            let close = next_close(&mut ws).await;
            let at = std::time::Instant::now();
            while let Some(Ok(_)) = within("end of stream", ws.next()).await {}
            (at, close)
        }));
    }
    registered(&gw, N as u64).await;

    let begun = std::time::Instant::now();
    gw.stop.take().unwrap().send(()).unwrap();
    within("not ready", async {
        while http(gw.addr, "GET", "/health/ready", "", "").await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let unready = std::time::Instant::now();
    let (status, body) = http(gw.addr, "GET", "/health/ready", "", "").await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"ready": false, "reason": "shutting down"})
    );
    assert_eq!(http(gw.addr, "GET", "/health/live", "", "").await.0, 200);
    let tcp = within("tcp", tokio::net::TcpStream::connect(gw.addr))
        .await
        .unwrap();
    let (_, head) = common::raw::upgrade_request(tcp, gw.addr, "/ws?user=late").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 5"), "{head}");

    let mut times = Vec::new();
    for task in closes {
        let (at, close) = within("close", task).await.unwrap();
        assert_eq!(close, Some((1012, "service restart".to_owned())));
        times.push(at);
    }
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    assert!(
        unready < first,
        "a connection closed before the node said it was going"
    );
    assert!(
        first.duration_since(begun) >= grace - Duration::from_millis(50),
        "the first close came {:?} after the shutdown began, before the grace ended",
        first.duration_since(begun)
    );
    // The last of 20 closes is due after 19/20 of the spread.
    assert!(
        last.duration_since(first) >= spread.mul_f64(0.7),
        "closes spread over only {:?}",
        last.duration_since(first)
    );
    within("serve to return", &mut gw.served)
        .await
        .unwrap()
        .unwrap();
}

/// The router mounted beside an application's own routes, served by the application.
#[tokio::test]
async fn the_router_mounts_beside_other_routes() {
    let gateway = Gateway::new(GatewayConfig::default()).unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .merge(gateway.router());
    let addr = common::server::serve(app).await;
    assert_eq!(
        http(addr, "GET", "/hello", "", "").await,
        (200, "hello".to_owned())
    );
    assert_eq!(get_json(addr, "/health").await["status"], "ok");
    let mut ws = common::server::connect(addr, "/ws?user=app").await;
    send(&mut ws, json!({"type": "echo", "data": "mounted"})).await;
    assert_eq!(next(&mut ws).await["data"], "mounted");
    // The application sends to the gateway's users through the manager.
    let sent = gateway
        .manager()
        .send_to_user("app", r#"{"type":"message","data":"from the app"}"#)
        .await
        .unwrap();
    assert_eq!(sent, 1);
    assert_eq!(next(&mut ws).await["data"], "from the app");
    // The application's shutdown closes the gateway's connections.
    let closing = tokio::spawn(async move { gateway.shutdown().await });
    assert_eq!(
        next_close(&mut ws).await,
        Some((1012, "service restart".to_owned()))
    );
    while let Some(Ok(_)) = within("end of stream", ws.next()).await {}
    within("shutdown", closing).await.unwrap();
}

/// `WS_MAX_MESSAGE_SIZE` holds both ways: a larger incoming message closes with 1009; a
/// request whose outgoing message would be larger gets an `error` (nothing is sent, the
/// connection stays open), and `POST /api/publish` answers 413.
#[tokio::test]
async fn the_message_size_limit_holds_in_and_out() {
    let config = GatewayConfig::from_vars([
        ("WS_MAX_MESSAGE_SIZE", "4096"),
        ("WS_API_KEYS", "billing:billing-key-123:"),
        ("WS_GATEWAY_ANONYMOUS", "true"),
    ])
    .unwrap();
    let gw = start(config).await;
    let mut alice = connect(&gw, "?user=alice").await;
    let mut bob = connect(&gw, "?user=bob").await;
    registered(&gw, 2).await;
    for ws in [&mut alice, &mut bob] {
        send(ws, json!({"type": "join", "room": "lobby", "id": 0})).await;
        assert_eq!(next(ws).await["type"], "ack");
    }

    // Out: a request of exactly 4,096 bytes whose message to the room is larger.
    let request = |data: &str| json!({"type": "publish", "room": "lobby", "data": data, "id": 1});
    let overhead = request("").to_string().len();
    let data = "x".repeat(4096 - overhead);
    let out = json!({"type": "message", "room": "lobby", "from": "alice", "data": data});
    assert_eq!(request(&data).to_string().len(), 4096);
    assert!(out.to_string().len() > 4096);
    send(&mut alice, request(&data)).await;
    let reply = next(&mut alice).await;
    assert_eq!(
        (reply["type"].as_str(), &reply["id"]),
        (Some("error"), &json!(1))
    );
    assert!(reply["error"].as_str().unwrap().contains("4096"), "{reply}");
    silent(&mut bob).await;
    // Still open: a message that fits goes through.
    send(
        &mut alice,
        json!({"type": "publish", "room": "lobby", "data": "small", "id": 3}),
    )
    .await;
    assert_eq!(next(&mut alice).await["type"], "ack");
    assert_eq!(next(&mut bob).await["data"], "small");

    let key = "X-API-Key: billing-key-123\r\n";
    let (status, body) =
        publish(&gw, key, json!({"room": "lobby", "data": "y".repeat(5000)})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    silent(&mut bob).await;

    // In: a message over the limit closes with 1009 (the socket has the gateway's limit,
    // not the library's default of 1 MiB).
    within(
        "send",
        alice.send(Message::text(
            json!({"type": "echo", "data": "z".repeat(8192)}).to_string(),
        )),
    )
    .await
    .unwrap();
    assert_eq!(next_close(&mut alice).await.map(|c| c.0), Some(1009));
}

/// `WS_ALLOWED_ORIGINS` reaches the gateway's upgrades: another origin gets 403.
#[tokio::test]
async fn the_gateway_refuses_origins_not_allowed() {
    let config = GatewayConfig::from_vars([
        ("WS_ALLOWED_ORIGINS", "https://chat.example.com"),
        ("WS_GATEWAY_ANONYMOUS", "true"),
    ])
    .unwrap();
    let gw = start(config).await;
    let url = format!("ws://{}/ws?user=eve", gw.addr);
    let refused = connect_from_origin(&url, Some("https://evil.example")).await;
    assert_eq!(refused.err(), Some(403));
    let mut ws = connect_from_origin(&url, Some("https://chat.example.com"))
        .await
        .unwrap_or_else(|status| panic!("HTTP {status}"));
    send(&mut ws, json!({"type": "echo", "data": 1, "id": 1})).await;
    assert_eq!(next(&mut ws).await["type"], "echo");
}
