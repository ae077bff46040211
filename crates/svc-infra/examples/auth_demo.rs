//! WebSocket authentication demo: one route per router factory.
//!
//! Run with:
//!
//! ```sh
//! AUTH_JWT__SECRET=change-me-to-32-random-bytes-please \
//! WS_API_KEYS='billing:billing-key-123:admin,reader:reader-key-456:read' \
//!     cargo run -p svc-infra --example auth_demo -- --port 8000
//! ```
//!
//! Routes (each also answers with a trailing slash):
//!
//! | Route | Factory | Needs |
//! |---|---|---|
//! | `/public/ws` | `ws_public_router` | nothing |
//! | `/protected/ws` | `ws_protected_router` | a JWT or an API key |
//! | `/user/ws` | `ws_user_router` | a JWT (API keys refused) |
//! | `/scoped/ws` | `ws_scopes_router(["admin"])` | scope `admin` |
//! | `/any/ws` | `ws_protected_router` + `RequireWsAnyScope` | scope `admin` or `ops` |
//! | `/optional/ws` | `ws_optional_router` | nothing, but a given token must be valid |
//!
//! After the upgrade the server sends one text message, the principal as JSON
//! (`{"id":..,"email":..,"scopes":[..],"via":..}`, or `null` when anonymous), then echoes
//! every text message. Try it with a token in any of the three forms:
//!
//! ```text
//! ws://127.0.0.1:8000/protected/ws?token=<jwt>
//! Authorization: Bearer <jwt>
//! new WebSocket("ws://127.0.0.1:8000/protected/ws", ["bearer", jwt])   // browsers
//! ```
//!
//! The port comes from `--port N`, else `PORT`, else 8000. The secret and the other settings
//! come from the `AUTH_JWT_*` variables (see `WsAuthConfig::from_env`); without a secret a
//! random one is used outside production (so no token is accepted) and startup fails in
//! production (`APP_ENV=production`).

use std::net::{Ipv4Addr, SocketAddr};

use axum::{Router, response::Response};
use serde_json::Value;
use svc_infra::auth::{
    OptionalWsIdentity, RequireWsAnyScope, ScopeSet, WsAuth, WsIdentity, WsPrincipal,
    ws_optional_router, ws_protected_router, ws_public_router, ws_scopes_router, ws_user_router,
};
use svc_infra::websocket::{WebSocket, WsUpgrade as WebSocketUpgrade};
use tracing_subscriber::EnvFilter;

/// `admin` or `ops`, for `/any/ws`.
struct AdminOrOps;

impl ScopeSet for AdminOrOps {
    const SCOPES: &'static [&'static str] = &["admin", "ops"];
}

fn principal_json(p: Option<&WsPrincipal>) -> Value {
    serde_json::to_value(p).unwrap_or(Value::Null)
}

/// Sends the principal, then echoes text until the client leaves.
async fn greet_and_echo(mut socket: WebSocket, hello: Value) {
    if socket.send(hello.to_string()).is_err() {
        return;
    }
    while let Some(Ok(msg)) = socket.recv().await {
        if msg.is_text() && socket.send(msg).is_err() {
            return;
        }
    }
}

async fn public(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|socket| greet_and_echo(socket, Value::Null))
}

async fn identified(ws: WebSocketUpgrade, WsIdentity(user): WsIdentity) -> Response {
    let hello = principal_json(Some(&user));
    ws.on_upgrade(move |socket| greet_and_echo(socket, hello))
}

async fn any_scope(ws: WebSocketUpgrade, user: RequireWsAnyScope<AdminOrOps>) -> Response {
    let hello = principal_json(Some(&user.principal));
    ws.on_upgrade(move |socket| greet_and_echo(socket, hello))
}

async fn optional(ws: WebSocketUpgrade, OptionalWsIdentity(user): OptionalWsIdentity) -> Response {
    let hello = principal_json(user.as_ref());
    ws.on_upgrade(move |socket| greet_and_echo(socket, hello))
}

pub(crate) fn app(auth: WsAuth) -> Router {
    Router::new()
        .merge(ws_public_router("/public").ws("/ws", public))
        .merge(ws_protected_router("/protected", auth.clone()).ws("/ws", identified))
        .merge(ws_user_router("/user", auth.clone()).ws("/ws", identified))
        .merge(ws_scopes_router("/scoped", auth.clone(), ["admin"]).ws("/ws", identified))
        .merge(ws_protected_router("/any", auth.clone()).ws("/ws", any_scope))
        .merge(ws_optional_router("/optional", auth).ws("/ws", optional))
}

fn port() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    if let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--port=") {
            Some(v) => v.to_owned(),
            None if arg == "--port" => args.next().ok_or("--port needs a value")?,
            None => {
                return Err(format!(
                    "unknown argument {arg:?} (usage: auth_demo [--port N])"
                ));
            }
        };
        return value.parse().map_err(|_| format!("bad --port {value:?}"));
    }
    match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|_| format!("bad PORT {p:?}")),
        Err(_) => Ok(8000),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let port = port()?;
    // AUTH_JWT__SECRET / AUTH_JWT_SECRET / JWT_SECRET, WS_API_KEYS, APP_ENV, …
    let auth = WsAuth::from_env()?;
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    tracing::info!(addr = %listener.local_addr()?, "auth_demo listening");
    axum::serve(listener, app(auth)).await?;
    Ok(())
}
