//! The server side: our own RFC 6455 framing on top of axum's HTTP upgrade, the
//! [`ConnectionManager`], and the axum integration.

pub mod backplane;
mod budget;
mod builder;
mod clock;
mod cluster;
mod connection;
mod flush;
pub mod history;
mod hooks;
mod integration;
mod io;
mod keepalive;
mod listener;
mod manager;
mod message;
pub mod metrics;
mod outbound;
mod recovery;
mod registry;
mod serve;
mod shutdown;
mod socket;
mod stats;
#[cfg(feature = "tls")]
mod tls;
mod upgrade;

pub use builder::ManagerBuilder;
/// Microseconds on the process's monotonic clock (for the gateway's rate limiter).
#[cfg(feature = "gateway")]
pub(crate) use clock::now_us;
pub use cluster::ClusterNode;
pub use connection::Connection;
pub use hooks::ConnectionHooks;
pub use integration::{
    ManagerNotInstalled, WsManager, add_websocket_manager, add_websocket_manager_with,
    get_ws_manager,
};
pub use listener::{LISTEN_BACKLOG, bind};
pub use manager::{ConnectionManager, easy_websocket_manager};
pub use message::{IntoMessage, Json, PreparedMessage};
pub use outbound::SlowConsumerPolicy;
pub use recovery::{PublishOptions, Recovery};
pub use registry::Metadata;
pub use serve::{Serve, serve};
pub use socket::WebSocket;
pub use stats::ManagerStats;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::ServerTls;
pub use upgrade::{WsUpgrade, WsUpgradeRejection};
