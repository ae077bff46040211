//! [`WebSocketClient`]: an outbound WebSocket connection (`ws://` and `wss://`).
//!
//! A client is a handle to a small task (an actor) that owns the socket. The handle receives;
//! [`WebSocketSender`]s (from [`WebSocketClient::sender`], cloneable) send and close from any
//! task, so one task can stream audio up while another reads events down, with no lock held
//! across an `.await`.

mod actor;
mod handshake;
mod proxy;
mod reader;
mod response;
mod transport;

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};

use self::actor::{Command, Shared};
use super::{ConnectionState, Result, WebSocketConfig, WebSocketError, WebSocketMessage, protocol};

pub(crate) use self::{
    actor::CloseOrigin,
    handshake::{Connected, Target, TlsRoots},
    proxy::ProxySetting,
    reader::{FrameReader, ReadError, message as frame_message, violation_error},
};

/// A connected WebSocket client.
///
/// Open one with [`WebSocketClient::builder`] (or [`easy_websocket_client`] for the defaults
/// from `WS_*`), then [`send`](Self::send) and [`recv`](Self::recv), or iterate: the client
/// is a [`Stream`] of messages that ends on a normal close (1000, 1001, 1005, or a close we
/// asked for) and yields one error for any other end (the peer's close code, 1006 for a
/// dropped connection, 1011 for a keepalive timeout, [`MessageTooLarge`], a protocol error).
///
/// ```no_run
/// use futures_util::StreamExt;
/// use svc_infra::websocket::{WebSocketClient, WebSocketConfig};
///
/// # async fn demo(api_key: &str) -> svc_infra::websocket::Result<()> {
/// let mut ws = WebSocketClient::builder("wss://api.openai.com/v1/realtime")
///     .config(WebSocketConfig::default().with_max_message_size(16 * 1024 * 1024))
///     .header("Authorization", format!("Bearer {api_key}"))
///     .subprotocols(["realtime"])
///     .connect()
///     .await?;
/// ws.send_json(&serde_json::json!({"type": "session.update"})).await?;
///
/// // Send from another task while this one reads.
/// let tx = ws.sender();
/// tokio::spawn(async move { tx.send("audio chunk").await });
///
/// while let Some(message) = ws.next().await {
///     println!("received: {}", message?);
/// }
/// # Ok(()) }
/// ```
///
/// Dropping the client and every [`WebSocketSender`] closes the connection with 1000.
///
/// # Compression
///
/// Unless the config says [`Compression::Off`](crate::websocket::Compression::Off)
/// (`WS_COMPRESSION=off`), the client offers permessage-deflate (RFC 7692) as browsers and
/// Python's `websockets` do (`permessage-deflate; client_max_window_bits`). If the server
/// accepts, messages of at least `compression_min_size` bytes go deflated when that makes
/// them smaller, and compressed messages from the server are inflated, their inflated size
/// counting against `max_message_size` as it grows (a decompression bomb fails with
/// [`MessageTooLarge`] having allocated no more than the limit). When the server answers
/// `server_no_context_takeover` and `client_no_context_takeover`, as ours does, the
/// connection keeps no codec state: one compressor and one decompressor per thread serve
/// every connection. A server that keeps its context gets a decompressor of its own per
/// connection (and a compressor, unless it asked for `client_no_context_takeover`),
/// allocated on the first compressed message.
///
/// [`MessageTooLarge`]: WebSocketError::MessageTooLarge
pub struct WebSocketClient {
    sender: WebSocketSender,
    inbound: mpsc::Receiver<WebSocketMessage>,
    url: Arc<str>,
    config: WebSocketConfig,
    subprotocol: Option<String>,
    /// The stream has yielded its end (error or `None`).
    finished: bool,
}

impl fmt::Debug for WebSocketClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketClient")
            .field("url", &self.url)
            .field("state", &self.state())
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

/// The sending half of a [`WebSocketClient`]: cheap to clone, usable from any task.
///
/// Messages from all clones go out in the order the connection task receives them, through a
/// queue of `max_queue_size`; a full queue makes [`send`](Self::send) wait.
#[derive(Clone)]
pub struct WebSocketSender {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    max_message_size: usize,
    close_timeout: Duration,
}

