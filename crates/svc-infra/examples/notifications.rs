//! The seed's real-time notifications: users keep a socket open; business logic pushes to
//! a user with `send_to_user`, here through `POST /notify/{user_id}` with a JSON body.
//!
//! Run with:
//! ```sh
//! cargo run -p svc-infra --example notifications
//! # svc-ws connect 'ws://127.0.0.1:3000/notifications?user=alice'
//! # curl -X POST localhost:3000/notify/alice -H 'content-type: application/json' -d '{"text":"hi"}'
//! ```

use axum::{
    Json, Router,
    extract::{Path, Query},
    response::Response,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use svc_infra::websocket::{
    ConnectionManager, WebSocketError, WsManager, WsUpgrade, add_websocket_manager,
};

#[derive(Deserialize)]
struct Who {
    user: String,
}

async fn notifications(
    ws: WsUpgrade,
    Query(Who { user }): Query<Who>,
    WsManager(manager): WsManager,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        // Keep the connection open for pushes; client messages (heartbeats) are ignored.
        while let Some(Ok(_)) = conn.recv().await {}
    })
}

/// Called from business logic: push a notification to every device of a user.
async fn notify_user(
    manager: &ConnectionManager,
    user_id: &str,
    notification: Value,
) -> Result<usize, WebSocketError> {
    manager
        .send_to_user(
            user_id,
            json!({"type": "notification", "data": notification}),
        )
        .await
}

async fn notify(
    Path(user_id): Path<String>,
    WsManager(manager): WsManager,
    Json(body): Json<Value>,
) -> Json<Value> {
    let delivered = notify_user(&manager, &user_id, body).await.unwrap_or(0);
    Json(json!({ "delivered": delivered }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/notifications", get(notifications))
        .route("/notify/{user_id}", post(notify));
    let (app, _manager) = add_websocket_manager(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
