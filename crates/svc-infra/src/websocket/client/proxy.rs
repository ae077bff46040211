//! HTTP proxies: which one a connection goes through (the builder's choice, or the
//! environment as curl and Python read it), and the `CONNECT` tunnel through it.
//!
//! The choice is made once per [`Target`](super::Target), when it is checked: a
//! [`ProxySetting`] from the builder becomes an `Option<`[`Proxy`]`>`. Each connection then
//! opens TCP (and TLS for an `https://` proxy) to the proxy, asks it for a tunnel with
//! `CONNECT host:port`, and runs TLS (for `wss://`) and the WebSocket handshake through the
//! tunnel exactly as over a direct connection.
//!
//! # The environment
//!
//! Without [`ClientBuilder::proxy`](super::ClientBuilder::proxy) or
//! [`ClientBuilder::no_proxy`](super::ClientBuilder::no_proxy) the variables below are read.
//! For each name the lowercase spelling wins over the uppercase one (as in Python's
//! `urllib`; curl does the same); a variable set to the empty string counts as unset.
//!
//! | URL | Variables, first set wins |
//! |---|---|
//! | `wss://` | `wss_proxy`, `https_proxy`, `all_proxy` |
//! | `ws://` | `ws_proxy`, `http_proxy`, `all_proxy` |
//!
//! `HTTP_PROXY` (uppercase) is ignored when `REQUEST_METHOD` is set: in a CGI program it
//! can come from a request's `Proxy:` header ("httpoxy"), and curl, Python and Go ignore it
//! there too. `no_proxy` / `NO_PROXY` lists hosts to reach directly (see [`bypasses`]).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_rustls::client::TlsStream;

use super::{
    handshake::Host,
    response::{parse_head, read_head},
};
use crate::websocket::{ConnectFailure, Result, WebSocketError, redact_url};

/// What the builder says about proxies.
#[derive(Clone, Default)]
pub(crate) enum ProxySetting {
    /// From the environment (the default): see the module docs.
    #[default]
    FromEnv,
    /// Never: connect directly, whatever the environment says.
    Off,
    /// Always this proxy, whatever the environment says.
    Url(String),
}

impl fmt::Debug for ProxySetting {
    /// The URL's password is hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FromEnv => f.write_str("FromEnv"),
            Self::Off => f.write_str("Off"),
            Self::Url(url) => f.debug_tuple("Url").field(&shown(url)).finish(),
        }
    }
}

/// A proxy to open a target's connections through, checked once.
#[derive(Clone)]
pub(crate) struct Proxy {
    /// The proxy URL with its password hidden: for errors and logs.
    shown: String,
    host: Host,
    port: u16,
    /// `https://`: TLS to the proxy (with this config, set by the target).
    https: bool,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    /// The whole `CONNECT` request, with `Proxy-Authorization` when the URL has credentials.
    request: String,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// A tunnel through a proxy, ready for TLS or the WebSocket handshake.
pub(super) enum Tunnel {
    /// Through an `http://` proxy.
    Tcp(TcpStream),
    /// Through an `https://` proxy.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The environment variables that name a proxy, in the order they are tried.
const WSS_VARS: &[&str] = &[
    "wss_proxy",
    "WSS_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];
const WS_VARS: &[&str] = &[
    "ws_proxy",
    "WS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

impl Proxy {
    /// The proxy for connections to `url` (`secure` for `wss://`, at `host:port`), as
    /// `setting` says; `None` to connect directly. Reads the environment for
    /// [`ProxySetting::FromEnv`].
    ///
    /// # Errors
    /// [`ConnectFailure::InvalidRequest`] for a proxy URL that does not parse or whose
    /// scheme is not `http` or `https` (`socks5://`, say): a permanent error rather than a
    /// direct connection the user did not ask for.
    pub(super) fn choose(
        setting: &ProxySetting,
        url: &str,
        secure: bool,
        host: &Host,
        port: u16,
    ) -> Result<Option<Self>> {
        let (raw, from) = match setting {
            ProxySetting::Off => return Ok(None),
            ProxySetting::Url(raw) => (raw.clone(), "ClientBuilder::proxy"),
            ProxySetting::FromEnv => {
                match from_env(secure, host, port, |name| std::env::var(name).ok()) {
                    Some((name, raw)) => (raw, name),
                    None => return Ok(None),
                }
            }
        };
        let proxy = Self::parse(&raw, host, port).map_err(|why| {
            WebSocketError::failed(
                url,
                ConnectFailure::InvalidRequest(format!(
                    "proxy {} (from {from}): {why}",
                    shown(&raw)
                )),
            )
        })?;
        tracing::debug!(
            url = %redact_url(url),
            proxy = %proxy.shown,
            from,
            "websocket connections go through a proxy"
        );
        Ok(Some(proxy))
    }

    /// Checks a proxy URL and prepares the `CONNECT` request to `host:port`. A URL without
    /// a scheme is `http://` (as curl reads it); the port defaults to 80 (`http`) or 443
    /// (`https`); a path is ignored.
    fn parse(raw: &str, host: &Host, port: u16) -> Result<Self, String> {
        let with_scheme = with_scheme(raw);
        let parsed = url::Url::parse(&with_scheme).map_err(|e| format!("invalid URL: {e}"))?;
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            s if s.starts_with("socks") => {
                return Err(format!(
                    "SOCKS proxies are not supported, only http:// and https:// ones; to \
                     connect directly, list the host in NO_PROXY or call \
                     ClientBuilder::no_proxy() ({s})"
                ));
            }
            s => {
                return Err(format!(
                    "unsupported proxy scheme {s:?}: expected http or https"
                ));
            }
        };
        let proxy_host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => Host::Domain(d.to_owned()),
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            _ => return Err("the URL has no host".to_owned()),
        };
        let proxy_port = parsed
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });

        let authority = authority(host, port);
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if !parsed.username().is_empty() || parsed.password().is_some() {
            let mut credentials = percent_decode(parsed.username());
            credentials.push(b':');
            credentials.extend(percent_decode(parsed.password().unwrap_or_default()));
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            request.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
        }
        request.push_str(concat!(
            "User-Agent: svc-infra/",
            env!("CARGO_PKG_VERSION"),
            "\r\n\r\n"
        ));
        Ok(Self {
            shown: shown(raw),
            host: proxy_host,
            port: proxy_port,
            https,
            tls: None,
            request,
        })
    }

    /// Whether the proxy is an `https://` one, which needs a TLS config.
    pub(super) fn is_https(&self) -> bool {
        self.https
    }

    /// Opens a tunnel to the target through the proxy: TCP (and TLS) to the proxy, then
    /// `CONNECT`, by `deadline` (the open timeout, `limit`, counted from the start of the
    /// connection attempt). Errors are reported against `url`, the target's URL.
    pub(super) async fn open(
        &self,
        url: &str,
        deadline: Instant,
        limit: Duration,
    ) -> Result<Tunnel> {
        match tokio::time::timeout_at(deadline, self.open_inner(url)).await {
            Ok(result) => result,
            Err(_) => Err(WebSocketError::Timeout {
                operation: "connecting through the proxy",
                after: limit,
            }),
        }
    }

