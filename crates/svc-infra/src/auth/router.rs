//! The five router factories and [`WsRouter`].

use axum::{
    Router,
    handler::Handler,
    routing::{MethodRouter, get},
};

use super::ws_auth::{AuthPolicy, WsAuth};

/// A group of WebSocket routes under a prefix, all guarded by the same policy. Made by the
/// `ws_*_router` factories; add routes with [`route`](Self::route) or [`ws`](Self::ws), then
/// merge it into your app (`Router::merge` takes it directly, or call
/// [`into_router`](Self::into_router)).
///
/// Every route answers both with and without a trailing slash (`/api/ws` and `/api/ws/`), as
/// the Python `DualAPIRouter` does. The guard is applied with `route_layer`, so unknown paths
/// still get 404, not 401.
#[derive(Debug)]
#[must_use = "merge the WsRouter into your app's Router"]
pub struct WsRouter<S = ()> {
    prefix: String,
    router: Router<S>,
    guard: Option<(WsAuth, AuthPolicy)>,
}

impl<S> WsRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn new(prefix: &str, guard: Option<(WsAuth, AuthPolicy)>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            router: Router::new(),
            guard,
        }
    }

    /// Adds `method_router` at `prefix + path` and `prefix + path + "/"`.
    ///
    /// # Panics
    ///
    /// Like [`Router::route`], on an invalid path or one that is already routed.
    pub fn route(mut self, path: &str, method_router: MethodRouter<S>) -> Self {
        let (primary, alternate) = paths(&self.prefix, path);
        self.router = self.router.route(&primary, method_router.clone());
        if let Some(alternate) = alternate {
            self.router = self.router.route(&alternate, method_router);
        }
        self
    }

    /// Shorthand for `route(path, get(handler))`: a WebSocket endpoint.
    ///
    /// # Panics
    ///
    /// As [`route`](Self::route).
    pub fn ws<H, T>(self, path: &str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.route(path, get(handler))
    }

    /// The finished router, guard applied.
    pub fn into_router(self) -> Router<S> {
        match self.guard {
            Some((auth, policy)) => self.router.route_layer(auth.layer(policy)),
            None => self.router,
        }
    }
}

impl<S> From<WsRouter<S>> for Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn from(r: WsRouter<S>) -> Self {
        r.into_router()
    }
}

/// `(primary, alternate)`: the joined path without a trailing slash (`/` for the root), and
/// the same with one (none for the root).
fn paths(prefix: &str, path: &str) -> (String, Option<String>) {
    let mut joined = String::new();
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty() {
        if !prefix.starts_with('/') {
            joined.push('/');
        }
        joined.push_str(prefix);
    }
    if !path.starts_with('/') {
        joined.push('/');
    }
    joined.push_str(path);
    let primary = joined.trim_end_matches('/');
    if primary.is_empty() {
        ("/".to_owned(), None)
    } else {
        (primary.to_owned(), Some(format!("{primary}/")))
    }
}

/// Routes with no authentication (the seed's `ws_public_router`).
///
/// ```
/// use axum::{Router, extract::ws::WebSocketUpgrade, response::Response};
/// use svc_infra::auth::ws_public_router;
///
/// async fn events(ws: WebSocketUpgrade) -> Response {
///     ws.on_upgrade(|_socket| async {})
/// }
/// let app: Router = Router::new().merge(ws_public_router("/realtime").ws("/events", events));
/// ```
pub fn ws_public_router<S>(prefix: &str) -> WsRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    WsRouter::new(prefix, None)
}

/// Routes that require a valid JWT **or API key** (the seed's `ws_protected_router`).
/// Missing or bad credentials get 401 before the handler runs.
pub fn ws_protected_router<S>(prefix: &str, auth: WsAuth) -> WsRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    WsRouter::new(prefix, Some((auth, AuthPolicy::required())))
}

/// Routes that require a valid **JWT**; API keys are refused with 401 (the seed's
/// `ws_user_router`, "JWT only").
pub fn ws_user_router<S>(prefix: &str, auth: WsAuth) -> WsRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    WsRouter::new(prefix, Some((auth, AuthPolicy::jwt_only())))
}

/// Routes that require credentials holding **every** one of `scopes` (the seed's
/// `ws_scopes_router(*scopes)`): 401 without valid credentials, 403 `"Insufficient scope"`
/// without the scopes. API keys count with their configured scopes. With no scopes it is
/// [`ws_protected_router`].
pub fn ws_scopes_router<S, I, T>(prefix: &str, auth: WsAuth, scopes: I) -> WsRouter<S>
where
    S: Clone + Send + Sync + 'static,
    I: IntoIterator<Item = T>,
    T: Into<String>,
{
    WsRouter::new(prefix, Some((auth, AuthPolicy::all_scopes(scopes))))
}

/// Routes where authentication is optional (the seed's `ws_optional_router`): anonymous
/// callers get in (the handler sees `OptionalWsIdentity(None)`), present credentials must be
/// valid (401 otherwise).
pub fn ws_optional_router<S>(prefix: &str, auth: WsAuth) -> WsRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    WsRouter::new(prefix, Some((auth, AuthPolicy::optional())))
}

#[cfg(test)]
mod tests {
    use super::paths;

    #[test]
    fn path_joining() {
        assert_eq!(
            paths("/api", "/ws"),
            ("/api/ws".into(), Some("/api/ws/".into()))
        );
        assert_eq!(
            paths("/api/", "ws/"),
            ("/api/ws".into(), Some("/api/ws/".into()))
        );
        assert_eq!(paths("", "/ws"), ("/ws".into(), Some("/ws/".into())));
        assert_eq!(paths("api", "/"), ("/api".into(), Some("/api/".into())));
        assert_eq!(paths("", "/"), ("/".into(), None));
        assert_eq!(paths("/", ""), ("/".into(), None));
    }
}
