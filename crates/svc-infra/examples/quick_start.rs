//! The seed's Quick Start server: every JSON message a user sends is broadcast to everyone.
//!
//! Run with:
//! ```sh
//! cargo run -p svc-infra --example quick_start
//! # then, in another terminal: svc-ws connect ws://127.0.0.1:3000/ws/alice
//! ```

use axum::{Router, extract::Path, response::Response, routing::get};
use svc_infra::websocket::{WsManager, WsUpgrade, add_websocket_manager};

async fn websocket_endpoint(
    ws: WsUpgrade,
    Path(user_id): Path<String>,
    WsManager(manager): WsManager,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user_id, socket).await else {
            return;
        };
        while let Some(Ok(message)) = conn.recv().await {
            // Only JSON is relayed, as with FastAPI's `iter_json()`.
            match message.json::<serde_json::Value>() {
                Ok(value) => {
                    let _ = manager.broadcast(value).await;
                }
                Err(e) => {
                    let _ = conn.send(serde_json::json!({"error": format!("invalid JSON: {e}")}));
                }
            }
        }
        // Dropping `conn` deregisters it (the `finally: disconnect` of the Python version).
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new().route("/ws/{user_id}", get(websocket_endpoint));
    let (app, _manager) = add_websocket_manager(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on ws://{}/ws/{{user_id}}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