    async fn open_inner(&self, url: &str) -> Result<Tunnel> {
        let tcp = match &self.host {
            Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, self.port)).await,
            Host::Domain(d) => TcpStream::connect((d.as_str(), self.port)).await,
        }
        .map_err(|e| self.io_error(url, e))?;
        tcp.set_nodelay(true).map_err(|e| self.io_error(url, e))?;
        match (&self.tls, self.https) {
            (Some(config), true) => {
                let name = match &self.host {
                    Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                    Host::Domain(d) => ServerName::try_from(d.clone()).map_err(|_| {
                        WebSocketError::failed(
                            url,
                            ConnectFailure::Tls(format!("invalid server name {d:?}")),
                        )
                    })?,
                };
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let mut tls = connector.connect(name, tcp).await.map_err(|e| {
                    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                        let why = format!("proxy {}: {e}", self.shown);
                        WebSocketError::failed(url, ConnectFailure::Tls(why))
                    } else {
                        self.io_error(url, e)
                    }
                })?;
                self.connect(url, &mut tls).await?;
                Ok(Tunnel::Tls(Box::new(tls)))
            }
            _ => {
                let mut tcp = tcp;
                self.connect(url, &mut tcp).await?;
                Ok(Tunnel::Tcp(tcp))
            }
        }
    }

    /// Sends `CONNECT` and reads the answer (its head bounded as the handshake's response
    /// is): a 2xx opens the tunnel.
    async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        url: &str,
        stream: &mut S,
    ) -> Result<()> {
        let io_err = |e| self.io_error(url, e);
        stream
            .write_all(self.request.as_bytes())
            .await
            .map_err(io_err)?;
        stream.flush().await.map_err(io_err)?;
        let (head, tail) = read_head(stream).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.io_error(
                    url,
                    std::io::Error::new(
                        e.kind(),
                        "it closed the connection before answering CONNECT",
                    ),
                )
            } else {
                self.io_error(url, e)
            }
        })?;
        let response = parse_head(&head).map_err(|why| self.protocol(why))?;
        if !(200..300).contains(&response.status) {
            return Err(WebSocketError::failed(
                url,
                ConnectFailure::ProxyRefused {
                    proxy: self.shown.clone(),
                    status: response.status,
                    reason: response.reason,
                },
            ));
        }
        if !tail.is_empty() {
            // Nothing may come through the tunnel before we send: the server waits for our
            // ClientHello or upgrade request.
            return Err(self.protocol(format!(
                "{} bytes after its {} answer, before the tunnel was used",
                tail.len(),
                response.status
            )));
        }
        Ok(())
    }

    /// An I/O error on the way to the proxy: retryable, and it names the proxy.
    fn io_error(&self, url: &str, e: std::io::Error) -> WebSocketError {
        let named = std::io::Error::new(e.kind(), format!("proxy {}: {e}", self.shown));
        WebSocketError::failed(url, ConnectFailure::Io(named))
    }

    fn protocol(&self, why: impl fmt::Display) -> WebSocketError {
        WebSocketError::Protocol(format!("CONNECT through proxy {}: {why}", self.shown))
    }
}

/// The proxy the environment names for a `wss://` (`secure`) or `ws://` URL to
/// `host:port`, with the variable that named it; `None` when none is set or `NO_PROXY`
/// lists the host. `var` looks a variable up (the process environment, or a table in
/// tests); see the module docs for the order.
pub(super) fn from_env(
    secure: bool,
    host: &Host,
    port: u16,
    var: impl Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let no_proxy = set("no_proxy").or_else(|| set("NO_PROXY"));
    if no_proxy.is_some_and(|list| bypasses(&list, host, port)) {
        return None;
    }
    let cgi = set("REQUEST_METHOD").is_some();
    let names = if secure { WSS_VARS } else { WS_VARS };
    names
        .iter()
        .filter(|name| !(cgi && **name == "HTTP_PROXY"))
        .find_map(|name| Some((*name, set(name)?.trim().to_owned())))
}

/// Whether a `NO_PROXY` list sends connections to `host:port` directly. The list is
/// comma-separated (spaces around entries are ignored); an entry is:
///
/// - `*`: every host;
/// - a host name, matching itself and its subdomains (`example.com` and `.example.com`
///   both match `example.com` and `api.example.com`, not `badexample.com`; a leading `*.`
///   is read as `.`), in any case, a trailing dot ignored;
/// - an IP address (`10.1.2.3`, `::1` or `[::1]`), matching the URL's host when it is that
///   address written out (no DNS lookup is made, as in curl);
/// - a CIDR block (`10.0.0.0/8`, `fd00::/8`), matching IP-address hosts inside it;
/// - any of the above but `*` and a CIDR block followed by `:port` (`[::1]:8080`), which
///   then matches that port only.
///
/// An entry that is none of these matches nothing.
pub(super) fn bypasses(list: &str, host: &Host, port: u16) -> bool {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| entry == "*" || parse_entry(entry).is_some_and(|e| e.matches(host, port)))
}

/// One `NO_PROXY` entry other than `*`.
#[derive(Debug, PartialEq)]
enum Entry {
    Name(String, Option<u16>),
    Ip(IpAddr, Option<u16>),
    Net(IpAddr, u8),
}