impl fmt::Debug for WebSocketSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketSender")
            .field("state", &self.shared.state())
            .finish_non_exhaustive()
    }
}

/// A trusted root certificate, for servers whose certificate is signed by a private CA
/// (or is self-signed).
#[derive(Clone, PartialEq, Eq)]
pub struct RootCertificate(CertificateDer<'static>);

impl fmt::Debug for RootCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootCertificate({} bytes DER)", self.0.len())
    }
}

impl RootCertificate {
    /// A certificate in DER form. It is checked when a `wss://` connection is opened.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Self {
        Self(CertificateDer::from(der.into()))
    }

    /// Every certificate of a PEM bundle (`-----BEGIN CERTIFICATE-----` sections).
    ///
    /// # Errors
    /// [`WebSocketError::Config`] if the text holds no certificate or a broken section.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Vec<Self>> {
        let certs = CertificateDer::pem_slice_iter(pem.as_ref())
            .map(|c| c.map(Self))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| pem_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(pem_error("no CERTIFICATE section found".to_owned()));
        }
        Ok(certs)
    }
}

fn pem_error(why: String) -> WebSocketError {
    WebSocketError::Config(super::ConfigError::hidden(
        "root certificate (PEM)",
        format!("PEM with at least one CERTIFICATE section ({why})"),
    ))
}

/// Options for opening a [`WebSocketClient`]; made by [`WebSocketClient::builder`].
///
/// Defaults: [`WebSocketConfig::default`] (the `WS_*` variables are **not** read; pass
/// `WebSocketConfig::from_env()?` for that), no extra headers, no subprotocols, the Mozilla
/// (webpki) root certificates and not the system ones, and the HTTP proxy that the
/// standard proxy variables name (below).
///
/// # Proxies
///
/// As curl and Python's `websockets` do, a connection goes through the HTTP proxy that the
/// environment names, unless [`proxy`](Self::proxy) names one or
/// [`no_proxy`](Self::no_proxy) turns proxies off (either overrides the environment). The
/// client asks the proxy for a tunnel (`CONNECT host:port`, with `Proxy-Authorization:
/// Basic` when the proxy URL has a user or password, percent-decoded), then runs TLS for
/// `wss://` and the WebSocket handshake through it, end to end with the server, all within
/// `open_timeout`. The proxy is chosen once per `connect()` (once for all the reconnects
/// of a [`websocket_connect`](crate::websocket::websocket_connect)).
///
/// | Variable (the lowercase spelling wins; empty = unset) | Used for |
/// |---|---|
/// | `wss_proxy`, then `https_proxy`, then `all_proxy` | `wss://` URLs |
/// | `ws_proxy`, then `http_proxy`, then `all_proxy` | `ws://` URLs (`HTTP_PROXY` in capitals is ignored when `REQUEST_METHOD` is set: CGI, "httpoxy") |
/// | `no_proxy` | hosts to reach directly, comma-separated: `*` (all), a host name matching itself and its subdomains (`example.com`, `.example.com`), an IP address (`10.0.0.7`, `::1`, `[::1]`), a CIDR block (`10.0.0.0/8`), each but `*` and CIDR with an optional `:port`. An IP entry matches a URL that has that IP address as its host; no DNS lookup is made. |
///
/// A proxy URL is `http://[user:password@]host[:port]` (port 80 by default; no scheme
/// means `http://`) or `https://…` (TLS to the proxy too, port 443, its certificate checked
/// against the same roots as the server's). Any other scheme, `socks5://` among them, fails
/// the connection with a permanent [`ConnectFailure::InvalidRequest`] rather than
/// connecting directly. A proxy that refuses the tunnel is a
/// [`ConnectFailure::ProxyRefused`]: permanent for a 4xx such as 407 or 403, worth a retry
/// for a 5xx such as 502. Errors and logs show the proxy URL with its password hidden.
///
/// [`ConnectFailure::InvalidRequest`]: crate::websocket::ConnectFailure::InvalidRequest
/// [`ConnectFailure::ProxyRefused`]: crate::websocket::ConnectFailure::ProxyRefused
#[derive(Clone)]
#[must_use = "a builder does nothing until `connect()` is awaited"]
pub struct ClientBuilder {
    url: String,
    config: Option<WebSocketConfig>,
    headers: Vec<(String, String)>,
    subprotocols: Vec<String>,
    roots: TlsRoots,
    proxy: ProxySetting,
}

