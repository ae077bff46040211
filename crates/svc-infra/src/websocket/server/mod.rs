//! The server side: our own RFC 6455 framing on top of axum's HTTP upgrade, the
//! [`ConnectionManager`], and the axum integration.

pub mod backplane;
mod clock;
mod flush;
mod integration;
mod manager;
mod outbound;
mod socket;
mod upgrade;

pub use integration::{
    ManagerNotInstalled, WsManager, add_websocket_manager, add_websocket_manager_with,
    get_ws_manager,
};
pub use manager::{
    Connection, ConnectionHooks, ConnectionManager, IntoMessage, Json, ManagerStats, Metadata,
    PreparedMessage, easy_websocket_manager,
};
pub use outbound::SlowConsumerPolicy;
pub use socket::WebSocket;
pub use upgrade::{WsUpgrade, WsUpgradeRejection};
