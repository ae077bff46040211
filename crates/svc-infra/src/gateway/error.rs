//! [`GatewayError`]: why a gateway could not be configured, built or served.

use crate::{
    auth::AuthConfigError,
    websocket::{ConfigError, WebSocketError},
};

/// Why a [`Gateway`](super::Gateway) could not be configured, built or served. Configuration
/// errors come at startup, never while serving a request.
///
/// The message says which part failed; the cause is in [`source`](std::error::Error::source)
/// (`anyhow` prints both).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A WebSocket setting (`WS_*`) is not allowed.
    ///
    /// *What to do:* fix the variable or field the cause names.
    #[error("WS_* configuration")]
    WebSocket(#[source] ConfigError),

    /// The authentication settings (`AUTH_JWT_*`, `WS_API_KEYS`) are invalid, or no JWT key is
    /// configured in a production-like environment.
    ///
    /// *What to do:* fix the variable the cause names (see `docs/auth.md`).
    #[error("AUTH_JWT_* configuration")]
    Auth(#[source] AuthConfigError),

    /// `REDIS_URL` is not a Redis URL this build can use. (A Redis server that is down is not
    /// an error: the gateway serves its own users and reports `degraded` until it is back.)
    ///
    /// *What to do:* fix the URL; the cause says what is wrong with it.
    #[error("REDIS_URL")]
    Redis(#[source] WebSocketError),

    /// A gateway setting has a value that is not allowed: the crate's one
    /// [`ConfigError`], naming the variable or field (e.g. `WS_GATEWAY_ANONYMOUS`).
    ///
    /// *What to do:* fix the named variable or field; the message says what is accepted.
    #[error(transparent)]
    Invalid(#[from] ConfigError),

    /// Serving failed: the listener could not accept connections.
    ///
    /// *What to do:* the listener is unusable; report the cause and bind a new one.
    #[error("serve")]
    Serve(#[source] std::io::Error),
}
