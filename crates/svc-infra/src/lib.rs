//! # svc-infra: production WebSocket infrastructure
//!
//! The Rust port of svc-infra's `svc_infra.websocket` module: an outbound
//! [`WebSocketClient`](websocket::WebSocketClient) with auto-reconnect, a server-side
//! [`ConnectionManager`](websocket::ConnectionManager) with rooms and broadcast on axum,
//! JWT authentication for WebSocket routes, and `WS_*` environment configuration.
//!
//! | Feature | Default | What it adds |
//! |---|---|---|
//! | `client` | yes | [`websocket::WebSocketClient`], [`websocket::websocket_connect`] (the library's protocol core with permessage-deflate, rustls) |
//! | `server` | yes | [`websocket::ConnectionManager`] and the axum integration |
//! | `auth` | yes | [`auth`]: JWT / API-key authentication and the `ws_*_router` factories |
//! | `tls` | no | [`websocket::ServerTls`] for [`websocket::Serve::tls`]: `https://` and `wss://` from a PEM certificate chain and key, reloadable while serving (rustls); enables `server` |
//! | `redis` | no | The Redis pub/sub backplane for multi-instance deployments |
//! | `gateway` | no | [`gateway`]: the gateway of `svc-ws serve` (`/ws` with a JSON protocol, `POST /api/publish`, `/health`, `/ws/stats`, `/metrics`, a demo page) as an axum `Router` or `serve(listener, shutdown)`; enables `server`, `auth`, `redis` |
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod websocket;

#[cfg(feature = "auth")]
#[cfg_attr(docsrs, doc(cfg(feature = "auth")))]
pub mod auth;

#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub mod gateway;

#[doc(hidden)]
pub mod fuzzing;
