//! An HTTP `CONNECT` proxy on 127.0.0.1:0 (`http://`, or `https://` with a self-signed
//! certificate) that records each `CONNECT` it gets and pipes the tunnel's bytes, or
//! misbehaves as asked; and a `wss://` echo server (tokio-rustls and tokio-tungstenite) to
//! reach through it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use svc_infra::websocket::RootCertificate;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;

use super::step;

/// A self-signed certificate for `localhost` and `127.0.0.1`.
pub struct SelfSigned {
    pub pem: String,
    der: CertificateDer<'static>,
    key: Vec<u8>,
}

impl SelfSigned {
    pub fn new() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        Self {
            pem: certified.cert.pem(),
            der: certified.cert.der().clone(),
            key: certified.signing_key.serialize_der(),
        }
    }

    /// The certificate as a root for our client.
    pub fn root(&self) -> RootCertificate {
        RootCertificate::from_der(self.der.to_vec())
    }

    fn acceptor(&self) -> TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Starts a `wss://` echo server on 127.0.0.1 with `cert`; returns its address.
pub async fn tls_echo_server(cert: &SelfSigned) -> SocketAddr {
    let acceptor = cert.acceptor();
    let listener = step(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = step(acceptor.accept(tcp)).await else {
                    return;
                };
                let Ok(mut ws) = step(tokio_tungstenite::accept_async(tls)).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// What a [`TestProxy`] does after reading a `CONNECT`.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Connects to the target, answers 200 and pipes bytes both ways.
    Tunnel,
    /// Answers with this status and reason (`"407 Proxy Authentication Required"`) and
    /// closes.
    Refuse(&'static str),
    /// Never answers (keeps the connection open until the client closes it).
    Silent,
    /// Closes the connection without answering.
    HangUp,
    /// Starts a 200 answer whose head never ends (40 KiB of headers, then silence).
    EndlessHead,
}

/// One `CONNECT` request as the proxy read it.
#[derive(Debug, Clone)]
pub struct Connect {
    /// The request target: `host:port`.
    pub target: String,
    /// The `Host` header.
    pub host: Option<String>,
    /// The `Proxy-Authorization` header.
    pub authorization: Option<String>,
}

/// A running proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Connect>>>,
}

impl TestProxy {
    /// An `http://` proxy.
    pub async fn start(mode: Mode) -> Self {
        Self::spawn(mode, None).await
    }

    /// An `https://` proxy with `cert` (for `localhost` and `127.0.0.1`).
    pub async fn start_tls(mode: Mode, cert: &SelfSigned) -> Self {
        Self::spawn(mode, Some(cert.acceptor())).await
    }

    async fn spawn(mode: Mode, tls: Option<TlsAcceptor>) -> Self {
        let listener = step(TcpListener::bind("127.0.0.1:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Connect>>> = Arc::default();
        let log = Arc::clone(&seen);
        let https = tls.is_some();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => handle(tcp, mode, log).await,
                        Some(acceptor) => {
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(super::STEP, acceptor.accept(tcp)).await
                            {
                                handle(stream, mode, log).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            tls: https,
            seen,
        }
    }

    /// `http://127.0.0.1:port` (or `https://`).
    pub fn url(&self) -> String {
        self.url_with("")
    }

    /// The URL with `userinfo` (`user:password@`) before the host.
    pub fn url_with(&self, userinfo: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{userinfo}{}", self.addr)
    }

    /// The `CONNECT` requests so far, in order.
    pub fn seen(&self) -> Vec<Connect> {
        self.seen.lock().unwrap().clone()
    }

    /// The targets of the `CONNECT` requests so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.seen().into_iter().map(|c| c.target).collect()
    }
}

async fn handle<S>(mut client: S, mode: Mode, log: Arc<Mutex<Vec<Connect>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(head) = read_head(&mut client).await else {
        return;
    };
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    if parts.next() != Some("CONNECT") {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    }
    let target = parts.next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    log.lock().unwrap().push(Connect {
        target: target.clone(),
        host: header("host"),
        authorization: header("proxy-authorization"),
    });

    match mode {
        Mode::Tunnel => {
            let Ok(Ok(mut upstream)) =
                tokio::time::timeout(super::STEP, TcpStream::connect(target.as_str())).await
            else {
                let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                return;
            };
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Mode::Refuse(status) => {
            let answer = format!(
                "HTTP/1.1 {status}\r\nProxy-Authenticate: Basic realm=\"test\"\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = client.write_all(answer.as_bytes()).await;
            let _ = client.shutdown().await;
        }
        Mode::Silent => {
            let mut byte = [0u8; 1];
            let _ = client.read(&mut byte).await; // until the client gives up
        }
        Mode::HangUp => {}
        Mode::EndlessHead => {
            let _ = client.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("X-Pad: {}\r\n", "p".repeat(1000));
            for _ in 0..40 {
                if client.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            let mut byte = [0u8; 1];
            let _ = client.read(&mut byte).await;
        }
    }
}

/// Reads a request head (up to 8 KiB) byte by byte, so that nothing after it is taken.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(super::STEP, stream.read(&mut byte)).await {
            Ok(Ok(1)) if buf.len() < 8192 => buf.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}
