//! `svc_infra::websocket`: every name of the seed's "Module Exports" list.
//!
//! | Seed (Python) | Rust |
//! |---|---|
//! | `WebSocketConfig`, `get_default_config` | [`WebSocketConfig`], [`get_default_config`] |
//! | `ConnectionState`, `WebSocketMessage`, `ConnectionInfo` | [`ConnectionState`], [`WebSocketMessage`], [`ConnectionInfo`] |
//! | `WebSocketError` and its subclasses | [`WebSocketError`] and its variants |

mod config;
mod error;
mod models;

pub use config::{ConfigError, WebSocketConfig, get_default_config};
pub use error::{BoxError, Result, WebSocketError};
pub use models::{ConnectionInfo, ConnectionState, WebSocketMessage};
