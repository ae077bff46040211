//! WebSocket authentication: JWTs from the query, a header or a subprotocol, scopes, API keys,
//! and the five `ws_*_router` factories (feature `auth`).
//!
//! | Seed (Python, `svc_infra.api.fastapi.dx`) | Rust |
//! |---|---|
//! | `WSPrincipal` | [`WsPrincipal`] |
//! | `WSIdentity`, `RequireWSIdentity` | [`WsIdentity`] (extractor), [`AuthPolicy::required`] |
//! | `OptionalWSIdentity`, `AllowWSIdentity` | [`OptionalWsIdentity`], [`AuthPolicy::optional`] |
//! | `RequireWSScopes(*s)` | [`RequireWsScopes<T>`](RequireWsScopes), [`AuthPolicy::all_scopes`] |
//! | `RequireWSAnyScope(*s)` | [`RequireWsAnyScope<T>`](RequireWsAnyScope), [`AuthPolicy::any_scope`] |
//! | `ws_public_router`, `ws_protected_router`, `ws_user_router`, `ws_scopes_router`, `ws_optional_router` | [`ws_public_router`], [`ws_protected_router`], [`ws_user_router`], [`ws_scopes_router`], [`ws_optional_router`] |
//!
//! # Quick start
//!
//! ```no_run
//! use axum::{Router, extract::ws::{Message, WebSocketUpgrade}, response::Response};
//! use svc_infra::auth::{WsAuth, WsIdentity, ws_protected_router};
//!
//! async fn secure_ws(ws: WebSocketUpgrade, WsIdentity(user): WsIdentity) -> Response {
//!     // user.id, user.email, user.scopes come from the JWT (or the API key)
//!     ws.on_upgrade(move |mut socket| async move {
//!         let _ = socket.send(Message::text(format!("hello {}", user.id))).await;
//!     })
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // AUTH_JWT__SECRET etc.; fails at startup in production when no key is set.
//! let auth = WsAuth::from_env()?;
//! let app: Router = Router::new()
//!     .merge(ws_protected_router("/api", auth.clone()).ws("/ws", secure_ws));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! `/api/ws` and `/api/ws/` both answer. A request without valid credentials never reaches
//! `secure_ws`: it gets `401 {"error":"unauthorized","reason":"Missing or invalid authentication"}`
//! before any upgrade.
//!
//! # Passing the token: the three forms
//!
//! The first form found wins, in this order, and a bad token is never "rescued" by a later one:
//!
//! 1. **Query parameter** (simple, works everywhere; mind that URLs end up in logs):
//!    ```js
//!    new WebSocket("wss://api.example.com/api/ws?token=" + jwt)
//!    ```
//! 2. **`Authorization` header** (non-browser clients; the scheme is case-insensitive):
//!    ```text
//!    Authorization: Bearer eyJ...
//!    ```
//! 3. **Subprotocol** (browsers, which cannot set headers; keeps the token out of URLs):
//!    ```js
//!    const ws = new WebSocket("wss://api.example.com/api/ws", ["bearer", jwt]);
//!    ws.onopen = () => console.log(ws.protocol); // "bearer"
//!    ```
//!    The handshake response **selects `bearer`** (`Sec-WebSocket-Protocol: bearer`), which
//!    browsers require when they offered protocols. The routers' [`WsAuthLayer`] does this for
//!    any handler; on a plain route without the layer, select it yourself with
//!    `ws.protocols(["bearer"])`.
//!
//! API keys (services, not browsers) go in the `X-API-Key` header or the `?api_key=` query
//! parameter; they are used only when no JWT is present.
//!
//! # Which router accepts what
//!
//! | Factory | No credentials | JWT | API key | Scopes |
//! |---|---|---|---|---|
//! | [`ws_public_router`] | allowed | not checked | not checked | – |
//! | [`ws_protected_router`] | 401 | required valid | accepted | – |
//! | [`ws_user_router`] | 401 | required valid | 401 | – |
//! | [`ws_scopes_router`] | 401 | required valid | accepted | all listed, else 403 |
//! | [`ws_optional_router`] | allowed (anonymous) | must be valid | must be valid | – |
//!
//! Rejections ([`WsAuthRejection`]): 401 `"Missing or invalid authentication"`,
//! `"Token expired"`, `"Invalid token: …"` or `"Invalid API key"`; 403 `"Insufficient scope"`;
//! 503 `"Signing keys unavailable"` when a JWKS URL has never answered. Tokens over
//! [`max_token_bytes`](WsAuthConfig::max_token_bytes) (8 KiB) or with characters outside the
//! JWT alphabet are refused before any parsing.
//!
//! # Verification
//!
//! HS256/384/512 with a secret (plus old secrets for rotation), RS*/PS*/ES256/ES384/EdDSA with a
//! PEM public key or keys from a JWKS URL (cached, refetched on an unknown `kid`, rate-limited,
//! bounded). `sub` (a non-empty string) and `exp` are required; `nbf` and `iat` are honoured;
//! `aud`/`iss` are checked when configured; the leeway is configurable (default 0). Each key is
//! bound to its algorithm family, so `alg: none` and HS256-signed-with-the-RSA-public-key are
//! impossible by construction. See [`WsAuthConfig::from_env`] for the environment variables.
//!
//! # Scopes with extractors
//!
//! ```
//! use axum::{extract::ws::WebSocketUpgrade, response::Response};
//! use svc_infra::auth::{RequireWsAnyScope, ScopeSet};
//!
//! struct AdminOrOps;
//! impl ScopeSet for AdminOrOps {
//!     const SCOPES: &'static [&'static str] = &["admin", "ops"];
//! }
//!
//! async fn ops_ws(ws: WebSocketUpgrade, who: RequireWsAnyScope<AdminOrOps>) -> Response {
//!     let id = who.id.clone();
//!     ws.on_upgrade(move |_socket| async move { let _ = id; })
//! }
//! ```

mod api_key;
mod config;
mod error;
mod extract;
mod extractors;
mod jwks;
mod jwt;
mod keys;
mod layer;
mod principal;
mod rejection;
mod router;
mod verifier;
mod ws_auth;

pub use api_key::{ApiKey, ApiKeyParseError};
pub use config::{WsAuthConfig, is_production_like};
pub use error::AuthConfigError;
pub use extract::{API_KEY_HEADER, API_KEY_QUERY, TOKEN_QUERY};
pub use extractors::{
    OptionalWsIdentity, RequireWsAnyScope, RequireWsScopes, ScopeSet, WsIdentity,
};
pub use keys::{JwtAlgorithm, UnknownAlgorithm};
pub use layer::{WsAuthLayer, WsAuthService};
pub use principal::{TokenSource, WsPrincipal};
pub use rejection::{
    AuthNotConfigured, InsufficientScope, InvalidApiKey, InvalidToken, KeysUnavailable,
    MissingCredentials, TokenExpired, WsAuthRejection,
};
pub use router::{
    WsRouter, ws_optional_router, ws_protected_router, ws_public_router, ws_scopes_router,
    ws_user_router,
};
pub use ws_auth::{AuthPolicy, WsAuth};
