//! The seed's connection limits: at most 5 connections per user; the 6th is closed with
//! 4008 "Too many connections" right after the handshake.
//!
//! Run with:
//! ```sh
//! cargo run -p svc-infra --example connection_limits
//! ```

use axum::{Router, extract::Query, response::Response, routing::get};
use serde::Deserialize;
use svc_infra::websocket::{WsManager, WsUpgrade, add_websocket_manager};

const MAX_CONNECTIONS_PER_USER: usize = 5;

#[derive(Deserialize)]
struct Who {
    user: String,
}

async fn limited_ws(
    ws: WsUpgrade,
    Query(Who { user }): Query<Who>,
    WsManager(manager): WsManager,
) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        if manager.get_user_connections(&user).len() >= MAX_CONNECTIONS_PER_USER {
            socket.close(4008, "Too many connections").await;
            return;
        }
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        while let Some(Ok(_)) = conn.recv().await {}
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (app, _manager) = add_websocket_manager(Router::new().route("/ws", get(limited_ws)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on ws://{}/ws?user=NAME", listener.local_addr()?);
    axum::serve(listener, app).await
}
