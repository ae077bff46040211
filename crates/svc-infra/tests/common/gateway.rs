//! The gateway served in process (`Gateway::serve` on 127.0.0.1:0) and the requests of its
//! `/ws` protocol and HTTP API, for `tests/gateway.rs` and `tests/gateway_limits.rs`.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::SinkExt;
use serde_json::{Value, json};
use svc_infra::{
    auth::WsAuthConfig,
    gateway::{Gateway, GatewayConfig, GatewayError},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message;

use super::{
    QUIET,
    raw::http,
    server::{Client as Ws, assert_silent, next_text},
    within,
};

pub const SECRET: &str = "a-test-secret-that-is-long-enough-32b";

/// A gateway served on 127.0.0.1:0 until `stop` fires or this is dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub served: JoinHandle<Result<(), GatewayError>>,
}

/// Builds a gateway from `config` and serves it on a free port.
pub async fn start(config: GatewayConfig) -> Running {
    let gateway = Gateway::new(config).expect("gateway config");
    let listener = within("bind", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(listener, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        served,
    }
}

pub async fn connect(gw: &Running, query: &str) -> Ws {
    let url = format!("ws://{}/ws{query}", gw.addr);
    within("connect", tokio_tungstenite::connect_async(&url))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

pub async fn send(ws: &mut Ws, v: Value) {
    within("send", ws.send(Message::text(v.to_string())))
        .await
        .unwrap();
}

pub async fn next(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

pub async fn silent(ws: &mut Ws) {
    assert_silent(ws, QUIET).await;
}

pub async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, "", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `n` connections are registered on `gw` (the handshake answer comes before
/// the registration).
pub async fn registered(gw: &Running, n: u64) {
    within(&format!("{n} connections registered"), async {
        while get_json(gw.addr, "/ws/stats").await["local_connections"] != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

pub async fn publish(gw: &Running, headers: &str, body: Value) -> (u16, Value) {
    let (status, body) = http(gw.addr, "POST", "/api/publish", headers, &body.to_string()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// An HS256 token signed with [`SECRET`], as `svc-ws token` mints them.
pub fn token(sub: &str, scopes: &[&str]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": sub, "iat": now, "exp": now + 600, "scopes": scopes});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn with_secret() -> GatewayConfig {
    GatewayConfig::default().with_auth(WsAuthConfig::default().with_secret(SECRET))
}

/// `svc_ws_connects_total` in the Prometheus text (0 before the first connect). The recorder
/// is process-wide, so the tests of this file running beside each other all count in it.
pub async fn connects_total(addr: SocketAddr) -> u64 {
    counter(addr, "svc_ws_connects_total").await
}

/// A counter of the process-wide recorder, from `/metrics` (0 before its first increment).
pub async fn counter(addr: SocketAddr, name: &str) -> u64 {
    let (status, text) = http(addr, "GET", "/metrics", "", "").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |n| n.trim().parse().unwrap())
}