impl fmt::Debug for ClientBuilder {
    /// Header values are not shown: they often carry credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("config", &self.config)
            .field("headers", &header_names)
            .field("subprotocols", &self.subprotocols)
            .field("webpki_roots", &self.roots.webpki)
            .field("native_roots", &self.roots.native)
            .field("extra_roots", &self.roots.extra.len())
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl ClientBuilder {
    fn new(url: String) -> Self {
        Self {
            url,
            config: None,
            headers: Vec::new(),
            subprotocols: Vec::new(),
            roots: TlsRoots {
                webpki: true,
                native: false,
                extra: Vec::new(),
            },
            proxy: ProxySetting::FromEnv,
        }
    }

    /// The timeouts, keepalive and limits to use (default: [`WebSocketConfig::default`]).
    pub fn config(mut self, config: WebSocketConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Adds a header to the upgrade request, e.g. `Authorization`. A repeated name is sent
    /// repeatedly. `Host` and `User-Agent` replace ours; the handshake's own headers
    /// (`Upgrade`, `Connection`, `Sec-WebSocket-*`) are refused when connecting.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds several headers; see [`header`](Self::header).
    pub fn headers<K, V>(mut self, headers: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.headers
            .extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Subprotocols to offer, in order of preference (`Sec-WebSocket-Protocol`). The server
    /// may pick one ([`WebSocketClient::subprotocol`]) or none; picking one we did not offer
    /// fails the connection.
    pub fn subprotocols<S: Into<String>>(mut self, protocols: impl IntoIterator<Item = S>) -> Self {
        self.subprotocols
            .extend(protocols.into_iter().map(Into::into));
        self
    }

    /// Trusts `cert` as a root for `wss://`, on top of the other roots.
    pub fn root_certificate(mut self, cert: RootCertificate) -> Self {
        self.roots.extra.push(cert.0);
        self
    }

    /// Trusts several roots; see [`root_certificate`](Self::root_certificate).
    pub fn root_certificates(mut self, certs: impl IntoIterator<Item = RootCertificate>) -> Self {
        self.roots.extra.extend(certs.into_iter().map(|c| c.0));
        self
    }

    /// Whether to trust the Mozilla root certificates bundled with the library (default
    /// `true`). Turn off to trust only your own roots.
    pub fn webpki_roots(mut self, enabled: bool) -> Self {
        self.roots.webpki = enabled;
        self
    }

    /// Whether to trust the operating system's root certificates (default `false`), loaded
    /// when connecting.
    pub fn native_roots(mut self, enabled: bool) -> Self {
        self.roots.native = enabled;
        self
    }

    /// Connects through the HTTP proxy at `url` (`http://[user:password@]host[:port]`, or
    /// `https://…`), whatever the environment says (`NO_PROXY` included). Checked when
    /// connecting; see [Proxies](Self#proxies).
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = ProxySetting::Url(url.into());
        self
    }

    /// Connects directly, whatever the environment says: no proxy.
    pub fn no_proxy(mut self) -> Self {
        self.proxy = ProxySetting::Off;
        self
    }

    /// The URL this builder connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn config_is_set(&self) -> bool {
        self.config.is_some()
    }

    /// Checks everything that needs no network (URL, headers, config, TLS roots) and
    /// chooses the proxy.
    pub(crate) fn target(&self) -> Result<Target> {
        Target::new(
            &self.url,
            self.config.clone().unwrap_or_default(),
            &self.headers,
            &self.subprotocols,
            &self.roots,
            &self.proxy,
        )
    }

    /// Opens the connection: TCP (or a tunnel through the [proxy](Self#proxies)), TLS for
    /// `wss://`, and the opening handshake, all within `open_timeout`.
    ///
    /// # Errors
    /// - [`Config`](WebSocketError::Config): the config does not validate.
    /// - [`ConnectionFailed`](WebSocketError::ConnectionFailed): bad URL, header,
    ///   subprotocol or proxy URL; DNS, TCP or TLS failure; the proxy refused the tunnel
    ///   ([`ProxyRefused`](super::ConnectFailure::ProxyRefused)); the server closed the
    ///   connection during the handshake or answered with a status other than 101, 401 or
    ///   403 (the cause names it).
    /// - [`Authentication`](WebSocketError::Authentication): the server answered 401 or 403
    ///   (with up to 1 KiB of its response body).
    /// - [`Protocol`](WebSocketError::Protocol): the 101 response breaks RFC 6455 (wrong
    ///   accept key, an unrequested extension or subprotocol) or RFC 7692 (a
    ///   permessage-deflate answer with parameters the client may not accept).
    /// - [`Timeout`](WebSocketError::Timeout): `open_timeout` expired.
    pub async fn connect(&self) -> Result<WebSocketClient> {
        WebSocketClient::open(&self.target()?).await
    }
}

impl From<&str> for ClientBuilder {
    fn from(url: &str) -> Self {
        Self::new(url.to_owned())
    }
}

impl From<String> for ClientBuilder {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl From<&String> for ClientBuilder {
    fn from(url: &String) -> Self {
        Self::new(url.clone())
    }
}

/// Opens a client with the configuration from `WS_*` environment variables
/// ([`WebSocketConfig::from_env`]) and no extra headers: the one-line form.
///
/// ```no_run
/// # async fn demo() -> svc_infra::websocket::Result<()> {
/// let mut ws = svc_infra::websocket::easy_websocket_client("wss://echo.example.com/ws").await?;
/// ws.send_json(&serde_json::json!({"type": "hello"})).await?;
/// println!("{}", ws.recv().await?);
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Config`](WebSocketError::Config) for a bad `WS_*` value, otherwise as
/// [`ClientBuilder::connect`].
pub async fn easy_websocket_client(url: impl Into<String>) -> Result<WebSocketClient> {
    WebSocketClient::builder(url)
        .config(WebSocketConfig::from_env()?)
        .connect()
        .await
}

impl WebSocketClient {
    /// Starts building a connection to `url` (`ws://` or `wss://`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    pub(crate) async fn open(target: &Target) -> Result<Self> {
        let connected = target.open().await?;
        let subprotocol = connected.subprotocol.clone();
        let deflate = connected.deflate;
        let (commands, inbound, shared) = actor::spawn(connected, &target.config);
        tracing::debug!(
            url = %super::redact_url(&target.url),
            ?subprotocol,
            ?deflate,
            "websocket connected"
        );
        Ok(Self {
            sender: WebSocketSender {
                commands,
                shared,
                max_message_size: target.config.max_message_size,
                close_timeout: target.config.close_timeout,
            },
            inbound,
            url: Arc::from(target.url.as_str()),
            config: target.config.clone(),
            subprotocol,
            finished: false,
        })
    }

