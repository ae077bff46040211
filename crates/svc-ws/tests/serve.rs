//! `svc-ws serve` as a process: the `/ws` protocol (docs/protocol.md), authentication, the
//! HTTP endpoints, and two gateways joined by a private `redis-server` (which must be
//! installed when `CI` is set; the test is skipped with a message otherwise).

#[allow(dead_code)]
#[path = "../../svc-infra/tests/fixtures/redis_server.rs"]
mod redis_server;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use redis_server::RedisServer;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};

const STEP: Duration = Duration::from_secs(10);
const SECRET: &str = "a-test-secret-that-is-long-enough-32b";

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A running gateway; killed on drop.
struct Gateway {
    child: tokio::process::Child,
    addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts `svc-ws serve --port 0` with `env` and reads the address it prints.
async fn gateway(env: &[(&str, &str)]) -> Gateway {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_svc-ws"));
    cmd.args(["serve", "--port", "0"])
        .env_remove("AUTH_JWT__SECRET")
        .env_remove("AUTH_JWT_SECRET")
        .env_remove("JWT_SECRET")
        .env_remove("REDIS_URL")
        .env_remove("APP_ENV")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn svc-ws serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = within("the listening line", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                return rest.split('/').next().unwrap().to_owned();
            }
        }
        panic!("svc-ws serve exited before listening");
    })
    .await;
    // Keep draining stderr so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Gateway { child, addr }
}

async fn connect(gw: &Gateway, query: &str) -> Ws {
    let url = format!("ws://{}/ws{query}", gw.addr);
    within("connect", tokio_tungstenite::connect_async(&url))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    within("send", ws.send(Message::text(v.to_string())))
        .await
        .unwrap();
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        match within("next message", ws.next()).await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn silent(ws: &mut Ws) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
        panic!("expected silence, got {m:?}");
    }
}

/// One HTTP/1.1 request by hand; returns the status and the body.
async fn http(gw: &Gateway, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within("http", tokio::net::TcpStream::connect(&gw.addr))
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    within("http request", tcp.write_all(req.as_bytes()))
        .await
        .unwrap();
    let mut response = String::new();
    within("http response", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

async fn get(gw: &Gateway, path: &str) -> Value {
    let (status, body) = http(gw, "GET", path, "", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `n` connections are registered on `gw` (the handshake answer comes before
/// the registration).
async fn registered(gw: &Gateway, n: u64) {
    within(&format!("{n} connections registered"), async {
        while get(gw, "/ws/stats").await["local_connections"] != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn publish(gw: &Gateway, headers: &str, body: Value) -> (u16, Value) {
    let (status, body) = http(gw, "POST", "/api/publish", headers, &body.to_string()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A token minted by `svc-ws token` with the test secret.
fn token(sub: &str, scopes: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_svc-ws"));
    cmd.args(["token", "--sub", sub, "--ttl", "10m"])
        .env("AUTH_JWT__SECRET", SECRET);
    for scope in scopes {
        cmd.args(["--scope", scope]);
    }
    let out = cmd.output().expect("svc-ws token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn token_needs_a_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_svc-ws"))
        .args(["token", "--sub", "x"])
        .env_remove("AUTH_JWT__SECRET")
        .env_remove("AUTH_JWT_SECRET")
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret"));
}

#[tokio::test]
async fn the_protocol_in_anonymous_mode() {
    let gw = gateway(&[]).await;
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

    let stats = get(&gw, "/ws/stats").await;
    assert_eq!(stats["connections"], 3);
    assert_eq!(stats["users"], 2);
    // The demo page speaks the same protocol.
    let (status, page) = http(&gw, "GET", "/", "", "").await;
    assert_eq!(status, 200);
    for needle in [
        r#"type: "join""#,
        r#"type: "publish""#,
        r#"type: "presence""#,
        r#"["bearer", token]"#,
        "/ws/stats",
    ] {
        assert!(page.contains(needle), "demo page lacks {needle}");
    }
    let health = get(&gw, "/health").await;
    assert_eq!(
        health,
        json!({"status": "ok", "backplane": "none", "connections": 3})
    );
}

#[tokio::test]
async fn with_a_jwt_key_credentials_are_required_and_scopes_count() {
    let gw = gateway(&[("AUTH_JWT__SECRET", SECRET)]).await;
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

#[tokio::test]
async fn two_gateways_on_one_redis_are_one_cluster() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let url = redis.url();
    let a = gateway(&[("REDIS_URL", &url)]).await;
    let b = gateway(&[("REDIS_URL", &url)]).await;
    for gw in [&a, &b] {
        within("backplane connected", async {
            while get(gw, "/health").await["backplane"] != "connected" {
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

    // Redis gone: each gateway says so and keeps serving its own users.
    drop(redis);
    within("degraded", async {
        while get(&a, "/health").await["status"] != "degraded" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    send(&mut alice, json!({"type": "echo", "data": "alone"})).await;
    assert_eq!(next(&mut alice).await["data"], "alone");
}

/// Other services push through `POST /api/publish` with an API key or an admin JWT.
#[tokio::test]
async fn api_publish_and_metrics() {
    let gw = gateway(&[
        ("AUTH_JWT__SECRET", SECRET),
        ("WS_API_KEYS", "billing:billing-key-123:"),
        ("WS_GATEWAY_ANONYMOUS", "true"),
    ])
    .await;
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

    // Prometheus text with the manager's counters.
    let (status, text) = http(&gw, "GET", "/metrics", "", "").await;
    assert_eq!(status, 200);
    assert!(text.contains("svc_ws_connects_total 2"), "{text}");
}

/// SIGTERM (what a container runtime sends) closes every connection with 1001, as
/// docs/protocol.md says, and the process exits.
#[tokio::test]
async fn sigterm_closes_connections_with_1001() {
    let mut gw = gateway(&[]).await;
    let mut alice = connect(&gw, "?user=alice").await;
    registered(&gw, 1).await;
    let pid = gw.child.id().expect("running").to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    loop {
        match within("close frame", alice.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
                assert_eq!(frame.reason.as_str(), "server shutting down");
                // Keep reading so the client's close reply goes out and the server's drain
                // ends at once.
                while let Some(Ok(_)) = within("end of stream", alice.next()).await {}
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected the close frame, got {other:?}"),
        }
    }
    let exit = within("exit", gw.child.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
}
