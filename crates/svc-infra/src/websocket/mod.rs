//! `svc_infra::websocket`: every name of the seed's "Module Exports" list.
//!
//! | Seed (Python) | Rust |
//! |---|---|
//! | `WebSocketConfig`, `get_default_config` | [`WebSocketConfig`], [`get_default_config`] |
//! | `ConnectionState`, `WebSocketMessage`, `ConnectionInfo` | [`ConnectionState`], [`WebSocketMessage`], [`ConnectionInfo`] |
//! | `WebSocketError` and its subclasses | [`WebSocketError`] and its variants |
//! | `WebSocketClient` | [`WebSocketClient`] (+ [`ClientBuilder`], [`WebSocketSender`], [`RootCertificate`]); feature `client` |
//! | `websocket_connect` | [`websocket_connect`] (a `Stream` of clients, [`Reconnect`]); feature `client` |
//! | `easy_websocket_client` | [`easy_websocket_client`]; feature `client` |

#[cfg(feature = "client")]
mod client;
mod config;
mod error;
mod models;
#[cfg(feature = "client")]
mod reconnect;

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use client::{
    ClientBuilder, RootCertificate, WebSocketClient, WebSocketSender, easy_websocket_client,
};
pub use config::{ConfigError, WebSocketConfig, get_default_config};
pub use error::{BoxError, Result, WebSocketError};
pub use models::{ConnectionInfo, ConnectionState, WebSocketMessage};
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use reconnect::{Reconnect, websocket_connect};
