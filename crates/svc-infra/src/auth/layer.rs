//! [`WsAuthLayer`]: authenticates before the handler runs, and echoes the `bearer`
//! subprotocol in the 101 response.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{HeaderValue, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    principal::WsPrincipal,
    ws_auth::{AuthPolicy, WsAuth},
};

/// The principal the layer found (`None`: anonymous, on an optional route), stored in the
/// request extensions for the extractors.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated(pub(crate) Option<WsPrincipal>);

/// A tower layer that authenticates every request under an [`AuthPolicy`] **before** the
/// inner service (the handler, and so before any WebSocket upgrade):
///
/// - on failure it answers 401/403 (or 503 when JWKS keys are unavailable) with the JSON body
///   of [`WsAuthRejection`](super::WsAuthRejection), and the handler never runs;
/// - on success it stores the principal (and the [`WsAuth`]) in the request extensions, where
///   [`WsIdentity`](super::WsIdentity) and the other extractors find it;
/// - when the client offered a `bearer, <jwt>` subprotocol pair and the handler's response is
///   `101 Switching Protocols` without a `Sec-WebSocket-Protocol` header, it adds one
///   selecting the client's `bearer` item (spelled as offered), so browsers accept the
///   handshake. This holds even when a `?token=` or header token won the precedence: the
///   browser offered the protocol and fails the handshake unless one is selected. A handler that selects a protocol itself
///   (e.g. with axum's `WebSocketUpgrade::protocols`) keeps its choice.
///
/// The `ws_*_router` factories apply it for you; use it directly with
/// `Router::route_layer(auth.layer(policy))`.
#[derive(Debug, Clone)]
pub struct WsAuthLayer {
    auth: WsAuth,
    policy: AuthPolicy,
}

impl WsAuth {
    /// The layer enforcing `policy` with this authenticator.
    pub fn layer(&self, policy: AuthPolicy) -> WsAuthLayer {
        WsAuthLayer {
            auth: self.clone(),
            policy,
        }
    }
}

impl<S> Layer<S> for WsAuthLayer {
    type Service = WsAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WsAuthService {
            inner,
            auth: self.auth.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The service made by [`WsAuthLayer`].
#[derive(Debug, Clone)]
pub struct WsAuthService<S> {
    inner: S,
    auth: WsAuth,
    policy: AuthPolicy,
}

impl<S> Service<Request<Body>> for WsAuthService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The clone that was driven to readiness is the one we call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let outcome = match auth
                .authenticate_inner(req.uri().query(), req.headers(), &policy)
                .await
            {
                Ok(o) => o,
                Err(rejection) => {
                    let rejection = rejection.refused(req.uri(), req.extensions());
                    return Ok(rejection.into_response());
                }
            };
            req.extensions_mut()
                .insert(Authenticated(outcome.principal));
            req.extensions_mut().insert(auth);
            let mut resp = inner.call(req).await?;
            if let Some(proto) = outcome.bearer_protocol
                && resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && !resp.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL)
                && let Ok(value) = HeaderValue::from_str(&proto)
            {
                resp.headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
            Ok(resp.into_response())
        })
    }
}
