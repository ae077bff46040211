//! `svc-ws serve`: the gateway, for teams that do not write Rust.
//!
//! One WebSocket endpoint, `GET /ws`, speaking the small JSON protocol of
//! `docs/protocol.md` (join, leave, publish, send, broadcast, echo, presence; acks and errors),
//! on a `ConnectionManager` configured by `WS_*`, authenticated by `AUTH_JWT_*`, and joined to
//! other gateways by `REDIS_URL` (in memory, a single node, by default). Also
//! `POST /api/publish` (other services push to a user, a room or everyone), `GET /health`,
//! `GET /ws/stats`, `GET /metrics` (Prometheus) and, at `GET /`, a demo page (chat rooms and
//! live stats) for a browser.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, Uri},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{Value, json};
use svc_infra::{
    auth::{
        AuthPolicy, OptionalWsIdentity, TokenSource, WsAuth, WsAuthConfig, is_production_like,
        ws_optional_router, ws_protected_router,
    },
    websocket::{
        Connection, ConnectionManager, WebSocketConfig, WebSocketMessage, WsUpgrade,
        backplane::{BackplaneStatus, RedisBackplane},
    },
};

/// Arguments of `svc-ws serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Configuration comes from the environment: WS_* (limits, keepalive), AUTH_JWT_* (token \
verification; see docs/auth.md) and REDIS_URL (join other gateways; in memory otherwise). \
The protocol of /ws is in docs/protocol.md.")]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    port: u16,
    /// Redis URL of the backplane that joins several gateways into one cluster.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Accept connections without credentials (the user id then comes from `?user=`, else a
    /// random one). The default: only when no JWT key is configured and APP_ENV is not
    /// production-like. A token that is given must be valid either way.
    #[arg(long, env = "WS_GATEWAY_ANONYMOUS")]
    anonymous: Option<bool>,
    /// The scope a user needs for `broadcast`.
    #[arg(long, env = "WS_GATEWAY_BROADCAST_SCOPE", default_value = "broadcast")]
    broadcast_scope: String,
    /// The scope a JWT needs for `POST /api/publish` (API keys need none).
    #[arg(long, env = "WS_GATEWAY_ADMIN_SCOPE", default_value = "admin")]
    admin_scope: String,
}

#[derive(Clone)]
struct Gateway {
    manager: ConnectionManager,
    auth: WsAuth,
    broadcast_scope: Arc<str>,
    admin_scope: Arc<str>,
    backplane: bool,
    metrics: Option<PrometheusHandle>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let config = WebSocketConfig::from_env().context("WS_* configuration")?;
    let auth_config = WsAuthConfig::from_env().context("AUTH_JWT_* configuration")?;
    let production = std::env::var("APP_ENV").is_ok_and(|e| is_production_like(&e));
    let anonymous = args
        .anonymous
        .unwrap_or(!auth_config.has_jwt_keys() && !production);
    let auth = auth_config.build().context("AUTH_JWT_* configuration")?;

    let mut builder = ConnectionManager::builder(config);
    let backplane = args.redis_url.is_some();
    if let Some(url) = &args.redis_url {
        builder = builder.backplane(RedisBackplane::new(url).context("REDIS_URL")?);
    }
    let manager = builder.build();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .inspect_err(|e| tracing::warn!("no /metrics: {e}"))
        .ok();
    let gateway = Gateway {
        manager: manager.clone(),
        auth: auth.clone(),
        broadcast_scope: Arc::from(args.broadcast_scope.as_str()),
        admin_scope: Arc::from(args.admin_scope.as_str()),
        backplane,
        metrics,
    };
    let ws_routes = if anonymous {
        ws_optional_router("", auth).ws("/ws", ws)
    } else {
        ws_protected_router("", auth).ws("/ws", ws)
    };
    let app = Router::new()
        .merge(ws_routes.into_router())
        .route("/", get(demo))
        .route("/api/publish", post(api_publish))
        .route("/health", get(health))
        .route("/ws/stats", get(stats))
        .route("/metrics", get(prometheus))
        .with_state(gateway);

    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("bind {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "svc-ws serve: listening on ws://{addr}/ws ({}, {})",
        if anonymous {
            "anonymous connections allowed"
        } else {
            "credentials required"
        },
        match &args.redis_url {
            Some(_) => "Redis backplane",
            None => "single node, in memory",
        }
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("svc-ws serve: shutting down");
            manager
                .shutdown(1001, "server shutting down", Duration::from_secs(5))
                .await;
        })
        .await
        .context("serve")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return drop(ctrl_c.await),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn health(State(gw): State<Gateway>) -> Json<Value> {
    let backplane = match gw.manager.backplane_status() {
        None => "none",
        Some(BackplaneStatus::Connected) => "connected",
        Some(_) => "disconnected",
    };
    let degraded = gw.backplane && backplane != "connected";
    Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "backplane": backplane,
        "connections": gw.manager.local_connection_count(),
    }))
}

