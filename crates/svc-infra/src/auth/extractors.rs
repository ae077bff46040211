//! The axum extractors: [`WsIdentity`], [`OptionalWsIdentity`], [`RequireWsScopes`],
//! [`RequireWsAnyScope`].
//!
//! Each first looks for the principal a [`WsAuthLayer`](super::WsAuthLayer) (or a `ws_*_router`
//! factory) stored in the request extensions, so a request is verified once. On a plain route
//! without the layer they authenticate by themselves with the [`WsAuth`] found in the request
//! extensions (`Router::layer(axum::Extension(auth))`); without either they answer 500
//! ([`AuthNotConfigured`]). Rejections happen before the handler runs, so before any upgrade.
//!
//! On a plain route nothing echoes the `bearer` subprotocol: use the layer (or the
//! factories), or select `"bearer"` in the handler (`WebSocketUpgrade::protocols(["bearer"])`).

use std::{marker::PhantomData, ops::Deref};

use axum::{extract::FromRequestParts, http::request::Parts};

use super::{
    layer::Authenticated,
    principal::WsPrincipal,
    rejection::{AuthNotConfigured, InsufficientScope, MissingCredentials, WsAuthRejection},
    ws_auth::{AuthPolicy, WsAuth},
};

async fn resolve(
    parts: &mut Parts,
    policy: &AuthPolicy,
) -> Result<Option<WsPrincipal>, WsAuthRejection> {
    if let Some(Authenticated(p)) = parts.extensions.get::<Authenticated>() {
        return Ok(p.clone());
    }
    let auth = parts
        .extensions
        .get::<WsAuth>()
        .cloned()
        .ok_or(AuthNotConfigured)?;
    let principal = auth
        .authenticate(parts.uri.query(), &parts.headers, policy)
        .await?;
    parts.extensions.insert(Authenticated(principal.clone()));
    Ok(principal)
}

async fn required(parts: &mut Parts) -> Result<WsPrincipal, WsAuthRejection> {
    resolve(parts, &AuthPolicy::optional())
        .await?
        .ok_or_else(|| MissingCredentials.into())
}

/// The authenticated caller; rejects with 401 when there is none (the seed's `WSIdentity`).
///
/// Accepts a JWT (query, header or subprotocol) or, on routes that allow them, an API key.
///
/// ```
/// use axum::{extract::ws::WebSocketUpgrade, response::Response};
/// use svc_infra::auth::WsIdentity;
///
/// async fn handler(ws: WebSocketUpgrade, WsIdentity(user): WsIdentity) -> Response {
///     ws.on_upgrade(move |_socket| async move {
///         tracing::info!(user = %user.id, "connected");
///     })
/// }
/// ```
#[derive(Debug, Clone)]
pub struct WsIdentity(pub WsPrincipal);

impl Deref for WsIdentity {
    type Target = WsPrincipal;
    fn deref(&self) -> &WsPrincipal {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsIdentity {
    type Rejection = WsAuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        required(parts)
            .await
            .map(Self)
            .map_err(|r| r.refused(&parts.uri, &parts.extensions))
    }
}

/// The caller if there is one, `None` for anonymous callers (the seed's `OptionalWSIdentity`).
/// Present but invalid or expired credentials are still rejected with 401.
#[derive(Debug, Clone)]
pub struct OptionalWsIdentity(pub Option<WsPrincipal>);

impl<S: Send + Sync> FromRequestParts<S> for OptionalWsIdentity {
    type Rejection = WsAuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        resolve(parts, &AuthPolicy::optional())
            .await
            .map(Self)
            .map_err(|r| r.refused(&parts.uri, &parts.extensions))
    }
}

/// A named, fixed set of scopes for [`RequireWsScopes`] and [`RequireWsAnyScope`].
///
/// ```
/// use svc_infra::auth::ScopeSet;
///
/// struct AdminOrOps;
/// impl ScopeSet for AdminOrOps {
///     const SCOPES: &'static [&'static str] = &["admin", "ops"];
/// }
/// ```
pub trait ScopeSet: Send + Sync + 'static {
    /// The scopes.
    const SCOPES: &'static [&'static str];
}

/// The caller, who must hold **every** scope of `T` (the seed's `RequireWSScopes`): 401 when
/// unauthenticated, 403 `"Insufficient scope"` otherwise. An empty set always passes.
///
/// ```
/// use axum::{extract::ws::WebSocketUpgrade, response::Response};
/// use svc_infra::auth::{RequireWsScopes, ScopeSet};
///
/// struct Admin;
/// impl ScopeSet for Admin {
///     const SCOPES: &'static [&'static str] = &["admin"];
/// }
///
/// async fn admin_ws(ws: WebSocketUpgrade, admin: RequireWsScopes<Admin>) -> Response {
///     let id = admin.id.clone();
///     ws.on_upgrade(move |_socket| async move { let _ = id; })
/// }
/// ```
#[derive(Debug, Clone)]
pub struct RequireWsScopes<T: ScopeSet> {
    /// The authenticated caller.
    pub principal: WsPrincipal,
    _scopes: PhantomData<fn() -> T>,
}

impl<T: ScopeSet> RequireWsScopes<T> {
    /// The principal.
    pub fn into_inner(self) -> WsPrincipal {
        self.principal
    }
}

impl<T: ScopeSet> Deref for RequireWsScopes<T> {
    type Target = WsPrincipal;
    fn deref(&self) -> &WsPrincipal {
        &self.principal
    }
}

impl<S: Send + Sync, T: ScopeSet> FromRequestParts<S> for RequireWsScopes<T> {
    type Rejection = WsAuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = required(parts)
            .await
            .map_err(|r| r.refused(&parts.uri, &parts.extensions))?;
        if !principal.has_all_scopes(T::SCOPES) {
            let rejection = WsAuthRejection::from(InsufficientScope);
            return Err(rejection.refused(&parts.uri, &parts.extensions));
        }
        Ok(Self {
            principal,
            _scopes: PhantomData,
        })
    }
}

/// The caller, who must hold **at least one** scope of `T` (the seed's `RequireWSAnyScope`):
/// 401 when unauthenticated, 403 `"Insufficient scope"` otherwise. An empty set always
/// rejects, as in the Python code.
#[derive(Debug, Clone)]
pub struct RequireWsAnyScope<T: ScopeSet> {
    /// The authenticated caller.
    pub principal: WsPrincipal,
    _scopes: PhantomData<fn() -> T>,
}

impl<T: ScopeSet> RequireWsAnyScope<T> {
    /// The principal.
    pub fn into_inner(self) -> WsPrincipal {
        self.principal
    }
}

impl<T: ScopeSet> Deref for RequireWsAnyScope<T> {
    type Target = WsPrincipal;
    fn deref(&self) -> &WsPrincipal {
        &self.principal
    }
}

impl<S: Send + Sync, T: ScopeSet> FromRequestParts<S> for RequireWsAnyScope<T> {
    type Rejection = WsAuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = required(parts)
            .await
            .map_err(|r| r.refused(&parts.uri, &parts.extensions))?;
        if !principal.has_any_scope(T::SCOPES) {
            let rejection = WsAuthRejection::from(InsufficientScope);
            return Err(rejection.refused(&parts.uri, &parts.extensions));
        }
        Ok(Self {
            principal,
            _scopes: PhantomData,
        })
    }
}
