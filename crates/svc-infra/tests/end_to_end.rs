//! The three halves together over real sockets: our `WebSocketClient` talks to routes built
//! with the auth factories, upgraded by our `WsUpgrade` and registered with the
//! `ConnectionManager`.
#![cfg(all(feature = "client", feature = "auth"))]

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{Router, response::Response};
use common::{server::serve, within};
use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use svc_infra::{
    auth::{WsAuth, WsAuthConfig, WsIdentity, ws_protected_router, ws_scopes_router},
    websocket::{
        ConnectionManager, WebSocketClient, WebSocketConfig, WebSocketError, WsManager, WsUpgrade,
        add_websocket_manager_with, websocket_connect,
    },
};

const SECRET: &str = "end-to-end-secret-0123456789abcdef0123";

fn token(sub: &str, scopes: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims =
        json!({"sub": sub, "exp": exp, "email": format!("{sub}@example.com"), "scopes": scopes});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `/api/ws`: a protected route whose handler registers the principal with the manager,
/// greets with the principal's id and `via`, then relays text to the user's connections.
async fn notifications(
    ws: WsUpgrade,
    WsIdentity(user): WsIdentity,
    WsManager(manager): WsManager,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user.id, socket).await else {
            return;
        };
        let hello = json!({"id": user.id, "via": user.via.to_string()});
        if conn.send(hello).is_err() {
            return;
        }
        while let Some(Ok(message)) = conn.recv().await {
            let _ = manager.send_to_user(&user.id, message).await;
        }
    })
}

async fn start() -> (SocketAddr, ConnectionManager) {
    let auth: WsAuth = WsAuthConfig::default().with_secret(SECRET).build().unwrap();
    let manager = ConnectionManager::default();
    let app = Router::new()
        .merge(ws_protected_router("/api", auth.clone()).ws("/ws", notifications))
        .merge(ws_scopes_router("/admin", auth, ["admin"]).ws("/ws", notifications));
    let app = add_websocket_manager_with(app, manager.clone());
    (serve(app).await, manager)
}

async fn hello(client: &mut WebSocketClient) -> Value {
    within("hello", client.recv_json::<Value>()).await.unwrap()
}

#[tokio::test]
async fn every_token_form_reaches_the_manager() {
    let (addr, manager) = start().await;
    let jwt = token("alice", &[]);

    // Query parameter.
    let mut by_query = within(
        "connect",
        WebSocketClient::builder(format!("ws://{addr}/api/ws?token={jwt}")).connect(),
    )
    .await
    .unwrap();
    assert_eq!(
        hello(&mut by_query).await,
        json!({"id": "alice", "via": "query"})
    );

    // Authorization header.
    let mut by_header = within(
        "connect",
        WebSocketClient::builder(format!("ws://{addr}/api/ws"))
            .header("Authorization", format!("Bearer {jwt}"))
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(
        hello(&mut by_header).await,
        json!({"id": "alice", "via": "header"})
    );

    // The browser form: ["bearer", jwt]. The server must select "bearer", or a browser
    // (and our client, which checks) fails the handshake.
    let mut by_protocol = within(
        "connect",
        WebSocketClient::builder(format!("ws://{addr}/api/ws"))
            .subprotocols(["bearer", jwt.as_str()])
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(by_protocol.subprotocol(), Some("bearer"));
    assert_eq!(
        hello(&mut by_protocol).await,
        json!({"id": "alice", "via": "subprotocol"})
    );

    // All three are alice's connections: a message from one reaches all of them.
    assert_eq!(manager.get_user_connections("alice").len(), 3);
    within("send", by_header.send("to all of alice"))
        .await
        .unwrap();
    for client in [&mut by_query, &mut by_header, &mut by_protocol] {
        let m = within("relay", client.recv()).await.unwrap();
        assert_eq!(m.as_text(), Some("to all of alice"));
    }

    // Closing from the client removes the connection from the manager.
    within("close", by_query.close(1000, "bye")).await.unwrap();
    let deadline = tokio::time::Instant::now() + common::STEP;
    while manager.get_user_connections("alice").len() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "not deregistered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn rejections_surface_as_the_authentication_error() {
    let (addr, manager) = start().await;
    let cases = [
        (
            format!("ws://{addr}/api/ws"),
            401,
            "Missing or invalid authentication",
        ),
        (
            format!("ws://{addr}/api/ws?token=garbage"),
            401,
            "Invalid token",
        ),
        (
            format!("ws://{addr}/admin/ws?token={}", token("bob", &["read"])),
            403,
            "Insufficient scope",
        ),
    ];
    for (url, want_status, want_reason) in cases {
        match within("connect", WebSocketClient::builder(url.as_str()).connect()).await {
            Err(WebSocketError::Authentication { status, body }) => {
                assert_eq!(status, want_status, "{url}");
                assert!(body.contains(want_reason), "{url}: {body}");
                assert!(
                    !WebSocketError::Authentication { status, body }.is_retryable(),
                    "auth failures are final"
                );
            }
            other => panic!("{url}: expected Authentication, got {other:?}"),
        }
    }
    assert_eq!(manager.connection_count(), 0, "nothing was upgraded");

    // websocket_connect gives up at once on 401 instead of retrying.
    let config = WebSocketConfig::default().with_reconnect_max_attempts(0);
    let mut stream =
        websocket_connect(WebSocketClient::builder(format!("ws://{addr}/api/ws")).config(config));
    match within("reconnect stream", stream.next()).await {
        Some(Err(WebSocketError::Authentication { status: 401, .. })) => {}
        other => panic!("expected one Authentication error, got {other:?}"),
    }
    assert!(within("end", stream.next()).await.is_none());
}

#[tokio::test]
async fn admin_scope_gets_in_and_server_shutdown_reaches_our_client_as_1001() {
    let (addr, manager) = start().await;
    let mut admin = within(
        "connect",
        WebSocketClient::builder(format!(
            "ws://{addr}/admin/ws?token={}",
            token("root", &["admin"])
        ))
        .connect(),
    )
    .await
    .unwrap();
    assert_eq!(hello(&mut admin).await["id"], "root");
    within(
        "shutdown",
        manager.shutdown(1001, "server shutting down", Duration::from_secs(5)),
    )
    .await;
    match within("closed", admin.recv()).await {
        Err(WebSocketError::ConnectionClosed { code, reason }) => {
            assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
        }
        other => panic!("expected the 1001 close, got {other:?}"),
    }
    assert!(!admin.is_connected());
}
