//! The plain HTTP routes: `POST /api/publish`, `GET /health`, `GET /ws/stats`, `GET /metrics`,
//! the demo page and the JavaScript client.

use std::sync::OnceLock;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{Html, IntoResponse, Response},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Gateway, protocol::outgoing};
use crate::{
    auth::{AuthPolicy, TokenSource},
    websocket::{PublishOptions, WebSocketError, backplane::BackplaneStatus},
};

/// The buckets of every `_seconds` histogram: 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The statuses `POST /api/publish` answers with (`svc_ws_http_publishes_total{status}`).
pub(super) const PUBLISH_STATUSES: &[&str] =
    &["200", "400", "401", "403", "408", "413", "500", "503"];

/// The handle of the process-wide Prometheus recorder, installed by the first gateway that
/// asks for it; `None` when another recorder was installed first.
///
/// `metrics` has one global recorder per process, so every gateway of a process (tests start
/// several) shares it and its counters.
pub(super) fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .and_then(|b| b.install_recorder())
                .inspect_err(|e| tracing::warn!("no /metrics: {e}"))
                .ok()
        })
        .clone()
}

/// `GET /`: the demo page: connect, join a room, chat, watch presence and the counters.
pub(super) async fn demo() -> Html<&'static str> {
    Html(include_str!("demo.html"))
}

/// The JavaScript client (`clients/js/svc-ws.js`), served at `GET /client.js`.
const CLIENT_JS: &str = include_str!("../../../../clients/js/svc-ws.js");
/// Its TypeScript declarations (`clients/js/svc-ws.d.ts`), served at `GET /client.d.ts`.
const CLIENT_TYPES: &str = include_str!("../../../../clients/js/svc-ws.d.ts");

/// FNV-1a of a file's bytes, at compile time: its `ETag`, which changes with the file.
const fn fnv1a(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const CLIENT_JS_TAG: u64 = fnv1a(CLIENT_JS);
const CLIENT_TYPES_TAG: u64 = fnv1a(CLIENT_TYPES);

/// `GET /client.js`: the JavaScript client, an ES module (`import { connect } from
/// "/client.js"`).
pub(super) async fn client_js(headers: HeaderMap) -> Response {
    static_file(
        &headers,
        CLIENT_JS,
        CLIENT_JS_TAG,
        "text/javascript; charset=utf-8",
    )
}

/// `GET /client.d.ts`: the client's TypeScript declarations.
pub(super) async fn client_types(headers: HeaderMap) -> Response {
    static_file(
        &headers,
        CLIENT_TYPES,
        CLIENT_TYPES_TAG,
        "application/typescript; charset=utf-8",
    )
}

/// A file built into the binary. `Cache-Control: no-cache` with an `ETag`: a browser asks
/// again each time and gets a 304 while the file is the same, so a page never runs a client
/// older than its gateway (the file changes with the gateway's version). Any origin may load
/// it (`Access-Control-Allow-Origin: *`, which a module script from another origin needs):
/// it is public code and carries no credentials.
fn static_file(
    request: &HeaderMap,
    body: &'static str,
    tag: u64,
    content_type: &'static str,
) -> Response {
    let etag = format!("\"{tag:016x}\"");
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let h = response.headers_mut();
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, value);
    }
    response
}

/// How `/health` and `/ws/stats` name a backplane's state.
fn backplane_state(status: Option<BackplaneStatus>) -> &'static str {
    match status {
        None => "none",
        Some(BackplaneStatus::Connected) => "connected",
        Some(_) => "disconnected",
    }
}

/// `GET /health`: `ok`, or `degraded` when a configured backplane is not connected. Always
/// 200: a node without Redis still serves its own users.
pub(super) async fn health(State(gw): State<Gateway>) -> Json<Value> {
    let backplane = backplane_state(gw.inner.manager.backplane_status());
    let degraded = gw.inner.backplane && backplane != "connected";
    Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "backplane": backplane,
        "connections": gw.inner.manager.local_connection_count(),
    }))
}