    /// The URL this client connected to, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configuration in use.
    pub fn config(&self) -> &WebSocketConfig {
        &self.config
    }

    /// The subprotocol the server chose from the offered ones, if it chose one.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// A cloneable handle that sends and closes from other tasks.
    pub fn sender(&self) -> WebSocketSender {
        self.sender.clone()
    }

    /// Where the connection is: `Open`, `Closing` (either side sent a close frame or the
    /// connection failed; buffered messages can still be received) or `Closed`.
    pub fn state(&self) -> ConnectionState {
        self.sender.state()
    }

    /// Whether messages can still be sent: `false` as soon as either side started closing
    /// or the connection failed.
    pub fn is_connected(&self) -> bool {
        self.sender.is_connected()
    }

    /// Round-trip time of the last keepalive ping (sent every `ping_interval`); `None` until
    /// a pong has arrived, and always with keepalive disabled. Kept after the close.
    pub fn latency(&self) -> Option<Duration> {
        self.sender.latency()
    }

    /// The close code and reason once the connection is closing or closed, exactly as
    /// received from the peer or as we sent them (1006 with an empty reason when the
    /// connection dropped without a close frame).
    pub fn close_status(&self) -> Option<(u16, String)> {
        self.sender.close_status()
    }

    /// Whether the connection ended because the peer sent a close frame: then
    /// [`close_status`](Self::close_status) is the peer's code and reason. `false` while
    /// open, after a close we asked for, and when we failed the connection ourselves
    /// (keepalive or write timeout 1011, too-big message 1009, protocol error 1002/1007) or
    /// it dropped (1006). Tells apart a peer's `1011 "keepalive ping timeout"` from ours.
    pub fn closed_by_peer(&self) -> bool {
        self.sender.closed_by_peer()
    }

