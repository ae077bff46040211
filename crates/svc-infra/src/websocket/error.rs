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

    /// The connection could not be established: a bad URL or header, DNS, TCP, TLS, an HTTP
    /// proxy refusing the tunnel, or a handshake answered with a status other than 101 and
    /// 401/403. (A connect that takes longer than `open_timeout` is a
    /// [`Timeout`](Self::Timeout).)
    ///
    /// *What to do:* look at `source` (each [`ConnectFailure`] variant says what to do), or
    /// just ask [`is_retryable`](Self::is_retryable): network trouble and 5xx are worth a
    /// retry later, a bad URL, a TLS failure or another 4xx are not.
    #[error("Failed to connect to {}: {source}", super::redact_url(.url))]
    ConnectionFailed {
        /// The URL we tried to reach (shown by `Display` with its credentials hidden:
        /// [`redact_url`](super::redact_url)).
        url: String,
        /// What went wrong.
        #[source]
        source: ConnectFailure,
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
    /// a compressed message that is not valid deflate data, wrong handshake headers, an
    /// unoffered subprotocol or extension, a permessage-deflate answer RFC 7692 forbids).
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

    /// A room's history could not be written or read (its store, Redis say, cannot be
    /// reached): a publication that fails so was not published at all.
    ///
    /// *What to do:* retry later; nothing was delivered to anyone.
    #[cfg(feature = "server")]
    #[error(transparent)]
    History(#[from] crate::websocket::history::HistoryError),
}

/// Why a connection could not be opened: the `source` of
/// [`WebSocketError::ConnectionFailed`]. Each variant says what the caller should do;
/// [`is_retryable`](Self::is_retryable) sums it up (it is what `websocket_connect` asks).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The URL, a header, a subprotocol or the proxy cannot be used (not `ws://`/`wss://`, no
    /// host, credentials in the URL, a reserved or malformed header, a subprotocol with
    /// spaces, a proxy URL that does not parse or is not `http://`/`https://`, such as
    /// `socks5://`).
    ///
    /// *What to do:* fix the request; retrying the same one cannot help.
    #[error("{0}")]
    InvalidRequest(String),

    /// The server answered the upgrade request with an HTTP status other than 101 (401 and
    /// 403 are [`WebSocketError::Authentication`] instead).
    ///
    /// *What to do:* a 4xx other than 408 and 429 (404, 400, …) will not change by itself:
    /// fix the URL or ask the server's operator; `body` holds what the server said. 5xx, 408,
    /// 429 and anything else (a 2xx or 3xx page from a proxy, say) may: retry later.
    #[error("server answered HTTP {status} {reason} instead of 101 Switching Protocols{}", body_suffix(super::protocol::utf8_prefix(.body, 200)))]
    HttpStatus {
        /// The HTTP status code.
        status: u16,
        /// The reason phrase, possibly empty.
        reason: String,
        /// The response body, possibly empty (truncated to 1 KiB).
        body: String,
        /// The server's `Retry-After` in seconds (what a server at its connection limit
        /// sends with 503 or 429), at most an hour; `websocket_connect` waits at least this
        /// long before its next attempt.
        retry_after: Option<std::time::Duration>,
    },

    /// DNS or TCP failed, or the connection dropped during the TLS or HTTP handshake. When
    /// the failure was on the way to an HTTP proxy (or the proxy closed the connection before
    /// answering `CONNECT`), the message starts with `proxy <its URL, password hidden>:`.
    ///
    /// *What to do:* retry later; the network, the proxy or the server may come back.
    #[error("{0}")]
    Io(#[source] std::io::Error),

    /// TLS failed for a reason a retry cannot fix: no root certificates, a bad server name,
    /// an untrusted or invalid certificate, a TLS protocol error.
    ///
    /// *What to do:* fix the trust roots (`ClientBuilder::root_certificates`, native roots)
    /// or the server's certificate; retrying cannot help.
    #[error("TLS: {0}")]
    Tls(String),

    /// The HTTP proxy answered our `CONNECT` with a status other than 2xx, so no tunnel to
    /// the server was opened: 407 (it wants credentials, or refused ours), 403 (its policy
    /// forbids the destination), 502/503/504 (it could not reach the server), …
    ///
    /// *What to do:* as for [`HttpStatus`](Self::HttpStatus): a 4xx other than 408 and 429
    /// will not change by itself: fix the credentials in the proxy URL, the proxy's rules,
    /// or bypass it (`NO_PROXY`, `ClientBuilder::no_proxy`); a 5xx may: retry later.
    #[error("proxy {proxy} answered CONNECT with HTTP {status} {reason}")]
    ProxyRefused {
        /// The proxy's URL, its password hidden ([`redact_url`](super::redact_url)).
        proxy: String,
        /// The HTTP status code.
        status: u16,
        /// The reason phrase, possibly empty.
        reason: String,
    },
}

impl ConnectFailure {
    /// Whether trying the same request again later may succeed: network errors, and any
    /// HTTP status (from the server or from a proxy) but a 4xx other than 408 (timeout) and
    /// 429 (too many requests). Not a bad request or a TLS failure.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io(_) => true,
            Self::HttpStatus { status, .. } | Self::ProxyRefused { status, .. } => {
                !(400..500).contains(status) || matches!(status, 408 | 429)
            }
            Self::InvalidRequest(_) | Self::Tls(_) => false,
        }
    }
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
    /// How long the server asked us to wait before trying again (`Retry-After` on a refused
    /// handshake), if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::ConnectionFailed {
                source: ConnectFailure::HttpStatus { retry_after, .. },
                ..
            } => *retry_after,
            _ => None,
        }
    }

    /// Shorthand for [`ConnectionClosed`](Self::ConnectionClosed).
    pub fn closed(code: u16, reason: impl Into<String>) -> Self {
        Self::ConnectionClosed {
            code,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`ConnectionFailed`](Self::ConnectionFailed).
    pub fn failed(url: impl Into<String>, source: ConnectFailure) -> Self {
        Self::ConnectionFailed {
            url: url.into(),
            source,
        }
    }

    /// The close code, for [`ConnectionClosed`](Self::ConnectionClosed).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::ConnectionClosed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether reconnecting may help: network failures, timeouts, a handshake (or a proxy's
    /// answer to `CONNECT`) with 5xx (or 408, 429, or another non-4xx status; see
    /// [`ConnectFailure::is_retryable`]), and abnormal closes (1001, 1006, 1011, 1012, 1013,
    /// 1014). Never authentication failures, a bad URL, header or proxy URL, a TLS failure,
    /// another 4xx, configuration errors, or a normal close. `websocket_connect` retries exactly these connect errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ConnectionFailed { source, .. } => source.is_retryable(),
            Self::Timeout { .. } | Self::Io(_) => true,
            #[cfg(feature = "server")]
            Self::History(_) => true,
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
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(WebSocketError::failed("ws://x", ConnectFailure::Io(refused)).is_retryable());
        let bad = ConnectFailure::InvalidRequest("no host".into());
        assert!(!WebSocketError::failed("ws://", bad).is_retryable());
        let tls = ConnectFailure::Tls("invalid peer certificate: UnknownIssuer".into());
        assert!(!WebSocketError::failed("wss://x", tls).is_retryable());
        let proxy = |status| ConnectFailure::ProxyRefused {
            proxy: "http://u:****@proxy:3128".into(),
            status,
            reason: String::new(),
        };
        for (status, retryable) in [(407, false), (403, false), (502, true), (503, true)] {
            assert_eq!(proxy(status).is_retryable(), retryable, "{status}");
        }
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
