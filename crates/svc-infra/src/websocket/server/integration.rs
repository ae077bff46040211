//! axum integration: [`add_websocket_manager`] and the [`WsManager`] extractor.

use axum::{
    Extension, Json, Router,
    extract::FromRequestParts,
    http::{Extensions, StatusCode, request::Parts},
    response::{IntoResponse, Response},
};

use super::manager::ConnectionManager;

/// One-line setup: a new [`ConnectionManager`] with the default configuration, made
/// available to every route of `router` (as the [`WsManager`] extractor, and to
/// [`WsUpgrade`](super::WsUpgrade) for its limits). Returns the router and the manager.
///
/// Call it after adding the routes: like any axum layer, it applies to the routes that
/// exist when it is called. Use [`add_websocket_manager_with`] to bring your own manager
/// (e.g. [`easy_websocket_manager`](super::easy_websocket_manager) for `WS_*` settings).
pub fn add_websocket_manager<S>(router: Router<S>) -> (Router<S>, ConnectionManager)
where
    S: Clone + Send + Sync + 'static,
{
    let manager = ConnectionManager::default();
    (add_websocket_manager_with(router, manager.clone()), manager)
}

/// [`add_websocket_manager`] with a manager you built.
pub fn add_websocket_manager_with<S>(router: Router<S>, manager: ConnectionManager) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(Extension(manager))
}

/// The manager installed by [`add_websocket_manager`], if any.
pub fn get_ws_manager(extensions: &Extensions) -> Result<ConnectionManager, ManagerNotInstalled> {
    extensions
        .get::<ConnectionManager>()
        .cloned()
        .ok_or(ManagerNotInstalled)
}

/// Extractor for the [`ConnectionManager`] installed by [`add_websocket_manager`].
///
/// ```no_run
/// use axum::{Json, Router, routing::get};
/// use serde_json::{Value, json};
/// use svc_infra::websocket::{WsManager, add_websocket_manager};
///
/// async fn ws_stats(WsManager(manager): WsManager) -> Json<Value> {
///     Json(json!({
///         "connections": manager.connection_count(),
///         "users": manager.active_users(),
///         "rooms": manager.room_count(),
///     }))
/// }
/// let (app, _manager) = add_websocket_manager(Router::new().route("/ws/stats", get(ws_stats)));
/// # let _: Router = app;
/// ```
#[derive(Debug, Clone)]
pub struct WsManager(pub ConnectionManager);

impl<S: Send + Sync> FromRequestParts<S> for WsManager {
    type Rejection = ManagerNotInstalled;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        get_ws_manager(&parts.extensions).map(WsManager)
    }
}

/// The route asked for the manager but [`add_websocket_manager`] was not called for it.
/// Answers HTTP 500 with a message that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagerNotInstalled;

impl std::fmt::Display for ManagerNotInstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "WebSocket manager not found. Did you forget to call add_websocket_manager(app)?",
        )
    }
}

impl std::error::Error for ManagerNotInstalled {}

impl IntoResponse for ManagerNotInstalled {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": "internal_error", "reason": self.to_string() })),
        )
            .into_response()
    }
}