/// `GET /health/live`: 200 while the process serves HTTP at all.
pub(super) async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// `GET /health/ready`: 200 `{"ready": true}` when the gateway takes new connections; 503
/// `{"ready": false, "reason": …}` once it is shutting down (or, if so configured, while its
/// backplane is disconnected).
pub(super) async fn ready(State(gw): State<Gateway>) -> Response {
    match gw.is_ready() {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

/// `GET /ws/stats`: the manager's counters, this node's and the cluster's connections, and
/// the nodes: this one with its backplane's state, then the others it hears from.
pub(super) async fn stats(State(gw): State<Gateway>) -> Json<Value> {
    let m = &gw.inner.manager;
    let s = m.stats();
    let this = json!({
        "node": format!("{:016x}", m.node_id()),
        "connections": m.local_connection_count(),
        "backplane": backplane_state(m.backplane_status()),
        "last_seen_ms": 0,
    });
    let others = m.cluster_nodes().into_iter().map(|n| {
        json!({
            "node": format!("{:016x}", n.id),
            "connections": n.connections,
            // Heard from within three of its heartbeats: its backplane reaches ours.
            "backplane": "connected",
            "last_seen_ms": n.last_seen.as_millis() as u64,
        })
    });
    let nodes: Vec<Value> = std::iter::once(this).chain(others).collect();
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
        "nodes": nodes,
    }))
}

/// `GET /metrics`: Prometheus text (the gauges sampled now), or 404 without a recorder.
pub(super) async fn metrics(State(gw): State<Gateway>) -> Response {
    match &gw.inner.metrics {
        Some(handle) => {
            gw.inner.manager.update_gauges();
            (
                [("content-type", "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// The body of `POST /api/publish`: `{"to": user}` or `{"room": room}` or neither
/// (everyone), with `"data"` and optionally `"exclude"` (a user).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    to: Option<String>,
    room: Option<String>,
    exclude: Option<String>,
    data: Value,
}

/// Why `POST /api/publish` refused a request. Each answers
/// `{"error": <kind>, "reason": <text>}` with its status.
#[derive(Debug)]
enum PublishRejection {
    /// 401: no credentials, or bad ones.
    Unauthorized,
    /// 403: a JWT without the admin scope.
    Forbidden { admin_scope: String },
    /// 400: a malformed body, an unknown field, both `to` and `room`, or a message the
    /// manager refused.
    BadRequest(String),
    /// 413: a message larger than `WS_MAX_MESSAGE_SIZE`; nothing was sent.
    TooLarge(String),
    /// 408: the body did not arrive within `WS_HANDSHAKE_TIMEOUT` (a slow-body attack).
    Timeout,
    /// 503: a room with history whose store (Redis) cannot be reached; nothing was sent.
    Unavailable(String),
}

impl IntoResponse for PublishRejection {
    /// The answer, logged at debug ("POST /api/publish refused", with `status` and `reason`).
    fn into_response(self) -> Response {
        let (status, error, reason) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or invalid authentication".to_owned(),
            ),
            Self::Forbidden { admin_scope } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("Insufficient scope: needs `{admin_scope}` or an API key"),
            ),
            Self::BadRequest(reason) => (StatusCode::BAD_REQUEST, "bad_request", reason),
            Self::TooLarge(reason) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", reason),
            Self::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "The request body did not arrive in time".to_owned(),
            ),
            Self::Unavailable(reason) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason),
        };
        tracing::debug!(
            status = status.as_u16(),
            reason,
            "POST /api/publish refused"
        );
        (status, Json(json!({"error": error, "reason": reason}))).into_response()
    }
}

/// `POST /api/publish`: other services push to a user, a room or everyone. An API key, or a
/// JWT with the admin scope. Answers `{"delivered": n}`, this node's connections reached;
/// for a room with history `{"offset": n, "epoch": e}`, the publication's position.
/// Counted in `svc_ws_http_publishes_total{status}`, timed in
/// `svc_ws_http_publish_duration_seconds`.
pub(super) async fn publish(
    State(gw): State<Gateway>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let response = publish_inner(gw, uri, headers, body).await;
    let status = response.status().as_str().to_owned();
    metrics::counter!("svc_ws_http_publishes_total", "status" => status).increment(1);
    metrics::histogram!("svc_ws_http_publish_duration_seconds").record(started.elapsed());
    response
}

