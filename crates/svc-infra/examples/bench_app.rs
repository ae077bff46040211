//! The common benchmark app (docs/benchmarks.md) and the Autobahn server endpoint.
//!
//! Run with:
//! ```sh
//! cargo run --release -p svc-infra --example bench_app -- --port 3000
//! ```
//!
//! - `GET /ws/{user_id}`: registers with the `ConnectionManager`. A text message whose JSON
//!   `"type"` is `"echo"` goes back unchanged to that connection only; `"broadcast"` goes
//!   unchanged to every connection (sender included) through `manager.broadcast`; anything
//!   else is ignored.
//! - `GET /stats`: `{"connections": N}`.
//! - `GET /echo`: echoes every text and binary message unchanged (64 MiB limit, for the
//!   Autobahn suite).
//!
//! With the `redis` feature and `REDIS_URL` set, the app is a node of a cluster
//! (`docs/scaling.md`): broadcasts reach the connections of every node.
//!
//! With `BENCH_ROOM=R` every connection's user joins room R, and a `"broadcast"` goes to R
//! through `manager.publish` (its position embedded): with `WS_HISTORY_SIZE` > 0 R keeps
//! history, so the fan-out benchmark measures what a room with history costs against the
//! same room without (`docs/delivery.md`).

use std::{net::SocketAddr, time::Duration};

use axum::{Json, Router, extract::Path, response::Response, routing::get};
use serde::Deserialize;
use serde_json::{Value, json};
use svc_infra::websocket::{
    ConnectionManager, PublishOptions, WebSocketConfig, WsManager, WsUpgrade,
    add_websocket_manager_with,
};

/// `BENCH_ROOM`: the room every connection joins and broadcasts go to, if set.
fn bench_room() -> Option<&'static str> {
    static ROOM: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ROOM.get_or_init(|| std::env::var("BENCH_ROOM").ok().filter(|r| !r.is_empty()))
        .as_deref()
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
}

async fn ws(ws: WsUpgrade, Path(user_id): Path<String>, WsManager(manager): WsManager) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user_id, socket).await else {
            return;
        };
        // The manager keeps the id (`conn.user_id()`): this copy need not live as long.
        drop(user_id);
        // `loop` + `match` rather than `while let Some(Ok(message)) = conn.recv().await`:
        // a `while let` keeps `recv`'s whole result (message or error) alive through the
        // loop's body, and with it across the `broadcast` await, in the task's future, which
        // every idle connection holds (docs/benchmarks.md, "A lighter connection").
        loop {
            let message = match conn.recv().await {
                Some(Ok(message)) => message,
                _ => break,
            };
            let Some(text) = message.as_text() else {
                continue;
            };
            match serde_json::from_str::<Kind<'_>>(text)
                .ok()
                .and_then(|k| k.kind)
            {
                Some("echo") if conn.send(&message).is_err() => break,
                Some("broadcast") => {
                    let _ = manager.broadcast(&message).await;
                }
                _ => {}
            }
        }
    })
}

/// `/ws/{user_id}` with `BENCH_ROOM` set: the user joins the room, and a `"broadcast"` goes
/// to it through `manager.publish`. A handler of its own, so that the default one stays
/// what it was (its task is part of every connection's memory).
async fn ws_in_room(
    ws: WsUpgrade,
    Path(user_id): Path<String>,
    WsManager(manager): WsManager,
) -> Response {
    let room = bench_room().unwrap_or("bench");
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user_id, socket).await else {
            return;
        };
        manager.join_room(&user_id, room).await;
        drop(user_id);
        // As in `ws`: `loop` + `match`, and the publish (a history store's round trip)
        // boxed, so that neither is part of every connection's task.
        loop {
            let message = match conn.recv().await {
                Some(Ok(message)) => message,
                _ => break,
            };
            let Some(text) = message.as_text() else {
                continue;
            };
            match serde_json::from_str::<Kind<'_>>(text)
                .ok()
                .and_then(|k| k.kind)
            {
                Some("echo") if conn.send(&message).is_err() => break,
                Some("broadcast") => {
                    let options = PublishOptions::default().embed_position();
                    let _ = Box::pin(manager.publish(room, &message, options)).await;
                }
                _ => {}
            }
        }
    })
}

async fn echo(ws: WsUpgrade) -> Response {
    ws.max_message_size(64 << 20)
        .on_upgrade(|mut socket| async move {
            while let Some(Ok(message)) = socket.recv().await {
                if socket.send(message).is_err() {
                    break;
                }
            }
        })
}

async fn stats(WsManager(manager): WsManager) -> Json<Value> {
    Json(json!({ "connections": manager.connection_count() }))
}

/// The benchmark app's routes, served by `manager`.
pub(crate) fn app(manager: ConnectionManager) -> Router {
    let ws_route = if bench_room().is_some() {
        get(ws_in_room)
    } else {
        get(ws)
    };
    let app = Router::new()
        .route("/ws/{user_id}", ws_route)
        .route("/echo", get(echo))
        .route("/stats", get(stats));
    add_websocket_manager_with(app, manager)
}

fn port() -> u16 {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--port" {
            if let Some(p) = args.next().and_then(|p| p.parse().ok()) {
                return p;
            }
        } else if let Some(p) = arg.strip_prefix("--port=").and_then(|p| p.parse().ok()) {
            return p;
        }
    }
    std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // Keepalive from WS_* (default 20 s); queue of 64 frames per connection for bursts.
    let config = WebSocketConfig::from_env()
        .map_err(std::io::Error::other)?
        .with_max_queue_size(64);
    let builder = ConnectionManager::builder(config);
    // REDIS_URL makes this a node of a cluster (docs/scaling.md); unset, a single node.
    #[cfg(feature = "redis")]
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => builder.backplane(
            svc_infra::websocket::backplane::RedisBackplane::new(&url)
                .map_err(std::io::Error::other)?,
        ),
        Err(_) => builder,
    };
    let manager = builder.build();
    let app = app(manager.clone());
    let handshake_timeout = manager.config().handshake_timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port()));
    // Ready for a reconnect storm: an accept queue of 4096 (tokio's `TcpListener::bind` asks
    // for 128) and a descriptor table grown now, not while the clients arrive.
    let listener = svc_infra::websocket::bind(addr).await?;
    eprintln!("bench_app listening on ws://{}", listener.local_addr()?);
    // The library's `serve` rather than `axum::serve`: a handshake timeout, and the upgraded
    // connection is the TCP stream itself (through `axum::serve` it is hyper-util's wrapper
    // of it, which costs every connection 160 bytes more: docs/benchmarks.md).
    svc_infra::websocket::serve(listener, app)
        .handshake_timeout(handshake_timeout)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            manager
                .shutdown(1001, "server shutting down", Duration::from_secs(5))
                .await;
        })
        .await
}
