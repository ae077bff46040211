//! Opening a connection: URL checks, TCP (or a tunnel through a proxy: `proxy.rs`), TLS
//! (rustls) and the RFC 6455 opening handshake, with the permessage-deflate offer (RFC
//! 7692) unless compression is off.
//!
//! The handshake is written here rather than taken from tungstenite because tungstenite's
//! client handshake (a) rejects a server that picks no subprotocol when some were offered,
//! which RFC 6455 allows and the Python client accepts, and (b) only keeps the bytes of the
//! response body that happened to arrive with the headers, while an authentication failure
//! should report what the server said. Framing after the handshake is the protocol core's
//! (`actor.rs`, `reader.rs`).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_rustls::client::TlsStream;

use super::{
    proxy::{Proxy, ProxySetting, Tunnel},
    response::{Head, parse_head, read_error_body, read_head, retry_after},
    transport::Transport,
};
use crate::websocket::{
    Compression, ConnectFailure, Result, WebSocketConfig, WebSocketError,
    protocol::{
        self,
        deflate::{self, DeflateParams},
    },
};

/// A connection whose opening handshake succeeded.
#[derive(Debug)]
pub(crate) struct Connected<S> {
    /// The byte stream, at the first frame.
    pub(crate) stream: S,
    /// Bytes that arrived after the response head: the start of the first frames.
    pub(crate) read_ahead: Vec<u8>,
    /// The subprotocol the server chose.
    pub(crate) subprotocol: Option<String>,
    /// permessage-deflate, if the server accepted our offer: the parameters agreed on.
    pub(crate) deflate: Option<DeflateParams>,
}

/// Everything needed to open connections to one URL, checked once.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    host: Host,
    port: u16,
    /// Request without the `Sec-WebSocket-Key` line and the final blank line.
    request_head: String,
    /// The request offers permessage-deflate ([`deflate::CLIENT_OFFER`]).
    offers_deflate: bool,
    subprotocols: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The proxy to tunnel through, chosen once; `None`: direct.
    proxy: Option<Proxy>,
    pub(crate) config: WebSocketConfig,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub(super) enum Host {
    Domain(String),
    Ip(IpAddr),
}

/// TLS trust settings collected by the builder.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsRoots {
    pub(crate) webpki: bool,
    pub(crate) native: bool,
    pub(crate) extra: Vec<CertificateDer<'static>>,
}

/// Handshake headers a caller may not set: they are ours to write.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "content-length",
    "transfer-encoding",
];

fn invalid(url: &str, why: impl Into<String>) -> WebSocketError {
    WebSocketError::failed(url, ConnectFailure::InvalidRequest(why.into()))
}

impl Target {
    /// Checks the URL, headers and subprotocols, chooses the proxy and prepares TLS; no I/O.
    pub(crate) fn new(
        url: &str,
        config: WebSocketConfig,
        headers: &[(String, String)],
        subprotocols: &[String],
        roots: &TlsRoots,
        proxy: &ProxySetting,
    ) -> Result<Self> {
        config.validate()?;
        let Endpoint {
            secure,
            host,
            port,
            authority,
            target,
        } = parse_url(url)?;
        let offers_deflate = config.compression != Compression::Off;
        let mut head = request_head(url, &authority, &target, headers, subprotocols)?;
        if offers_deflate {
            head.push_str(&format!(
                "Sec-WebSocket-Extensions: {}\r\n",
                deflate::CLIENT_OFFER
            ));
        }
        let mut proxy = Proxy::choose(proxy, url, secure, &host, port)?;

        // One TLS config serves the server and an `https://` proxy: the same roots.
        let tls = if secure || proxy.as_ref().is_some_and(Proxy::is_https) {
            Some(tls_config(url, roots)?)
        } else {
            None
        };
        if let Some(proxy) = &mut proxy {
            proxy.tls = tls.clone();
        }
        Ok(Self {
            url: url.to_owned(),
            host,
            port,
            request_head: head,
            offers_deflate,
            subprotocols: subprotocols.to_vec(),
            tls: if secure { tls } else { None },
            proxy,
            config,
        })
    }