async fn publish_inner(gw: Gateway, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let principal = match gw
        .inner
        .auth
        .authenticate(uri.query(), &headers, &AuthPolicy::required())
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => return PublishRejection::Unauthorized.into_response(),
        Err(rejection) => {
            // The body's reason: never a credential.
            tracing::debug!(
                status = rejection.status().as_u16(),
                reason = rejection.reason(),
                "POST /api/publish refused"
            );
            return rejection.into_response();
        }
    };
    let admin_scope = gw.inner.admin_scope.as_str();
    if principal.via != TokenSource::ApiKey && !principal.scopes.iter().any(|s| s == admin_scope) {
        return PublishRejection::Forbidden {
            admin_scope: admin_scope.to_owned(),
        }
        .into_response();
    }
    // The body has as long as the headers had (`serve` bounds those): a client that sends
    // it a byte at a time does not hold the request open. Its size is bounded by the
    // largest message plus the JSON around it.
    let config = gw.inner.manager.config();
    let limit = config
        .max_message_size
        .saturating_mul(2)
        .saturating_add(64 * 1024);
    let body =
        match tokio::time::timeout(config.handshake_timeout, axum::body::to_bytes(body, limit))
            .await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                return PublishRejection::TooLarge(format!("request body: {e}")).into_response();
            }
            Err(_) => return PublishRejection::Timeout.into_response(),
        };
    let body: PublishBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return PublishRejection::BadRequest(e.to_string()).into_response(),
    };
    let m = &gw.inner.manager;
    let from = principal.id.as_str();
    let exclude = body.exclude.as_deref();
    let sent = match (&body.to, &body.room) {
        (Some(_), Some(_)) => {
            let why = "give `to` or `room`, not both".to_owned();
            return PublishRejection::BadRequest(why).into_response();
        }
        (Some(to), None) if m.keeps_history(&super::protocol::user_stream(to)) => {
            return match super::protocol::send(m, from, to, body.data).await {
                Ok(position) => {
                    let position = position.unwrap_or_default();
                    Json(json!({"offset": position.offset, "epoch": position.epoch}))
                        .into_response()
                }
                Err(e @ WebSocketError::MessageTooLarge { .. }) => {
                    PublishRejection::TooLarge(e.to_string()).into_response()
                }
                Err(e @ WebSocketError::History(_)) => {
                    PublishRejection::Unavailable(e.to_string()).into_response()
                }
                Err(e) => PublishRejection::BadRequest(e.to_string()).into_response(),
            };
        }
        (Some(to), None) => m.send_to_user(to, outgoing(from, None, body.data)).await,
        (None, Some(room)) if m.keeps_history(room) => {
            // A room with history: the publication's position is the answer (delivery
            // happens on every node as the store hands it out).
            let mut options = PublishOptions::default().embed_position();
            options.exclude_user = body.exclude.clone();
            let out = outgoing(from, Some(room), body.data);
            return match m.publish(room, out, options).await {
                Ok(position) => {
                    let position = position.unwrap_or_default();
                    tracing::debug!(from, room, offset = position.offset, "POST /api/publish");
                    Json(json!({"offset": position.offset, "epoch": position.epoch}))
                        .into_response()
                }
                Err(e @ WebSocketError::MessageTooLarge { .. }) => {
                    PublishRejection::TooLarge(e.to_string()).into_response()
                }
                Err(e @ WebSocketError::History(_)) => {
                    PublishRejection::Unavailable(e.to_string()).into_response()
                }
                Err(e) => PublishRejection::BadRequest(e.to_string()).into_response(),
            };
        }
        (None, Some(room)) => {
            let out = outgoing(from, Some(room), body.data);
            match exclude {
                Some(user) => m.broadcast_to_room_excluding(room, out, user).await,
                None => m.broadcast_to_room(room, out).await,
            }
        }
        (None, None) => {
            let out = outgoing(from, None, body.data);
            match exclude {
                Some(user) => m.broadcast_excluding(out, user).await,
                None => m.broadcast(out).await,
            }
        }
    };
    match sent {
        Ok(n) => {
            tracing::debug!(
                from,
                via = ?principal.via,
                to = body.to.as_deref(),
                room = body.room.as_deref(),
                delivered = n,
                "POST /api/publish"
            );
            Json(json!({"delivered": n})).into_response()
        }
        Err(e @ WebSocketError::MessageTooLarge { .. }) => {
            PublishRejection::TooLarge(e.to_string()).into_response()
        }
        Err(e) => PublishRejection::BadRequest(e.to_string()).into_response(),
    }
}
