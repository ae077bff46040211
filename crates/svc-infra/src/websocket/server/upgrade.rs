//! [`WsUpgrade`]: the axum extractor that turns an HTTP/1.1 upgrade request into a
//! [`WebSocket`] running on our own framing.

use std::net::SocketAddr;

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header, request::Parts},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{Instrument as _, field};

use super::{
    io::{Reader, Writer},
    manager::{ConnectionManager, Refused},
    outbound::SlowConsumerPolicy,
    socket::WebSocket,
};
use crate::websocket::{
    Compression, WebSocketConfig,
    protocol::deflate::{self, ServerPolicy},
};

/// Extractor for a WebSocket upgrade request, answered with [`WsUpgrade::on_upgrade`].
///
/// Limits (`max_message_size`, `max_queue_size`, `close_timeout`) come from the
/// [`ConnectionManager`] installed with
/// [`add_websocket_manager`](crate::websocket::add_websocket_manager) if there is one,
/// otherwise from [`WebSocketConfig::default`]; [`config`](Self::config) overrides them.
///
/// ```no_run
/// use axum::{Router, routing::get, response::Response};
/// use svc_infra::websocket::WsUpgrade;
///
/// async fn echo(ws: WsUpgrade) -> Response {
///     ws.on_upgrade(|mut socket| async move {
///         while let Some(Ok(msg)) = socket.recv().await {
///             if socket.send(msg).is_err() {
///                 break;
///             }
///         }
///     })
/// }
/// let app: Router = Router::new().route("/echo", get(echo));
/// ```
pub struct WsUpgrade {
    key: HeaderValue,
    offered: Vec<String>,
    selected: Option<String>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    policy: SlowConsumerPolicy,
    /// The request's `Origin` header, checked against `config.allowed_origins`.
    origin: Option<HeaderValue>,
    /// The installed manager, whose admission limits are checked before the upgrade.
    manager: Option<ConnectionManager>,
    /// The user the connection will be registered for, if the handler said
    /// ([`for_user`](Self::for_user)).
    user: Option<String>,
    /// When the request was extracted (`svc_ws_handshake_duration_seconds`).
    started: std::time::Instant,
    /// The peer's address, when the server put it in the request (`ConnectInfo`), for logs.
    peer: Option<SocketAddr>,
    /// The request's `Sec-WebSocket-Extensions` values (permessage-deflate offers).
    extensions: Vec<HeaderValue>,
}