    /// Opens one connection: TCP (or a tunnel through the proxy), TLS, handshake, all
    /// within `open_timeout`.
    pub(crate) async fn open(&self) -> Result<Connected<Transport>> {
        let limit = self.config.open_timeout;
        // A limit past what the clock can hold (`Duration::MAX`) is 30 years, as in
        // `tokio::time::timeout`.
        let deadline = Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(30 * 365 * 86_400));
        match tokio::time::timeout_at(deadline, self.open_inner(deadline)).await {
            Ok(result) => result,
            Err(_) => Err(WebSocketError::Timeout {
                operation: "opening handshake",
                after: limit,
            }),
        }
    }

    async fn open_inner(&self, deadline: Instant) -> Result<Connected<Transport>> {
        let io_err = |e: std::io::Error| WebSocketError::failed(&self.url, ConnectFailure::Io(e));
        let tunnel = match &self.proxy {
            Some(proxy) => {
                let limit = self.config.open_timeout;
                proxy.open(&self.url, deadline, limit).await?
            }
            None => {
                let tcp = match &self.host {
                    Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, self.port)).await,
                    Host::Domain(d) => TcpStream::connect((d.as_str(), self.port)).await,
                }
                .map_err(io_err)?;
                // Small frames (pings, chat messages) should not wait for Nagle.
                tcp.set_nodelay(true).map_err(io_err)?;
                Tunnel::Tcp(tcp)
            }
        };

        let stream = match (&self.tls, tunnel) {
            (None, Tunnel::Tcp(tcp)) => Transport::Tcp(tcp),
            (None, Tunnel::Tls(tls)) => Transport::Tls(tls),
            (Some(config), Tunnel::Tcp(tcp)) => {
                Transport::Tls(Box::new(self.tls_over(config, tcp).await?))
            }
            (Some(config), Tunnel::Tls(tls)) => {
                Transport::TlsInTls(Box::new(self.tls_over(config, *tls).await?))
            }
        };

        self.handshake(stream, &new_key()).await
    }

    /// The TLS handshake with the server over `io` (TCP, or a proxy's tunnel).
    async fn tls_over<S>(&self, config: &Arc<rustls::ClientConfig>, io: S) -> Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match &self.host {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Domain(d) => ServerName::try_from(d.clone()).map_err(|_| {
                WebSocketError::failed(
                    &self.url,
                    ConnectFailure::Tls(format!("invalid server name {d:?}")),
                )
            })?,
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
        connector.connect(name, io).await.map_err(|e| {
            // A certificate or TLS protocol problem will not fix itself; a network
            // failure during the TLS handshake might.
            let failure = if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                ConnectFailure::Tls(e.to_string())
            } else {
                ConnectFailure::Io(e)
            };
            WebSocketError::failed(&self.url, failure)
        })
    }

    /// The opening handshake on a connected `stream` with the nonce `key`: sends the
    /// request, reads and checks the response (RFC 6455 §4.1, RFC 7692 §7.1), and returns
    /// the stream with the bytes that came after the response. Generic over the stream so
    /// that it runs without a network too (the `client_read` fuzz target).
    pub(crate) async fn handshake<S>(&self, mut stream: S, key: &str) -> Result<Connected<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let io_err = |e: std::io::Error| WebSocketError::failed(&self.url, ConnectFailure::Io(e));
        let request = format!("{}Sec-WebSocket-Key: {key}\r\n\r\n", self.request_head);
        stream.write_all(request.as_bytes()).await.map_err(io_err)?;
        stream.flush().await.map_err(io_err)?;

        let (head, tail) = read_head(&mut stream).await.map_err(io_err)?;
        let response = parse_head(&head).map_err(|why| self.protocol(why))?;

        if response.status != 101 {
            let body = read_error_body(&mut stream, &response, tail).await;
            return Err(match response.status {
                401 | 403 => WebSocketError::Authentication {
                    status: response.status,
                    body,
                },
                status => {
                    let retry_after = response.header("retry-after").and_then(retry_after);
                    WebSocketError::failed(
                        &self.url,
                        ConnectFailure::HttpStatus {
                            status,
                            reason: response.reason,
                            body,
                            retry_after,
                        },
                    )
                }
            });
        }
        let (subprotocol, deflate) = self.verify_upgrade(&response, key)?;
        Ok(Connected {
            stream,
            read_ahead: tail,
            subprotocol,
            deflate,
        })
    }

    fn protocol(&self, why: impl fmt::Display) -> WebSocketError {
        WebSocketError::Protocol(format!("handshake with {}: {why}", self.url))
    }

    /// The checks of RFC 6455 §4.1 and RFC 7692 §7.1 on a 101 response; returns the chosen
    /// subprotocol and the permessage-deflate parameters.
    fn verify_upgrade(
        &self,
        response: &Head,
        key: &str,
    ) -> Result<(Option<String>, Option<DeflateParams>)> {
        let upgrade_ok = response
            .header("upgrade")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        if !upgrade_ok {
            return Err(self.protocol("the response lacks `Upgrade: websocket`"));
        }
        let connection_ok = response.header("connection").is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        if !connection_ok {
            return Err(self.protocol("the response lacks `Connection: Upgrade`"));
        }
        let expected = protocol::accept_key(key.as_bytes());
        if response.header("sec-websocket-accept").map(str::trim) != Some(expected.as_str()) {
            return Err(self.protocol("wrong Sec-WebSocket-Accept"));
        }
        let extensions = response.headers("sec-websocket-extensions");
        let deflate = if self.offers_deflate {
            deflate::accept_response(extensions)
                .map_err(|why| self.protocol(format!("Sec-WebSocket-Extensions: {why}")))?
        } else {
            match extensions.into_iter().find(|e| !e.trim().is_empty()) {
                Some(ext) => {
                    return Err(self.protocol(format!(
                        "the server enabled extension {ext:?}, which was not offered"
                    )));
                }
                None => None,
            }
        };
        let subprotocol = match response.header("sec-websocket-protocol").map(str::trim) {
            None | Some("") => None,
            Some(chosen) if self.subprotocols.iter().any(|p| p == chosen) => {
                Some(chosen.to_owned())
            }
            Some(chosen) => {
                return Err(self.protocol(format!(
                    "the server chose subprotocol {chosen:?}, which was not offered (offered: {:?})",
                    self.subprotocols
                )));
            }
        };
        Ok((subprotocol, deflate))
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn new_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

fn tls_config(url: &str, roots: &TlsRoots) -> Result<Arc<rustls::ClientConfig>> {
    let tls_err = |why: String| WebSocketError::failed(url, ConnectFailure::Tls(why));
    let mut store = rustls::RootCertStore::empty();
    if roots.webpki {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if roots.native {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "could not load some native root certificates");
        }
        store.add_parsable_certificates(loaded.certs);
    }
    for cert in &roots.extra {
        store
            .add(cert.clone())
            .map_err(|e| tls_err(format!("bad root certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(tls_err(
            "no root certificates: enable webpki or native roots, or add one".to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// RFC 7230 `tchar`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where a `ws://` or `wss://` URL points.
struct Endpoint {
    secure: bool,
    host: Host,
    port: u16,
    /// `host[:port]` as the Host header carries it.
    authority: String,
    /// Path and query: the request target.
    target: String,
}

/// Checks and takes apart a WebSocket URL.
fn parse_url(url: &str) -> Result<Endpoint> {
    let parsed = url::Url::parse(url).map_err(|e| invalid(url, format!("invalid URL: {e}")))?;
    let secure = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(invalid(
                url,
                format!("unsupported URL scheme {other:?}: expected ws or wss"),
            ));
        }
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            url,
            "credentials in the URL are not supported: send an Authorization header instead",
        ));
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => Host::Domain(d.to_owned()),
        Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
        _ => return Err(invalid(url, "the URL has no host")),
    };
    let port = parsed
        .port_or_known_default()
        .unwrap_or(if secure { 443 } else { 80 });
    let host_str = parsed.host_str().unwrap_or_default();
    let authority = match parsed.port() {
        Some(p) => format!("{host_str}:{p}"),
        None => host_str.to_owned(),
    };
    let mut target = parsed.path().to_owned();
    if let Some(q) = parsed.query() {
        target.push('?');
        target.push_str(q);
    }

    Ok(Endpoint {
        secure,
        host,
        port,
        authority,
        target,
    })
}

/// The handshake request's head (request line and headers, without the key), with the
/// caller's headers and subprotocols checked.
fn request_head(
    url: &str,
    authority: &str,
    target: &str,
    headers: &[(String, String)],
    subprotocols: &[String],
) -> Result<String> {
    for p in subprotocols {
        if p.is_empty() || !p.bytes().all(is_token_char) {
            return Err(invalid(
                url,
                format!("invalid subprotocol {p:?}: expected an HTTP token"),
            ));
        }
    }

    let mut head = format!("GET {target} HTTP/1.1\r\n");
    let user_sets = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !user_sets("host") {
        head.push_str(&format!("Host: {authority}\r\n"));
    }
    head.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n");
    if !subprotocols.is_empty() {
        head.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            subprotocols.join(", ")
        ));
    }
    if !user_sets("user-agent") {
        head.push_str(concat!(
            "User-Agent: svc-infra/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ));
    }
    for (name, value) in headers {
        let parsed_name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(url, format!("invalid header name {name:?}")))?;
        if RESERVED_HEADERS.contains(&parsed_name.as_str()) {
            return Err(invalid(
                url,
                format!("header {name:?} is set by the handshake itself"),
            ));
        }
        http::HeaderValue::from_str(value)
            .map_err(|_| invalid(url, format!("invalid value for header {name:?}")))?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }

    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target> {
        Target::new(
            url,
            WebSocketConfig::default(),
            &[],
            &[],
            &TlsRoots {
                webpki: true,
                ..TlsRoots::default()
            },
            &ProxySetting::Off,
        )
    }

    #[test]
    fn request_head_has_host_path_and_query() {
        let t = target("ws://example.com:8080/a/b?x=1&y=2#frag").unwrap();
        assert!(t.request_head.starts_with("GET /a/b?x=1&y=2 HTTP/1.1\r\n"));
        assert!(t.request_head.contains("Host: example.com:8080\r\n"));
        let t = target("ws://[::1]/").unwrap();
        assert!(t.request_head.contains("Host: [::1]\r\n"));
        assert_eq!(t.port, 80);
        assert_eq!(target("wss://example.com").unwrap().port, 443);
    }

    #[test]
    fn the_request_offers_permessage_deflate_unless_compression_is_off() {
        let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
        assert!(target("ws://h/").unwrap().request_head.contains(offer));
        let off = Target::new(
            "ws://h/",
            WebSocketConfig::default().with_compression(Compression::Off),
            &[],
            &[],
            &TlsRoots::default(),
            &ProxySetting::Off,
        )
        .unwrap();
        assert!(!off.request_head.contains("Sec-WebSocket-Extensions"));
        // Keys are fresh 16-byte nonces.
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }

    #[test]
    fn bad_urls_are_permanent_connection_failures() {
        for url in [
            "",
            "not a url",
            "http://example.com/",
            "ws://",
            "ws://u:p@h/",
        ] {
            let err = target(url).unwrap_err();
            let WebSocketError::ConnectionFailed { source, .. } = &err else {
                panic!("{url:?}: {err:?}");
            };
            assert!(
                matches!(source, ConnectFailure::InvalidRequest(_)),
                "{url:?}: {source:?}"
            );
            assert!(!err.is_retryable(), "{url:?}");
        }
    }

    #[test]
    fn reserved_and_invalid_headers_are_refused() {
        let roots = TlsRoots::default();
        let cfg = WebSocketConfig::default();
        for (k, v) in [
            ("Sec-WebSocket-Key", "x"),
            ("Bad Name", "x"),
            ("X-Ok", "a\r\nb"),
        ] {
            let headers = [(k.to_owned(), v.to_owned())];
            let off = ProxySetting::Off;
            assert!(Target::new("ws://h/", cfg.clone(), &headers, &[], &roots, &off).is_err());
        }
        let protos = ["has space".to_owned()];
        let off = ProxySetting::Off;
        assert!(Target::new("ws://h/", cfg, &[], &protos, &roots, &off).is_err());
    }

    #[test]
    fn http_status_permanence() {
        let status = |status| ConnectFailure::HttpStatus {
            status,
            reason: String::new(),
            body: String::new(),
            retry_after: None,
        };
        assert_eq!(retry_after(" 5 "), Some(std::time::Duration::from_secs(5)));
        assert_eq!(
            retry_after("999999"),
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert!(!status(404).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
    }
}