fn parse_entry(entry: &str) -> Option<Entry> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip = inside.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?.parse().ok()?),
        };
        return Some(Entry::Ip(ip, port));
    }
    if let Ok(ip) = entry.parse() {
        return Some(Entry::Ip(ip, None)); // bare IPv6 too: its colons are not a port
    }
    if let Some((ip, len)) = entry.split_once('/') {
        let ip: IpAddr = ip.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return (len <= bits).then_some(Entry::Net(ip, len));
    }
    let (name, port) = match entry.rsplit_once(':') {
        Some((name, port)) => (name, Some(port.parse().ok()?)),
        None => (entry, None),
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(Entry::Ip(ip, port));
    }
    let name = name.trim_start_matches('*').trim_start_matches('.');
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty() && !name.contains(['/', ':', '[', ']', '*']))
        .then_some(Entry::Name(name, port))
}

impl Entry {
    fn matches(&self, host: &Host, port: u16) -> bool {
        match (self, host) {
            (Self::Name(name, p), Host::Domain(domain)) => {
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                p.is_none_or(|p| p == port)
                    && (domain == *name
                        || domain
                            .strip_suffix(name.as_str())
                            .is_some_and(|prefix| prefix.ends_with('.')))
            }
            (Self::Ip(ip, p), Host::Ip(addr)) => ip == addr && p.is_none_or(|p| p == port),
            (Self::Net(net, len), Host::Ip(addr)) => in_block(*addr, *net, *len),
            _ => false,
        }
    }
}

/// Whether `addr` is in the block `net/len` (of the same family).
fn in_block(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `host:port` as `CONNECT` and its `Host` header carry it (an IPv6 address in brackets).
fn authority(host: &Host, port: u16) -> String {
    match host {
        Host::Domain(d) => format!("{d}:{port}"),
        Host::Ip(IpAddr::V4(ip)) => format!("{ip}:{port}"),
        Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
    }
}

/// A proxy URL with `http://` in front when it has no scheme, as curl reads it.
fn with_scheme(raw: &str) -> String {
    let raw = raw.trim();
    if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    }
}

/// A proxy URL as errors and logs show it: its password hidden.
fn shown(raw: &str) -> String {
    redact_url(&with_scheme(raw))
}

