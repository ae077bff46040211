//! The seed's live dashboard: a background task broadcasts stats every few seconds to
//! everyone connected to `/dashboard/live`; `/ws/stats` and `/health/websocket` report the
//! manager's state as in the seed.
//!
//! Run with:
//! ```sh
//! cargo run -p svc-infra --example live_dashboard
//! # svc-ws connect 'ws://127.0.0.1:3000/dashboard/live?user=ops'
//! ```

use std::time::Duration;

use axum::{Json, Router, extract::Query, response::Response, routing::get};
use serde::Deserialize;
use serde_json::{Value, json};
use svc_infra::websocket::{ConnectionManager, WsManager, WsUpgrade, add_websocket_manager};

#[derive(Deserialize)]
struct Who {
    user: String,
}

async fn dashboard_ws(
    ws: WsUpgrade,
    Query(Who { user }): Query<Who>,
    WsManager(manager): WsManager,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        while let Some(Ok(_)) = conn.recv().await {} // keep alive
    })
}

async fn ws_stats(WsManager(manager): WsManager) -> Json<Value> {
    Json(json!({
        "connections": manager.connection_count(),
        "users": manager.active_users(),
        "rooms": manager.room_count(),
    }))
}

async fn websocket_health(WsManager(manager): WsManager) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "connections": manager.connection_count(),
        "users": manager.active_users().len(),
    }))
}

/// Pushes an update every `every`; one JSON encoding per tick, whatever the audience.
async fn push_dashboard_updates(manager: ConnectionManager, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let stats = json!({ "connections": manager.connection_count(), "stats": manager.stats() });
        let _ = manager
            .broadcast(json!({"type": "dashboard_update", "data": stats}))
            .await;
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/dashboard/live", get(dashboard_ws))
        .route("/ws/stats", get(ws_stats))
        .route("/health/websocket", get(websocket_health));
    let (app, manager) = add_websocket_manager(app);
    tokio::spawn(push_dashboard_updates(manager, Duration::from_secs(5)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