    /// Sends a text or binary message; see [`WebSocketSender::send`].
    ///
    /// # Errors
    /// As [`WebSocketSender::send`].
    pub async fn send(&self, message: impl Into<WebSocketMessage>) -> Result<()> {
        self.sender.send(message).await
    }

    /// Sends `value` as a compact JSON text message; see [`WebSocketSender::send_json`].
    ///
    /// # Errors
    /// As [`WebSocketSender::send_json`].
    pub async fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        self.sender.send_json(value).await
    }

    /// Closes the connection; see [`WebSocketSender::close`].
    ///
    /// # Errors
    /// As [`WebSocketSender::close`].
    pub async fn close(&self, code: u16, reason: &str) -> Result<()> {
        self.sender.close(code, reason).await
    }

    /// Waits for the next text or binary message (stamped with its arrival time).
    ///
    /// Control frames are handled inside. There is no timeout of its own: wrap it in
    /// `tokio::time::timeout` to bound the wait; a dead peer is detected by keepalive.
    ///
    /// # Errors
    /// Once the buffered messages are consumed after the connection ended: first the error
    /// that ended it, if any ([`MessageTooLarge`](WebSocketError::MessageTooLarge) after we
    /// closed with 1009, [`Protocol`](WebSocketError::Protocol) after 1002/1007,
    /// [`ConnectionClosed`](WebSocketError::ConnectionClosed) for a peer close, 1006 or a
    /// keepalive timeout 1011), then `ConnectionClosed` with the close code and reason,
    /// exactly as received or sent, on every call.
    pub async fn recv(&mut self) -> Result<WebSocketMessage> {
        match self.inbound.recv().await {
            Some(message) => Ok(message),
            None => Err(self.end_error()),
        }
    }

    /// Receives a message (text or binary) and parses it as JSON.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), or [`Json`](WebSocketError::Json) if the payload is not a
    /// `T` (the connection stays open).
    pub async fn recv_json<T: DeserializeOwned>(&mut self) -> Result<T> {
        let message = self.recv().await?;
        Ok(message.json()?)
    }

    fn end_error(&self) -> WebSocketError {
        self.sender
            .shared
            .take_error()
            .unwrap_or_else(|| self.sender.shared.closed_error())
    }

    /// The shared state, for `websocket_connect`.
    pub(crate) fn watch(&self) -> ClientWatch {
        ClientWatch {
            shared: Arc::clone(&self.sender.shared),
        }
    }
}