/// `%XX` sequences decoded (a malformed one is kept as it is): the user and password of a
/// URL, which the `url` crate keeps percent-encoded.
fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(hi), Some(lo)) = (hex(hi), hex(lo))
        {
            // Two hex digits are at most 0xff.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn domain(d: &str) -> Host {
        Host::Domain(d.to_owned())
    }

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    /// The proxy from a table of variables.
    fn env(vars: &[(&str, &str)], secure: bool, host: &Host, port: u16) -> Option<String> {
        let table: HashMap<&str, &str> = vars.iter().copied().collect();
        from_env(secure, host, port, |name| {
            table.get(name).map(|v| (*v).to_owned())
        })
        .map(|(name, value)| format!("{name}={value}"))
    }

    #[test]
    fn which_variable_names_the_proxy() {
        let h = domain("api.example.com");
        let wss = |vars: &[(&str, &str)]| env(vars, true, &h, 443);
        let ws = |vars: &[(&str, &str)]| env(vars, false, &h, 80);

        assert_eq!(wss(&[]), None);
        assert_eq!(ws(&[]), None);
        // The scheme's own variable; http_proxy is for ws:// only, https_proxy for wss://.
        assert_eq!(
            ws(&[("http_proxy", "p:1")]).as_deref(),
            Some("http_proxy=p:1")
        );
        assert_eq!(wss(&[("http_proxy", "p:1")]), None);
        assert_eq!(ws(&[("https_proxy", "p:1")]), None);
        assert_eq!(
            wss(&[("HTTPS_PROXY", "p:1")]).as_deref(),
            Some("HTTPS_PROXY=p:1")
        );
        // Lowercase wins over uppercase.
        let both = [("HTTPS_PROXY", "upper:1"), ("https_proxy", "lower:1")];
        assert_eq!(wss(&both).as_deref(), Some("https_proxy=lower:1"));
        let both = [("HTTP_PROXY", "upper:1"), ("http_proxy", "lower:1")];
        assert_eq!(ws(&both).as_deref(), Some("http_proxy=lower:1"));
        // ALL_PROXY is the fallback, after the scheme's variable.
        let all = [("ALL_PROXY", "all:1")];
        assert_eq!(ws(&all).as_deref(), Some("ALL_PROXY=all:1"));
        assert_eq!(wss(&all).as_deref(), Some("ALL_PROXY=all:1"));
        let all = [("ALL_PROXY", "ALL:1"), ("all_proxy", "all:1")];
        assert_eq!(wss(&all).as_deref(), Some("all_proxy=all:1"));
        let all = [("all_proxy", "all:1"), ("HTTPS_PROXY", "s:1")];
        assert_eq!(wss(&all).as_deref(), Some("HTTPS_PROXY=s:1"));
        // ws_proxy / wss_proxy (Python websockets) come first.
        let specific = [
            ("https_proxy", "s:1"),
            ("wss_proxy", "w:1"),
            ("ws_proxy", "x:1"),
        ];
        assert_eq!(wss(&specific).as_deref(), Some("wss_proxy=w:1"));
        let specific = [("http_proxy", "h:1"), ("WS_PROXY", "w:1")];
        assert_eq!(ws(&specific).as_deref(), Some("WS_PROXY=w:1"));
        // Empty counts as unset; values are trimmed.
        let empty = [("https_proxy", " "), ("HTTPS_PROXY", " s:1 ")];
        assert_eq!(wss(&empty).as_deref(), Some("HTTPS_PROXY=s:1"));
        // httpoxy: HTTP_PROXY is ignored under CGI, http_proxy is not.
        let cgi = [("REQUEST_METHOD", "GET"), ("HTTP_PROXY", "evil:1")];
        assert_eq!(ws(&cgi), None);
        let cgi = [
            ("REQUEST_METHOD", "GET"),
            ("HTTP_PROXY", "evil:1"),
            ("ALL_PROXY", "a:1"),
        ];
        assert_eq!(ws(&cgi).as_deref(), Some("ALL_PROXY=a:1"));
        let cgi = [("REQUEST_METHOD", "GET"), ("http_proxy", "ok:1")];
        assert_eq!(ws(&cgi).as_deref(), Some("http_proxy=ok:1"));
    }

    #[test]
    fn no_proxy_sends_matching_hosts_directly() {
        let proxied = |no_proxy: &str, host: &Host, port: u16| {
            let vars = [("all_proxy", "p:1"), ("NO_PROXY", no_proxy)];
            env(&vars, false, host, port).is_some()
        };
        let (api, bare) = (domain("api.example.com"), domain("example.com"));
        // (NO_PROXY, host, port, bypassed)
        let cases: &[(&str, &Host, u16, bool)] = &[
            ("*", &api, 80, true),
            (" * ", &ip("10.0.0.1"), 80, true),
            ("", &api, 80, false),
            ("example.com", &api, 80, true),
            ("example.com", &bare, 80, true),
            ("xample.com", &api, 80, false),
            ("ample.com", &domain("badexample.com"), 80, false),
            (".example.com", &api, 80, true),
            (".example.com", &bare, 80, true),
            ("*.example.com", &api, 80, true),
            ("EXAMPLE.com.", &domain("Api.Example.COM."), 80, true),
            ("api.example.com", &bare, 80, false),
            ("other.org, example.com", &api, 80, true),
            ("other.org,,  example.com  ", &api, 80, true),
            ("other.org", &api, 80, false),
            ("example.com:8080", &api, 8080, true),
            ("example.com:8080", &api, 80, false),
            ("example.com:nope", &api, 80, false),
            ("localhost", &domain("localhost"), 9000, true),
            ("localhost", &ip("127.0.0.1"), 9000, false),
            ("127.0.0.1", &ip("127.0.0.1"), 9000, true),
            ("127.0.0.1", &domain("localhost"), 9000, false),
            ("127.0.0.1:9000", &ip("127.0.0.1"), 9000, true),
            ("127.0.0.1:9000", &ip("127.0.0.1"), 9001, false),
            ("127.0.0.2", &ip("127.0.0.1"), 9000, false),
            ("::1", &ip("::1"), 80, true),
            ("[::1]", &ip("::1"), 80, true),
            ("[::1]:8080", &ip("::1"), 8080, true),
            ("[::1]:8080", &ip("::1"), 80, false),
            ("[::1]x", &ip("::1"), 80, false),
            ("10.0.0.0/8", &ip("10.200.3.4"), 80, true),
            ("10.0.0.0/8", &ip("11.0.0.1"), 80, false),
            ("10.0.0.0/8", &domain("10.example.com"), 80, false),
            ("192.168.1.0/24", &ip("192.168.1.255"), 80, true),
            ("192.168.1.0/24", &ip("192.168.2.1"), 80, false),
            ("0.0.0.0/0", &ip("8.8.8.8"), 80, true),
            ("10.0.0.0/33", &ip("10.0.0.1"), 80, false),
            ("fd00::/8", &ip("fd12::1"), 80, true),
            ("fd00::/8", &ip("fe80::1"), 80, false),
            ("fd00::/8", &ip("10.0.0.1"), 80, false),
            ("::/0", &ip("::1"), 80, true),
        ];
        for (list, host, port, bypassed) in cases {
            assert_eq!(
                proxied(list, host, *port),
                !bypassed,
                "NO_PROXY={list:?} for {host:?}:{port}"
            );
        }
        // Lowercase wins over uppercase here too.
        let vars = [
            ("all_proxy", "p:1"),
            ("no_proxy", "other.org"),
            ("NO_PROXY", "*"),
        ];
        assert!(env(&vars, true, &api, 443).is_some());
    }

    #[test]
    fn proxy_urls_are_checked_and_become_connect_requests() {
        let target = domain("api.example.com");
        let p = Proxy::parse("http://proxy.corp:3128", &target, 443).unwrap();
        assert!(!p.https);
        assert_eq!(p.port, 3128);
        assert_eq!(
            p.request,
            format!(
                "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\
                 User-Agent: svc-infra/{}\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        // No scheme: http, port 80 by default; https: 443.
        let p = Proxy::parse("proxy.corp", &target, 443).unwrap();
        assert!(!p.https && p.port == 80);
        assert_eq!(p.shown, "http://proxy.corp");
        let p = Proxy::parse("https://proxy.corp/", &target, 443).unwrap();
        assert!(p.https && p.port == 443);
        // IPv6 targets are bracketed.
        let p = Proxy::parse("http://[::1]:8080", &ip("::1"), 9000).unwrap();
        assert!(
            p.request
                .starts_with("CONNECT [::1]:9000 HTTP/1.1\r\nHost: [::1]:9000\r\n")
        );

        // Credentials: percent-decoded, then Basic.
        let p = Proxy::parse("http://al%40ice:p%3Ass%20w%2@proxy:1", &target, 443).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("al@ice:p:ss w%2");
        assert!(
            p.request
                .contains(&format!("\r\nProxy-Authorization: Basic {basic}\r\n")),
            "{}",
            p.request
        );
        assert_eq!(p.shown, "http://al%40ice:****@proxy:1");
        let p = Proxy::parse("http://user@proxy:1", &target, 443).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("user:");
        assert!(p.request.contains(&format!("Basic {basic}\r\n")));

        for (raw, why) in [
            ("socks5://proxy:1080", "SOCKS proxies are not supported"),
            (
                "socks5h://u:hunter2@proxy:1080",
                "SOCKS proxies are not supported",
            ),
            ("ftp://proxy:21", "unsupported proxy scheme \"ftp\""),
            ("http://", "invalid URL"),
            ("http://u:hunter2@proxy:99999", "invalid URL"),
        ] {
            let err = Proxy::parse(raw, &target, 443).unwrap_err();
            assert!(err.contains(why), "{raw}: {err}");
        }
    }

    #[test]
    fn an_unusable_proxy_is_a_permanent_error_that_hides_the_password() {
        let setting = ProxySetting::Url("socks5://u:hunter2@proxy:1080".to_owned());
        let err = Proxy::choose(&setting, "wss://h/", true, &domain("h"), 443).unwrap_err();
        assert!(!err.is_retryable());
        let WebSocketError::ConnectionFailed {
            source: ConnectFailure::InvalidRequest(why),
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(why.contains("socks5://u:****@proxy:1080"), "{why}");
        assert!(why.contains("ClientBuilder::proxy"), "{why}");
        assert!(!format!("{err} {err:?}").contains("hunter2"));
        assert!(!format!("{setting:?}").contains("hunter2"));

        assert!(
            Proxy::choose(&ProxySetting::Off, "ws://h/", false, &domain("h"), 80)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2fc%2F"), b"a b/c/");
        assert_eq!(percent_decode("%"), b"%");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
        assert_eq!(percent_decode("%C3%A9"), "é".as_bytes());
    }
}