/// The demo page: connect, join a room, chat, watch presence and the counters.
async fn demo() -> Html<&'static str> {
    Html(include_str!("demo.html"))
}

async fn prometheus(State(gw): State<Gateway>) -> Response {
    match &gw.metrics {
        Some(handle) => (
            [("content-type", "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// `POST /api/publish`: `{"to": user}` or `{"room": room}` or neither (everyone), with
/// `"data"` and optionally `"exclude"` (a user). An API key, or a JWT with the admin scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    to: Option<String>,
    room: Option<String>,
    exclude: Option<String>,
    data: Value,
}

async fn api_publish(
    State(gw): State<Gateway>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let principal = match gw
        .auth
        .authenticate(uri.query(), &headers, &AuthPolicy::required())
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            return http_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or invalid authentication",
            );
        }
        Err(rejection) => return rejection.into_response(),
    };
    if principal.via != TokenSource::ApiKey
        && !principal.scopes.iter().any(|s| **s == *gw.admin_scope)
    {
        let reason = format!(
            "Insufficient scope: needs `{}` or an API key",
            gw.admin_scope
        );
        return http_error(StatusCode::FORBIDDEN, "forbidden", &reason);
    }
    let body: PublishBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let m = &gw.manager;
    let from = principal.id.as_str();
    let exclude = body.exclude.as_deref();
    let sent = match (&body.to, &body.room) {
        (Some(_), Some(_)) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give `to` or `room`, not both",
            );
        }
        (Some(to), None) => {
            let out = json!({"type": "message", "from": from, "data": body.data});
            m.send_to_user(to, out.to_string()).await
        }
        (None, Some(room)) => {
            let out = json!({"type": "message", "room": room, "from": from, "data": body.data});
            match exclude {
                Some(user) => {
                    m.broadcast_to_room_excluding(room, out.to_string(), user)
                        .await
                }
                None => m.broadcast_to_room(room, out.to_string()).await,
            }
        }
        (None, None) => {
            let out = json!({"type": "message", "from": from, "data": body.data});
            match exclude {
                Some(user) => m.broadcast_excluding(out.to_string(), user).await,
                None => m.broadcast(out.to_string()).await,
            }
        }
    };
    match sent {
        Ok(n) => Json(json!({"delivered": n})).into_response(),
        Err(e) => http_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    }
}

fn http_error(status: StatusCode, error: &str, reason: &str) -> Response {
    (status, Json(json!({"error": error, "reason": reason}))).into_response()
}

async fn stats(State(gw): State<Gateway>) -> Json<Value> {
    let m = &gw.manager;
    let s = m.stats();
    Json(json!({
        "node": format!("{:016x}", m.node_id()),
        "connections": m.connection_count(),
        "local_connections": m.local_connection_count(),
        "users": m.active_users().len(),
        "rooms": m.room_count(),
        "connects": s.connects,
        "disconnects": s.disconnects,
        "frames_sent": s.frames_sent,
        "dropped": s.dropped,
        "slow_consumer_disconnects": s.slow_consumer_disconnects,
        "keepalive_timeouts": s.keepalive_timeouts,
    }))
}

#[derive(Deserialize)]
struct WsQuery {
    user: Option<String>,
}

