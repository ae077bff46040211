//! Auth fixtures: keys, token minting, a test app built with the five factories, and a
//! tokio-tungstenite client that reports what the handshake gave. Serve the app with
//! [`super::server::serve`].

use std::net::SocketAddr;

use axum::{
    Router,
    extract::ws::{Message, WebSocket, WebSocketUpgrade},
    response::Response,
};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use svc_infra::auth::{
    ApiKey, OptionalWsIdentity, RequireWsAnyScope, ScopeSet, WsAuth, WsAuthConfig, WsIdentity,
    ws_optional_router, ws_protected_router, ws_public_router, ws_scopes_router, ws_user_router,
};
use tokio_tungstenite::tungstenite::{
    self, client::IntoClientRequest, http::HeaderValue, protocol::Message as TMessage,
};

use super::{STEP, step};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
pub const OLD_SECRET: &str = "old-secret-0123456789abcdef0123456789abcdef";

pub const RSA1_PRIV: &str = include_str!("keys/rsa1.key.pem");
pub const RSA1_PUB: &str = include_str!("keys/rsa1.pub.pem");
pub const RSA2_PRIV: &str = include_str!("keys/rsa2.key.pem");
pub const RSA2_PUB: &str = include_str!("keys/rsa2.pub.pem");
pub const EC_PRIV: &str = include_str!("keys/ec.key.pem");
pub const EC_PUB: &str = include_str!("keys/ec.pub.pem");
pub const ED_PRIV: &str = include_str!("keys/ed.key.pem");
pub const ED_PUB: &str = include_str!("keys/ed.pub.pem");
pub const JWKS_KEYS: &str = include_str!("keys/jwks_keys.json");

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Standard claims: `sub`, `exp` in an hour, plus `extra` merged in.
pub fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "exp": now() + 3600, "iat": now()});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

pub fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

pub fn rsa_key(pem: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}

/// A valid HS256 token for `sub` with the given scopes.
pub fn user_token(sub: &str, scopes: &[&str]) -> String {
    hs256(
        SECRET,
        &claims(
            sub,
            json!({"email": format!("{sub}@example.com"), "scopes": scopes}),
        ),
    )
}

pub fn auth_config() -> WsAuthConfig {
    WsAuthConfig::default()
        .with_secret(SECRET)
        .with_api_key(ApiKey::new("svc-admin", "admin-key-0123456789", ["admin"]))
        .with_api_key(ApiKey::new(
            "svc-plain",
            "plain-key-0123456789",
            Vec::<String>::new(),
        ))
}

pub fn auth() -> WsAuth {
    auth_config().build().unwrap()
}

/// After the upgrade: send the principal as JSON, then echo text.
async fn greet_and_echo(mut socket: WebSocket, principal: Value) {
    if socket
        .send(Message::text(principal.to_string()))
        .await
        .is_err()
    {
        return;
    }
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(STEP, socket.recv()).await {
        let reply = match msg {
            Message::Text(t) => Message::Text(t),
            Message::Close(_) => return,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

pub async fn identity_ws(ws: WebSocketUpgrade, WsIdentity(p): WsIdentity) -> Response {
    let v = serde_json::to_value(&p).unwrap();
    ws.on_upgrade(move |s| greet_and_echo(s, v))
}

pub async fn optional_ws(
    ws: WebSocketUpgrade,
    OptionalWsIdentity(p): OptionalWsIdentity,
) -> Response {
    let v = serde_json::to_value(&p).unwrap();
    ws.on_upgrade(move |s| greet_and_echo(s, v))
}

pub async fn public_ws(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |s| greet_and_echo(s, Value::Null))
}

pub struct AdminOrOps;
impl ScopeSet for AdminOrOps {
    const SCOPES: &'static [&'static str] = &["admin", "ops"];
}

pub struct NoScopes;
impl ScopeSet for NoScopes {
    const SCOPES: &'static [&'static str] = &[];
}

pub async fn any_ws(ws: WebSocketUpgrade, p: RequireWsAnyScope<AdminOrOps>) -> Response {
    let v = serde_json::to_value(&p.principal).unwrap();
    ws.on_upgrade(move |s| greet_and_echo(s, v))
}

pub async fn any_none_ws(ws: WebSocketUpgrade, p: RequireWsAnyScope<NoScopes>) -> Response {
    let v = serde_json::to_value(&p.principal).unwrap();
    ws.on_upgrade(move |s| greet_and_echo(s, v))
}

/// The demo's routes, built with the factories.
pub fn app(auth: WsAuth) -> Router {
    Router::new()
        .merge(ws_public_router("/public").ws("/ws", public_ws))
        .merge(ws_protected_router("/protected", auth.clone()).ws("/ws", identity_ws))
        .merge(ws_user_router("/user", auth.clone()).ws("/ws", identity_ws))
        .merge(ws_scopes_router("/scoped", auth.clone(), ["admin"]).ws("/ws", identity_ws))
        .merge(
            ws_protected_router("/any", auth.clone())
                .ws("/ws", any_ws)
                .ws("/none", any_none_ws),
        )
        .merge(ws_optional_router("/optional", auth).ws("/ws", optional_ws))
}

/// What the handshake gave.
#[derive(Debug)]
pub enum Outcome {
    /// Upgraded: the first message (the principal JSON), the selected protocol, and the socket.
    Open {
        hello: Value,
        protocol: Option<String>,
    },
    /// Refused with an HTTP status and body.
    Refused { status: u16, body: Value },
    /// The client library failed the handshake for another reason.
    ClientError(String),
}

impl Outcome {
    pub fn hello(&self) -> &Value {
        match self {
            Self::Open { hello, .. } => hello,
            other => panic!("expected an open connection, got {other:?}"),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Refused { status, .. } => *status,
            Self::Open { .. } => 101,
            Self::ClientError(e) => panic!("client error: {e}"),
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Self::Refused { body, .. } => body["reason"].as_str().unwrap_or_default().to_owned(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// Connects to `ws://addr{path_and_query}` with extra headers; on success reads the first
/// message, checks that echo works, and closes.
pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Outcome {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match step(tokio_tungstenite::connect_async(req)).await {
        Ok((mut ws, resp)) => {
            let protocol = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            let first = step(ws.next()).await.expect("stream ended").unwrap();
            let hello: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
            step(ws.send(TMessage::text("ping"))).await.unwrap();
            let echo = step(ws.next()).await.expect("stream ended").unwrap();
            assert_eq!(echo.to_text().unwrap(), "ping");
            let _ = step(ws.close(None)).await;
            Outcome::Open { hello, protocol }
        }
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            Outcome::Refused { status, body }
        }
        Err(e) => Outcome::ClientError(e.to_string()),
    }
}

/// Asserts a 401/403 refusal with the JSON body shape and the given reason.
pub fn assert_refused(outcome: &Outcome, status: u16, reason: &str) {
    match outcome {
        Outcome::Refused { status: s, body } => {
            assert_eq!(*s, status, "body: {body}");
            assert_eq!(body["reason"], reason, "body: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty(), "body: {body}");
        }
        other => panic!("expected HTTP {status} {reason:?}, got {other:?}"),
    }
}
