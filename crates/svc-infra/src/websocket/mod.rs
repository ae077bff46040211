//! `svc_infra::websocket`: every name of the seed's "Module Exports" list.
//!
//! | Seed (Python) | Rust |
//! |---|---|
//! | `WebSocketConfig`, `get_default_config` | [`WebSocketConfig`], [`get_default_config`] |
//! | `ConnectionState`, `WebSocketMessage`, `ConnectionInfo` | [`ConnectionState`], [`WebSocketMessage`], [`ConnectionInfo`] |
//! | `WebSocketError` and its subclasses | [`WebSocketError`] and its variants |
//! | `ConnectionManager`, `easy_websocket_manager` | `ConnectionManager`, `easy_websocket_manager` (feature `server`) |
//! | `add_websocket_manager`, `get_ws_manager` | `add_websocket_manager` (returns router and manager), the `WsManager` extractor and `get_ws_manager` (feature `server`) |

mod config;
mod error;
mod models;
#[cfg(feature = "server")]
mod server;

pub use config::{ConfigError, WebSocketConfig, get_default_config};
pub use error::{BoxError, Result, WebSocketError};
pub use models::{ConnectionInfo, ConnectionState, WebSocketMessage};
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use server::{
    Connection, ConnectionHooks, ConnectionManager, IntoMessage, Json, ManagerNotInstalled,
    ManagerStats, Metadata, PreparedMessage, SlowConsumerPolicy, WebSocket, WsManager, WsUpgrade,
    WsUpgradeRejection, add_websocket_manager, add_websocket_manager_with, easy_websocket_manager,
    get_ws_manager,
};