async fn ws(
    ws: WsUpgrade,
    OptionalWsIdentity(principal): OptionalWsIdentity,
    Query(query): Query<WsQuery>,
    State(gw): State<Gateway>,
) -> Response {
    let (user, scopes) = match principal {
        Some(p) => (p.id, p.scopes),
        None => {
            let user = query
                .user
                .filter(|u| !u.trim().is_empty() && u.len() <= 128)
                .unwrap_or_else(|| format!("anon-{:08x}", rand::random::<u32>()));
            (user, Vec::new())
        }
    };
    let can_broadcast = scopes.iter().any(|s| **s == *gw.broadcast_scope);
    ws.on_upgrade(move |socket| async move {
        let Ok(conn) = gw.manager.connect(&user, socket).await else {
            return;
        };
        Session {
            gw,
            user,
            can_broadcast,
        }
        .run(conn)
        .await;
    })
    .into_response()
}

/// One request of the `/ws` protocol (docs/protocol.md).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Join {
        room: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Leave {
        room: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Publish {
        room: String,
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    Send {
        to: String,
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    Broadcast {
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    Echo {
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    Presence {
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        id: Option<Value>,
    },
}

struct Session {
    gw: Gateway,
    user: String,
    can_broadcast: bool,
}

impl Session {
    async fn run(self, mut conn: Connection) {
        while let Some(received) = conn.recv().await {
            let Ok(message) = received else { break };
            let reply = self.handle(&message).await;
            if let Some(reply) = reply
                && conn.send(reply.to_string()).is_err()
            {
                break;
            }
        }
    }

    /// What to answer `message` with, if anything.
    async fn handle(&self, message: &WebSocketMessage) -> Option<Value> {
        let Some(text) = message.as_text() else {
            return Some(error(None, "binary messages are not part of the protocol"));
        };
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").cloned());
                return Some(error(id, &format!("bad request: {e}")));
            }
        };
        let m = &self.gw.manager;
        let user = self.user.as_str();
        match request {
            Request::Join { room, id } => {
                if let Err(why) = check_name("room", &room) {
                    return Some(error(id, &why));
                }
                m.join_room(user, &room).await;
                id.map(ack)
            }
            Request::Leave { room, id } => {
                m.leave_room(user, &room).await;
                id.map(ack)
            }
            Request::Publish { room, data, id } => {
                let out = json!({"type": "message", "room": room, "from": user, "data": data});
                match m
                    .broadcast_to_room_excluding(&room, out.to_string(), user)
                    .await
                {
                    Ok(_) => id.map(ack),
                    Err(e) => Some(error(id, &e.to_string())),
                }
            }
            Request::Send { to, data, id } => {
                let out = json!({"type": "message", "from": user, "data": data});
                match m.send_to_user(&to, out.to_string()).await {
                    Ok(_) => id.map(ack),
                    Err(e) => Some(error(id, &e.to_string())),
                }
            }
            Request::Broadcast { data, id } => {
                if !self.can_broadcast {
                    let why = format!("broadcast needs the `{}` scope", self.gw.broadcast_scope);
                    return Some(error(id, &why));
                }
                let out = json!({"type": "message", "from": user, "data": data});
                match m.broadcast(out.to_string()).await {
                    Ok(_) => id.map(ack),
                    Err(e) => Some(error(id, &e.to_string())),
                }
            }
            Request::Echo { data, id } => Some(with_id(json!({"type": "echo", "data": data}), id)),
            Request::Presence { room, id } => {
                let users = match &room {
                    Some(room) => m.get_room_users(room),
                    None => m.active_users(),
                };
                Some(with_id(
                    json!({"type": "presence", "room": room, "users": users}),
                    id,
                ))
            }
        }
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("a {what} name has 1 to 128 bytes"));
    }
    Ok(())
}

fn ack(id: Value) -> Value {
    json!({"type": "ack", "id": id})
}

fn error(id: Option<Value>, why: &str) -> Value {
    with_id(json!({"type": "error", "error": why}), id)
}

fn with_id(mut v: Value, id: Option<Value>) -> Value {
    if let (Some(id), Some(obj)) = (id, v.as_object_mut()) {
        obj.insert("id".to_owned(), id);
    }
    v
}
