//! `svc_infra::websocket`: every name of the seed's "Module Exports" list.
//!
//! | Seed (Python) | Rust |
//! |---|---|
//! | `WebSocketConfig`, `get_default_config` | [`WebSocketConfig`], [`get_default_config`] |
//! | `ConnectionState`, `WebSocketMessage`, `ConnectionInfo` | [`ConnectionState`], [`WebSocketMessage`], [`ConnectionInfo`] |
//! | `WebSocketError` and its subclasses | [`WebSocketError`] and its variants ([`ConnectFailure`]: why a connect failed; [`ConfigError`]: a bad setting) |
//! | `WebSocketClient` | [`WebSocketClient`] (+ [`ClientBuilder`], [`WebSocketSender`], [`RootCertificate`]); feature `client` |
//! | `websocket_connect` | [`websocket_connect`] (a `Stream` of clients, [`Reconnect`]); feature `client` |
//! | `easy_websocket_client` | [`easy_websocket_client`]; feature `client` |
//! | `ConnectionManager`, `easy_websocket_manager` | `ConnectionManager`, `easy_websocket_manager` (feature `server`) |
//! | `add_websocket_manager`, `get_ws_manager` | `add_websocket_manager` (returns router and manager), the `WsManager` extractor and `get_ws_manager` (feature `server`) |
//! | Redis scaling ("planned" in the seed) | `backplane` (`InMemoryBackplane`; `RedisBackplane` with feature `redis`) and `ManagerBuilder::backplane` |

mod backoff;
#[cfg(feature = "client")]
mod client;
mod config;
mod error;
#[cfg(feature = "client")]
mod gateway_client;
mod models;
pub mod protocol;
#[cfg(feature = "client")]
mod reconnect;
mod redact;
#[cfg(feature = "server")]
mod server;

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use client::{
    ClientBuilder, RootCertificate, WebSocketClient, WebSocketSender, easy_websocket_client,
};
#[cfg(feature = "client")]
pub(crate) use client::{
    Connected, FrameReader, ProxySetting, ReadError, Target, TlsRoots, frame_message,
    violation_error,
};
pub use config::{Compression, ConfigError, WebSocketConfig, get_default_config};
pub use error::{BoxError, ConnectFailure, Result, WebSocketError};
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use gateway_client::{GatewayClient, GatewayClientStats, GatewayEvent};
pub use models::{ConnectionInfo, ConnectionState, StreamPosition, WebSocketMessage};
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use reconnect::{Reconnect, websocket_connect};
pub use redact::redact_url;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use server::ServerTls;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use server::backplane;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use server::history::{self, HistoryConfig, HistoryLimits};
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use server::metrics;
#[cfg(feature = "gateway")]
pub(crate) use server::now_us;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use server::{
    ClusterNode, Connection, ConnectionHooks, ConnectionManager, IntoMessage, Json, LISTEN_BACKLOG,
    ManagerBuilder, ManagerNotInstalled, ManagerStats, Metadata, PreparedMessage, PublishOptions,
    Recovery, Serve, SlowConsumerPolicy, WebSocket, WsManager, WsUpgrade, WsUpgradeRejection,
    add_websocket_manager, add_websocket_manager_with, bind, easy_websocket_manager,
    get_ws_manager, serve,
};