/// The offered subprotocols show with the item after a `bearer` one (a token: the
/// `["bearer", jwt]` form of authentication) hidden.
impl std::fmt::Debug for WsUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let offered: Vec<&str> = self
            .offered
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let after_bearer = i > 0 && self.offered[i - 1].eq_ignore_ascii_case("bearer");
                if after_bearer {
                    "<redacted>"
                } else {
                    p.as_str()
                }
            })
            .collect();
        f.debug_struct("WsUpgrade")
            .field("offered", &offered)
            .field("selected", &self.selected)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl WsUpgrade {
    /// The subprotocols the client offered, in its order.
    pub fn offered_protocols(&self) -> &[String] {
        &self.offered
    }

    /// Selects the first of `supported` that the client offered (its name goes in the
    /// `Sec-WebSocket-Protocol` response header). Browsers fail the handshake when they
    /// offered protocols and none is selected.
    pub fn protocols<I, P>(mut self, supported: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.selected = supported.into_iter().find_map(|p| {
            let p = p.as_ref();
            self.offered
                .iter()
                .find(|o| o.eq_ignore_ascii_case(p))
                .cloned()
        });
        self
    }

    /// Replaces the limits for this connection.
    pub fn config(mut self, config: WebSocketConfig) -> Self {
        self.config = config;
        self
    }

    /// Names the user this connection will be registered for, so that the per-user limit
    /// (`WS_MAX_CONNECTIONS_PER_USER`) is checked before the upgrade and answered with HTTP
    /// 429, rather than after it with a close (1008). Registration enforces the limit either
    /// way.
    pub fn for_user(mut self, user_id: impl Into<String>) -> Self {
        self.user = Some(user_id.into());
        self
    }

    /// Sets the largest message accepted from or sent to this client.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// Answers the request with `101 Switching Protocols` and runs `callback` with the
    /// socket once the client has it (counted in `svc_ws_upgrades_accepted_total`, timed in
    /// `svc_ws_handshake_duration_seconds` from the extraction of the request). Nothing
    /// runs, and the request is answered instead (counted in
    /// `svc_ws_upgrades_refused_total{reason}`), when:
    /// - its `Origin` is not one of the configuration's
    ///   [`allowed_origins`](WebSocketConfig::allowed_origins): HTTP 403 (`origin`);
    /// - the installed manager is at `WS_MAX_CONNECTIONS` (`node_full`) or shutting down
    ///   (`shutting_down`): HTTP 503 with `Retry-After`;
    /// - the user named by [`for_user`](Self::for_user) is at `WS_MAX_CONNECTIONS_PER_USER`
    ///   (`user_full`): HTTP 429 with `Retry-After`.
    ///
    /// Logs: a refusal writes one debug line, "websocket upgrade refused". With debug on, the
    /// upgrade and `callback` run in a span `connection` (fields `peer`, and `conn_id` and
    /// `user` once [`ConnectionManager::connect`] registers the socket), so every line
    /// written in the connection's task names it; with debug off there is no span and no
    /// cost.
    #[must_use = "the returned response completes the handshake"]
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            key,
            selected,
            on_upgrade,
            config,
            policy,
            origin,
            manager,
            user,
            started,
            peer,
            extensions,
            ..
        } = self;
        // A header that is not text cannot be any allowed origin.
        let origin = origin.as_ref().map(|v| v.to_str().unwrap_or("\0"));
        if !config.allows_origin(origin) {
            return WsUpgradeRejection::OriginNotAllowed.refused(user.as_deref(), origin, peer);
        }
        if let Some(Err(why)) = manager.map(|m| m.admits(user.as_deref())) {
            return WsUpgradeRejection::from(why).refused(user.as_deref(), None, peer);
        }
        let protocol = selected.clone();
        let deflate = (config.compression != Compression::Off)
            .then(|| {
                let policy = ServerPolicy {
                    no_context_takeover: config.compression == Compression::Shared,
                    client_max_window_bits: config.compression_window_bits,
                };
                deflate::negotiate(extensions.iter().filter_map(|v| v.to_str().ok()), policy)
            })
            .flatten();
        let (deflate, extension_response) = deflate.unzip();
        // At debug only: with debug off the tasks carry no span at all.
        let span = tracing::debug_span!(
            "connection",
            peer = peer.map(field::display),
            conn_id = field::Empty,
            user = field::Empty,
        );
        let upgrade = {
            let span = span.clone();
            async move {
                let upgraded = match tokio::time::timeout(config.open_timeout, on_upgrade).await {
                    Ok(Ok(upgraded)) => upgraded,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "websocket upgrade failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("websocket upgrade timed out");
                        return;
                    }
                };
                let (reader, writer, buffered, already_read) = split_upgraded(upgraded);
                let socket = WebSocket::new(
                    reader,
                    writer,
                    buffered,
                    already_read,
                    &config,
                    policy,
                    (protocol, deflate),
                );
                metrics::counter!("svc_ws_upgrades_accepted_total").increment(1);
                metrics::histogram!("svc_ws_handshake_duration_seconds").record(started.elapsed());
                // A task of its own, so that for the life of the connection the task holds
                // only the handler's future, not this one's upgrade state.
                let handler = callback(socket);
                if span.is_disabled() {
                    tokio::spawn(handler);
                } else {
                    tokio::spawn(handler.instrument(span));
                }
            }
        };
        if span.is_disabled() {
            tokio::spawn(upgrade);
        } else {
            tokio::spawn(upgrade.instrument(span));
        }

        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = crate::websocket::protocol::accept_key(key.as_bytes());
        if let Ok(v) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(p) = selected.and_then(|p| HeaderValue::from_str(&p).ok()) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        if let Some(e) = extension_response.and_then(|e| HeaderValue::from_str(&e).ok()) {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, e);
        }
        response
    }
}

/// Splits the upgraded connection. A plain TCP stream (what `axum::serve` gives) splits
/// without a lock; anything else (TLS, tests) goes through `tokio::io::split`, and is
/// flushed after writes (`buffered`: a TLS stream keeps the records the socket did not take
/// until it is flushed), as a TCP stream need not be. Bytes the client sent after its
/// request come back as the last element for TCP; `Upgraded` replays them itself otherwise.
fn split_upgraded(upgraded: hyper::upgrade::Upgraded) -> (Reader, Writer, bool, Bytes) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = parts.io.into_inner();
            let _ = tcp.set_nodelay(true);

            // Bytes the client sent after its request: copied, so that they do not keep
            // hyper's whole read buffer alive for the life of the connection.
            let early = if parts.read_buf.is_empty() {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(&parts.read_buf)
            };
            (Reader::Tcp, Writer::Tcp(tcp), false, early)
        }
        Err(upgraded) => {
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            (Reader::boxed(r), Writer::boxed(w), true, Bytes::new())
        }
    }
}

/// Why a request could not be upgraded (HTTP 400 or 426, with a short text body).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WsUpgradeRejection {
    /// Not a `GET` request.
    MethodNotGet,
    /// Not HTTP/1.1.
    InvalidHttpVersion,
    /// `Connection` does not contain `upgrade`.
    InvalidConnectionHeader,
    /// `Upgrade` is not `websocket`.
    InvalidUpgradeHeader,
    /// `Sec-WebSocket-Version` is not `13`.
    InvalidWebSocketVersion,
    /// `Sec-WebSocket-Key` is missing.
    MissingWebSocketKey,
    /// The connection cannot be upgraded (not served by hyper, or already taken).
    ConnectionNotUpgradable,
    /// The request's `Origin` is not allowed (`WS_ALLOWED_ORIGINS`): HTTP 403.
    OriginNotAllowed,
    /// The node holds `WS_MAX_CONNECTIONS` already: HTTP 503 with `Retry-After`.
    ServerFull,
    /// The user holds `WS_MAX_CONNECTIONS_PER_USER` already: HTTP 429 with `Retry-After`.
    TooManyConnectionsForUser,
    /// The server is shutting down: HTTP 503 with `Retry-After`.
    ShuttingDown,
}

