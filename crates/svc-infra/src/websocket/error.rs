//! [`WebSocketError`], the one error type of the WebSocket module.

use std::{error::Error as StdError, time::Duration};

use super::config::ConfigError;

/// A boxed error cause, kept so that `source()` chains stay intact.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with [`WebSocketError`] as the default error.
pub type Result<T, E = WebSocketError> = std::result::Result<T, E>;

/// Everything that can go wrong with a WebSocket connection.
///
/// The seed's exception classes are variants here: `ConnectionClosedError` is
/// [`ConnectionClosed`](Self::ConnectionClosed), `ConnectionFailedError` is
/// [`ConnectionFailed`](Self::ConnectionFailed), `AuthenticationError` is
/// [`Authentication`](Self::Authentication) and `MessageTooLargeError` is
/// [`MessageTooLarge`](Self::MessageTooLarge). Each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebSocketError {
    /// The connection is closed: the peer sent a close frame (its code and reason are here,
    /// exactly as received), we closed it (code 1000 unless another was asked for), or it
    /// dropped without a close frame (1006, reason empty).
    ///
    /// Displays as `Connection closed: 4001 bye`.
    ///
    /// *What to do:* the connection is gone; reconnect if [`is_retryable`](Self::is_retryable)
    /// says so (`websocket_connect` does it for you), otherwise report `code`/`reason`.
    #[error("{}", closed_message(*.code, .reason))]
    ConnectionClosed {
        /// The close code (1000 normal, 1001 going away, 1006 abnormal, 1009 too big, …).
        code: u16,
        /// The close reason, possibly empty.
        reason: String,
    },

    /// The connection could not be established: DNS, TCP, TLS, timeout or a handshake
    /// rejected with a status other than 401/403.
    ///
    /// *What to do:* retry later (see [`is_retryable`](Self::is_retryable)), or fix the URL
    /// or TLS settings if the cause says so.
    #[error("Failed to connect to {url}: {source}")]
    ConnectionFailed {
        /// The URL we tried to reach.
        url: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },

    /// The server refused the handshake with HTTP 401 or 403.
    ///
    /// *What to do:* do not retry with the same credentials; refresh the token or fix the
    /// scopes. `body` holds what the server said (e.g. `{"error":..,"reason":..}`).
    #[error("WebSocket authentication failed: HTTP {status}{}", body_suffix(.body))]
    Authentication {
        /// 401 or 403.
        status: u16,
        /// The response body, possibly empty (truncated to 1 KiB).
        body: String,
    },

    /// A message is larger than `max_message_size`. Outgoing: nothing was sent and the
    /// connection is still usable. Incoming: the connection was closed with 1009.
    ///
    /// *What to do:* raise `max_message_size` on both sides, or split the payload.
    #[error("Message of {size} bytes exceeds max_message_size of {limit} bytes")]
    MessageTooLarge {
        /// The message size in bytes (for incoming messages, at least this much).
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The operation needs a connection and there is none yet.
    ///
    /// *What to do:* call `connect()` first.
    #[error("Not connected")]
    NotConnected,

    /// A configuration value is not allowed.
    ///
    /// *What to do:* fix the named variable; the message says what is accepted.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// An operation did not finish in time (open, close, or a pong after a ping).
    ///
    /// *What to do:* the peer or the network is slow or gone; retry or reconnect.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being waited for, e.g. `"opening handshake"`.
        operation: &'static str,
        /// The limit that expired.
        after: Duration,
    },

    /// The peer broke the WebSocket protocol (bad frame, invalid UTF-8 in a text message,
    /// wrong handshake headers, an unoffered subprotocol).
    ///
    /// *What to do:* nothing to retry on our side; the peer is misbehaving. The connection
    /// was closed with 1002 or 1007.
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),

    /// A message was not the JSON we were asked to parse, or a value could not be encoded.
    ///
    /// *What to do:* the connection is still open; skip the message or report it.
    #[error("Invalid JSON: {0}")]
    Json(#[source] BoxError),

    /// An I/O error on an established connection.
    ///
    /// *What to do:* treat the connection as lost and reconnect.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn closed_message(code: u16, reason: &str) -> String {
    format!("Connection closed: {code} {reason}")
        .trim()
        .to_owned()
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl WebSocketError {
    /// Shorthand for [`ConnectionClosed`](Self::ConnectionClosed).
    pub fn closed(code: u16, reason: impl Into<String>) -> Self {
        Self::ConnectionClosed {
            code,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`ConnectionFailed`](Self::ConnectionFailed).
    pub fn failed(url: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::ConnectionFailed {
            url: url.into(),
            source: source.into(),
        }
    }

    /// The close code, for [`ConnectionClosed`](Self::ConnectionClosed).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::ConnectionClosed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether reconnecting may help: network failures, timeouts, HTTP 5xx at the handshake,
    /// and abnormal closes (1001, 1006, 1011, 1012, 1013, 1014). Never authentication
    /// failures, configuration errors, or a normal close.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ConnectionFailed { .. } | Self::Timeout { .. } | Self::Io(_) => true,
            Self::ConnectionClosed { code, .. } => {
                matches!(code, 1001 | 1006 | 1011 | 1012 | 1013 | 1014)
            }
            _ => false,
        }
    }
}

impl From<serde_json::Error> for WebSocketError {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_displays_like_the_python_one() {
        assert_eq!(
            WebSocketError::closed(4001, "bye").to_string(),
            "Connection closed: 4001 bye"
        );
        assert_eq!(
            WebSocketError::closed(1006, "").to_string(),
            "Connection closed: 1006"
        );
    }

    #[test]
    fn retryable_classification() {
        assert!(WebSocketError::closed(1006, "").is_retryable());
        assert!(WebSocketError::closed(1011, "keepalive ping timeout").is_retryable());
        assert!(!WebSocketError::closed(1000, "").is_retryable());
        assert!(!WebSocketError::closed(4001, "bye").is_retryable());
        assert!(
            !WebSocketError::Authentication {
                status: 403,
                body: String::new()
            }
            .is_retryable()
        );
        assert!(WebSocketError::failed("ws://x", "refused").is_retryable());
    }

    #[test]
    fn authentication_display() {
        let e = WebSocketError::Authentication {
            status: 401,
            body: r#"{"error":"unauthorized"}"#.into(),
        };
        assert_eq!(
            e.to_string(),
            r#"WebSocket authentication failed: HTTP 401: {"error":"unauthorized"}"#
        );
    }
}