impl Stream for WebSocketClient {
    type Item = Result<WebSocketMessage>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.inbound.poll_recv(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(Ok(message))),
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(self.sender.shared.take_error().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Watches a client's connection after the client itself was handed to the caller.
#[derive(Debug, Clone)]
pub(crate) struct ClientWatch {
    shared: Arc<Shared>,
}

impl ClientWatch {
    /// Waits until the connection is fully closed (the actor has finished).
    pub(crate) async fn closed(&self) {
        let mut state = self.shared.subscribe();
        let _ = state.wait_for(|s| *s == ConnectionState::Closed).await;
    }

    /// How the connection ended, once it has.
    pub(crate) fn close_record(&self) -> Option<actor::CloseRecord> {
        self.shared.close_record()
    }
}

impl WebSocketSender {
    /// See [`WebSocketClient::state`].
    pub fn state(&self) -> ConnectionState {
        self.shared.state()
    }

    /// See [`WebSocketClient::is_connected`].
    pub fn is_connected(&self) -> bool {
        self.shared.state() == ConnectionState::Open
    }

    /// See [`WebSocketClient::latency`].
    pub fn latency(&self) -> Option<Duration> {
        self.shared.latency()
    }

    /// See [`WebSocketClient::close_status`].
    pub fn close_status(&self) -> Option<(u16, String)> {
        self.shared.close_record().map(|r| (r.code, r.reason))
    }

    /// See [`WebSocketClient::closed_by_peer`].
    pub fn closed_by_peer(&self) -> bool {
        self.shared
            .close_record()
            .is_some_and(|r| r.origin == CloseOrigin::Peer)
    }

    /// Sends a text (`&str`, `String`) or binary (`Vec<u8>`, `Bytes`, `&[u8]`) message and
    /// waits until it has been written to the socket. Waits while the send queue
    /// (`max_queue_size`) is full. The wait is bounded even if the peer stops reading:
    /// keepalive fails the connection (1011) when no pong comes back, and with keepalive
    /// off a write that makes no headway for `ping_timeout` (or `close_timeout` when that
    /// is disabled too) fails it with 1011 "write timed out".
    ///
    /// # Errors
    /// - [`MessageTooLarge`](WebSocketError::MessageTooLarge): the payload is over
    ///   `max_message_size`; nothing was sent and the connection is still usable.
    /// - [`ConnectionClosed`](WebSocketError::ConnectionClosed): the connection is closing or
    ///   closed (code and reason as recorded), or it failed while writing (1006).
    pub async fn send(&self, message: impl Into<WebSocketMessage>) -> Result<()> {
        let message = message.into();
        if message.len() > self.max_message_size {
            return Err(WebSocketError::MessageTooLarge {
                size: message.len(),
                limit: self.max_message_size,
            });
        }
        if !self.is_connected() {
            return Err(self.shared.closed_error());
        }
        let (ack, done) = oneshot::channel();
        let command = Command::Send { message, ack };
        if self.commands.send(command).await.is_err() {
            return Err(self.shared.closed_error());
        }
        done.await
            .unwrap_or_else(|_| Err(self.shared.closed_error()))
    }

    /// Serializes `value` as compact JSON (no spaces, UTF-8 as is: `{"a":1,"é":"ü"}`) and
    /// sends it as a text message.
    ///
    /// # Errors
    /// [`Json`](WebSocketError::Json) if `value` cannot be serialized, otherwise as
    /// [`send`](Self::send).
    pub async fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let text = serde_json::to_string(value)?;
        self.send(text).await
    }

    /// Closes the connection with `code` and `reason` (use 1000 and `""` for a normal close)
    /// and waits for the closing handshake, at most `close_timeout`. Idempotent: once the
    /// connection is closing or closed (by either side) it only waits for the end and
    /// returns `Ok`. Messages already queued by other senders are sent before the close
    /// frame; messages the peer sent before it saw ours can still be received (as far as
    /// the receive queue has room), then the stream ends.
    ///
    /// # Errors
    /// - [`Protocol`](WebSocketError::Protocol) if `code` may not be sent (only 1000–1003,
    ///   1007–1014 and 3000–4999 may); nothing is sent. A `reason` longer than 123 bytes is
    ///   cut to fit on a character boundary ([`protocol::close_reason`]), as the server does.
    ///
    /// [`protocol::close_reason`]: crate::websocket::protocol::close_reason
    /// - [`Timeout`](WebSocketError::Timeout) if the send queue stayed full (a write stuck on
    ///   a peer that does not read) for `close_timeout`.
    pub async fn close(&self, code: u16, reason: &str) -> Result<()> {
        if !protocol::is_valid_close_code(code) {
            return Err(WebSocketError::Protocol(format!(
                "close code {code} may not be sent (allowed: 1000-1003, 1007-1014, 3000-4999)"
            )));
        }
        let (done_tx, done) = oneshot::channel();
        let command = Command::Close {
            code,
            reason: protocol::close_reason(reason).to_owned(),
            done: done_tx,
        };
        // The queue only stays full while a write is stuck; do not wait on it forever.
        let limit = self.close_timeout;
        match tokio::time::timeout(limit, self.commands.send(command)).await {
            Ok(Ok(())) => {
                // The actor answers within `close_timeout` once it has the command.
                let _ = done.await;
                Ok(())
            }
            Ok(Err(_)) => Ok(()), // already closed
            Err(_) => Err(WebSocketError::Timeout {
                operation: "queueing the close frame",
                after: limit,
            }),
        }
    }
}