/// Seconds a client refused for a limit is asked to wait (`Retry-After`).
const RETRY_AFTER_SECS: &str = "5";

impl From<Refused> for WsUpgradeRejection {
    fn from(why: Refused) -> Self {
        match why {
            Refused::ShuttingDown => Self::ShuttingDown,
            Refused::NodeFull => Self::ServerFull,
            Refused::UserFull => Self::TooManyConnectionsForUser,
        }
    }
}

impl std::fmt::Display for WsUpgradeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MethodNotGet => "Request method must be `GET`",
            Self::InvalidHttpVersion => "HTTP version not supported",
            Self::InvalidConnectionHeader => "Connection header did not include 'upgrade'",
            Self::InvalidUpgradeHeader => "`Upgrade` header did not include 'websocket'",
            Self::InvalidWebSocketVersion => "`Sec-WebSocket-Version` header did not include '13'",
            Self::MissingWebSocketKey => "`Sec-WebSocket-Key` header missing",
            Self::ConnectionNotUpgradable => "WebSocket request couldn't be upgraded",
            Self::OriginNotAllowed => "Origin not allowed",
            Self::ServerFull => "Server full: too many connections, try again later",
            Self::TooManyConnectionsForUser => "Too many connections for this user",
            Self::ShuttingDown => "Server shutting down, try another node",
        })
    }
}

impl std::error::Error for WsUpgradeRejection {}

impl WsUpgradeRejection {
    /// The `reason` label of `svc_ws_upgrades_refused_total` this refusal counts under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::OriginNotAllowed => "origin",
            Self::ServerFull => "node_full",
            Self::TooManyConnectionsForUser => "user_full",
            Self::ShuttingDown => "shutting_down",
            _ => "bad_request",
        }
    }
}

impl IntoResponse for WsUpgradeRejection {
    /// The answer, counted in `svc_ws_upgrades_refused_total{reason}` and logged at debug
    /// ("websocket upgrade refused", with `status`, `reason` and `kind`, the label).
    fn into_response(self) -> Response {
        self.refused(None, None, None)
    }
}

impl WsUpgradeRejection {
    /// The answer, counted, and logged once at debug with what is known of the request.
    fn refused(
        self,
        user: Option<&str>,
        origin: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Response {
        metrics::counter!("svc_ws_upgrades_refused_total", "reason" => self.reason()).increment(1);
        let response = self.response();
        tracing::debug!(
            status = response.status().as_u16(),
            reason = self.to_string(),
            kind = self.reason(),
            user,
            origin,
            peer = peer.map(field::display),
            "websocket upgrade refused"
        );
        response
    }

    fn response(&self) -> Response {
        let status = match self {
            Self::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::ConnectionNotUpgradable => StatusCode::UPGRADE_REQUIRED,
            Self::InvalidWebSocketVersion => {
                let mut r = (StatusCode::UPGRADE_REQUIRED, self.to_string()).into_response();
                r.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                return r;
            }
            Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::ServerFull | Self::ShuttingDown | Self::TooManyConnectionsForUser => {
                let status = if *self == Self::TooManyConnectionsForUser {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let mut r = (status, self.to_string()).into_response();
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                return r;
            }
            _ => StatusCode::BAD_REQUEST,
        };
        (status, self.to_string()).into_response()
    }
}

fn header_contains(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = WsUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(WsUpgradeRejection::MethodNotGet);
        }
        if parts.version != Version::HTTP_11 {
            return Err(WsUpgradeRejection::InvalidHttpVersion);
        }
        if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(WsUpgradeRejection::InvalidConnectionHeader);
        }
        if !header_contains(&parts.headers, header::UPGRADE, "websocket") {
            return Err(WsUpgradeRejection::InvalidUpgradeHeader);
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(WsUpgradeRejection::InvalidWebSocketVersion);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(WsUpgradeRejection::MissingWebSocketKey)?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(WsUpgradeRejection::ConnectionNotUpgradable)?;
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        let manager = parts.extensions.get::<ConnectionManager>().cloned();
        let (config, policy) = match &manager {
            Some(m) => (m.config().clone(), m.slow_consumer_policy()),
            None => (WebSocketConfig::default(), SlowConsumerPolicy::default()),
        };
        Ok(Self {
            key,
            offered,
            selected: None,
            on_upgrade,
            config,
            policy,
            origin: parts.headers.get(header::ORIGIN).cloned(),
            manager,
            user: None,
            started: std::time::Instant::now(),
            peer: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| *peer),
            extensions: parts
                .headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .cloned()
                .collect(),
        })
    }
}
