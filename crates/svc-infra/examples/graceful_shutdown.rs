//! The seed's graceful shutdown: on Ctrl-C, tell every client, let their queues drain, close
//! every socket with 1001, and refuse new connections meanwhile.
//!
//! Run with:
//! ```sh
//! cargo run -p svc-infra --example graceful_shutdown
//! ```

use std::time::Duration;

use axum::{Router, extract::Path, response::Response, routing::get};
use serde_json::json;
use svc_infra::websocket::{WsManager, WsUpgrade, add_websocket_manager};

async fn ws(ws: WsUpgrade, Path(user_id): Path<String>, WsManager(manager): WsManager) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user_id, socket).await else {
            return;
        };
        while let Some(Ok(_)) = conn.recv().await {}
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (app, manager) = add_websocket_manager(Router::new().route("/ws/{user_id}", get(ws)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on ws://{}/ws/{{user_id}}; Ctrl-C to stop",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Notify all clients, then close them all with 1001 after their queues drain.
            let _ = manager
                .broadcast(json!({"type": "system", "message": "Server shutting down"}))
                .await;
            manager
                .shutdown(1001, "server shutting down", Duration::from_secs(10))
                .await;
        })
        .await
}
