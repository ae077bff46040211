//! The seed's chat application: rooms, join/leave announcements, messages to the room
//! without echo to the sender.
//!
//! Run with:
//! ```sh
//! cargo run -p svc-infra --example chat_rooms
//! # svc-ws connect 'ws://127.0.0.1:3000/chat/general?user=alice'
//! # then send {"message": "hi"}
//! ```

use axum::{
    Router,
    extract::{Path, Query},
    response::Response,
    routing::get,
};
use serde::Deserialize;
use serde_json::json;
use svc_infra::websocket::{WsManager, WsUpgrade, add_websocket_manager};

#[derive(Deserialize)]
struct Who {
    user: String,
}

async fn chat_room(
    ws: WsUpgrade,
    Path(room): Path<String>,
    Query(Who { user }): Query<Who>,
    WsManager(manager): WsManager,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        manager.join_room(&user, &room).await;
        let _ = manager
            .broadcast_to_room(
                &room,
                json!({"type": "system", "message": format!("{user} joined the room")}),
            )
            .await;
        while let Some(Ok(message)) = conn.recv().await {
            let Ok(data) = message.json::<serde_json::Value>() else {
                continue;
            };
            let _ = manager
                .broadcast_to_room_excluding(
                    &room,
                    json!({"type": "message", "from": user, "message": data.get("message")}),
                    &user, // don't echo back to the sender
                )
                .await;
        }
        manager.leave_room(&user, &room).await;
        drop(conn);
        let _ = manager
            .broadcast_to_room(
                &room,
                json!({"type": "system", "message": format!("{user} left the room")}),
            )
            .await;
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new().route("/chat/{room}", get(chat_room));
    let (app, _manager) = add_websocket_manager(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "chat on ws://{}/chat/{{room}}?user=NAME",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
