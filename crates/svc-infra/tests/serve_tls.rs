//! `serve(listener, app).tls(ServerTls)`: `https://` and `wss://` through the library's own
//! serving path, with certificates made here (rcgen) under private roots: a chain, every key
//! form, reloads, refused files, the handshake timeout, shutdown during a handshake, and a
//! burst larger than the socket's buffers through the TLS writer.

mod common;

use std::{
    future::IntoFuture,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, response::Response, routing::get};
use base64::Engine as _;
use common::{STEP, within};
use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use svc_infra::websocket::{
    RootCertificate, ServerTls, WebSocketClient, WebSocketConfig, WebSocketError, WsUpgrade, serve,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
};
use tokio_tungstenite::tungstenite::Message;

type Issuer = CertifiedIssuer<'static, KeyPair>;

/// A root certificate authority named `name`.
fn root(name: &str) -> Issuer {
    CertifiedIssuer::self_signed(ca_params(name), KeyPair::generate().unwrap()).unwrap()
}

/// An intermediate authority under `parent`.
fn intermediate(parent: &Issuer) -> Issuer {
    CertifiedIssuer::signed_by(
        ca_params("intermediate"),
        KeyPair::generate().unwrap(),
        parent,
    )
    .unwrap()
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A server certificate for `localhost` and `127.0.0.1` with `key`, signed by `issuer`.
fn leaf(issuer: &Issuer, key: &impl PublicKeyData) -> CertificateDer<'static> {
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(key, issuer)
        .unwrap();
    cert.der().clone()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The key inside a PKCS#8 `PrivateKeyInfo`: RSA's is PKCS#1, EC's is SEC1.
fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
    /// One DER element of `tag` at the start of `input`: (its value, what follows).
    fn element(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
        assert_eq!(input[0], tag, "DER tag");
        let (len, head) = match input[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 => (usize::from(input[2]), 3),
            0x82 => (usize::from(u16::from_be_bytes([input[2], input[3]])), 4),
            n => panic!("DER length form {n:#x}"),
        };
        (&input[head..head + len], &input[head + len..])
    }
    let (info, _) = element(pkcs8, 0x30);
    let (_, rest) = element(info, 0x02); // version
    let (_, rest) = element(rest, 0x30); // algorithm
    element(rest, 0x04).0.to_vec()
}

/// A directory of its own under the system's temporary one, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "svc-infra-serve-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Echo at `/echo`, text at `/hello`, and at `/burst` `BURST` binary messages of
/// `BURST_SIZE` bytes then `"done"`, handed over at once.
fn app() -> Router {
    async fn echo(ws: WsUpgrade) -> Response {
        ws.on_upgrade(|mut socket| async move {
            while let Some(Ok(m)) = socket.recv().await {
                if socket.reply(m).await.is_err() {
                    break;
                }
            }
        })
    }
    async fn burst(ws: WsUpgrade) -> Response {
        let config = WebSocketConfig::default().with_max_queue_size(BURST + 1);
        ws.config(config).on_upgrade(|mut socket| async move {
            for i in 0..BURST {
                let mut message = vec![0u8; BURST_SIZE];
                message[..8].copy_from_slice(&(i as u64).to_be_bytes());
                socket.send(message).expect("queued");
            }
            socket.send("done").expect("queued");
            while let Some(Ok(_)) = socket.recv().await {}
        })
    }
    Router::new()
        .route("/hello", get(|| async { "hello over tls" }))
        .route("/echo", get(echo))
        .route("/burst", get(burst))
}

/// 8 MiB: more than a socket's largest send buffer by default on Linux (`tcp_wmem`, 4 MiB).
const BURST: usize = 128;
const BURST_SIZE: usize = 64 * 1024;

/// Serves `app` over TLS on 127.0.0.1:0 with `handshake_timeout`.
async fn serve_tls(tls: &ServerTls, handshake_timeout: Duration) -> SocketAddr {
    let listener = within("bind", tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve(listener, app())
        .handshake_timeout(handshake_timeout)
        .tls(tls.clone());
    tokio::spawn(async move { server.await });
    addr
}

fn quiet() -> WebSocketConfig {
    WebSocketConfig::default().with_ping_interval(None)
}

/// Our client at `wss://localhost:port{path}`, trusting only `root`.
async fn wss(
    addr: SocketAddr,
    path: &str,
    root: &Issuer,
) -> Result<WebSocketClient, WebSocketError> {
    within(
        "wss connect",
        WebSocketClient::builder(format!("wss://localhost:{}{path}", addr.port()))
            .config(quiet())
            .webpki_roots(false)
            .root_certificates(RootCertificate::from_pem(root.pem()).unwrap())
            .connect(),
    )
    .await
}

/// A rustls client trusting only `root`.
fn client_config(root: &Issuer) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// `GET path` over TLS trusting only `root`: the status line, the body, and the
/// certificate the server presented.
async fn https_get(
    addr: SocketAddr,
    path: &str,
    root: &Issuer,
) -> Result<(String, String, CertificateDer<'static>), std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(root)));
    let tcp = within("tcp connect", TcpStream::connect(addr)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = within("tls handshake", connector.connect(name, tcp)).await?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    within("request", tls.write_all(request.as_bytes())).await?;
    let mut response = String::new();
    within("response", tls.read_to_string(&mut response)).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned(), presented))
}

/// A leaf under `root` with a fresh EC key (PKCS#8), written to `dir`: (cert, key) paths.
fn write_pair(dir: &Dir, root: &Issuer, prefix: &str) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = leaf(root, &key);
    (
        dir.write(&format!("{prefix}.crt"), pem("CERTIFICATE", &cert)),
        dir.write(&format!("{prefix}.key"), key.serialize_pem()),
    )
}

#[tokio::test]
async fn wss_and_https_with_a_chain_to_a_private_root() {
    let dir = Dir::new();
    let root = root("root");
    let middle = intermediate(&root);
    let key = KeyPair::generate().unwrap();
    let cert = leaf(&middle, &key);
    // The server's certificate first, then the intermediate: the client has only the root.
    let chain = format!("{}{}", pem("CERTIFICATE", &cert), middle.pem());
    let tls = ServerTls::from_pem_files(
        dir.write("chain.pem", chain),
        dir.write("key.pem", key.serialize_pem()),
    )
    .unwrap();
    let addr = serve_tls(&tls, STEP).await;

    let mut ws = wss(addr, "/echo", &root).await.unwrap();
    within("send", ws.send("over tls")).await.unwrap();
    assert_eq!(
        within("recv", ws.recv()).await.unwrap().as_text(),
        Some("over tls")
    );
    let big = vec![7u8; 300_000];
    within("send big", ws.send(big.clone())).await.unwrap();
    assert_eq!(
        within("recv big", ws.recv()).await.unwrap().as_bytes(),
        &big[..]
    );
    within("close", ws.close(1000, "")).await.unwrap();

    let (status, body, presented) = https_get(addr, "/hello", &root).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "hello over tls");
    assert_eq!(presented, cert);

    // Plain HTTP on the TLS port gets no HTTP answer (at most a TLS alert), then EOF.
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    within(
        "plain request",
        tcp.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = within("plain answer", tcp.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
}

/// PKCS#8 (EC and RSA), SEC1 (EC) and PKCS#1 (RSA) keys all load and serve; each reload
/// presents the new certificate to the next handshake.
#[tokio::test]
async fn every_key_form_loads_and_a_reload_presents_the_new_pair() {
    let dir = Dir::new();
    let root = root("root");
    let ec = KeyPair::generate().unwrap();
    let ec_sec1 = pem("EC PRIVATE KEY", &pkcs8_inner(&ec.serialize_der()));
    let rsa_pkcs8 = include_str!("common/keys/rsa1.key.pem");
    let rsa = KeyPair::from_pem(rsa_pkcs8).unwrap();
    let rsa_der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(rsa_pkcs8.as_bytes())
        .unwrap()
        .secret_pkcs8_der()
        .to_vec();
    let rsa_pkcs1 = pem("RSA PRIVATE KEY", &pkcs8_inner(&rsa_der));
    let ec_cert = leaf(&root, &ec);
    let rsa_cert = leaf(&root, &rsa);
    let forms = [
        ("ec-pkcs8", &ec_cert, ec.serialize_pem()),
        ("ec-sec1", &ec_cert, ec_sec1),
        ("rsa-pkcs8", &rsa_cert, rsa_pkcs8.to_owned()),
        ("rsa-pkcs1", &rsa_cert, rsa_pkcs1),
    ];
    let cert_path = dir.0.join("server.crt");
    let key_path = dir.0.join("server.key");
    let mut tls: Option<(ServerTls, SocketAddr)> = None;
    for (form, cert, key) in forms {
        assert!(key.contains("PRIVATE KEY-----"), "{form}");
        dir.write("server.crt", pem("CERTIFICATE", cert));
        dir.write("server.key", &key);
        let addr = match &tls {
            None => {
                let loaded = ServerTls::from_pem_files(&cert_path, &key_path)
                    .unwrap_or_else(|e| panic!("{form}: {e}"));
                let addr = serve_tls(&loaded, STEP).await;
                tls = Some((loaded, addr));
                addr
            }
            Some((loaded, addr)) => {
                loaded.reload().unwrap_or_else(|e| panic!("{form}: {e}"));
                *addr
            }
        };
        let (status, _, presented) = https_get(addr, "/hello", &root)
            .await
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(status, "HTTP/1.1 200 OK", "{form}");
        assert_eq!(&presented, cert, "{form}");
    }
}

/// Files that cannot serve are refused at load, naming the file and what is wrong; a reload
/// with them keeps the pair in use.
#[tokio::test]
async fn bad_files_are_refused_and_a_bad_reload_keeps_the_pair() {
    let dir = Dir::new();
    let root = root("root");
    let (cert, key) = write_pair(&dir, &root, "good");
    let (other_cert, other_key) = write_pair(&dir, &root, "other");
    let missing = dir.0.join("missing.pem");
    let garbage = dir.write("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n");
    let ca_first = dir.write(
        "ca-first.pem",
        format!("{}{}", root.pem(), std::fs::read_to_string(&cert).unwrap()),
    );
    let cases: [(&Path, &Path, &Path, &str); 7] = [
        (&missing, &key, &missing, "a readable file"),
        (&cert, &missing, &missing, "a readable file"),
        (
            &key,
            &key,
            &key,
            "at least one CERTIFICATE section (none found)",
        ),
        (&cert, &cert, &cert, "a PEM private key"),
        (&garbage, &key, &garbage, "PEM certificates"),
        (
            &cert,
            &other_key,
            &other_key,
            "the private key of the first certificate",
        ),
        (
            &ca_first,
            &key,
            &key,
            "must start with the server's own certificate",
        ),
    ];
    for (cert_file, key_file, named, says) in cases {
        let err = ServerTls::from_pem_files(cert_file, key_file).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, WebSocketError::Config(_)),
            "{cert_file:?} {key_file:?}: {err:?}"
        );
        assert!(
            message.contains(&format!("{:?}", named.display().to_string()))
                && message.contains(says),
            "{cert_file:?} {key_file:?}: {message}"
        );
        assert!(!message.contains("PRIVATE KEY-----"), "{message}");
    }

    // The same key file for both: a combined PEM works.
    let combined = dir.write(
        "combined.pem",
        std::fs::read_to_string(&other_cert).unwrap()
            + &std::fs::read_to_string(&other_key).unwrap(),
    );
    ServerTls::from_pem_files(&combined, &combined).unwrap();

    let tls = ServerTls::from_pem_files(&cert, &key).unwrap();
    let addr = serve_tls(&tls, STEP).await;
    let (_, _, before) = https_get(addr, "/hello", &root).await.unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let err = tls.reload().unwrap_err();
    assert!(err.to_string().contains("a PEM private key"), "{err}");
    let (status, _, after) = https_get(addr, "/hello", &root).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(after, before, "the pair in use stays");
}

/// A client that opens TCP and sends nothing, and one that finishes the TLS handshake but
/// sends no request, are both closed at the handshake timeout.
#[tokio::test]
async fn silent_clients_are_closed_at_the_handshake_timeout() {
    let dir = Dir::new();
    let root = root("root");
    let (cert, key) = write_pair(&dir, &root, "server");
    let tls = ServerTls::from_pem_files(cert, key).unwrap();
    let timeout = Duration::from_millis(400);
    let addr = serve_tls(&tls, timeout).await;

    let started = Instant::now();
    let mut silent = within("connect", TcpStream::connect(addr)).await.unwrap();
    let mut buf = Vec::new();
    let n = within("close of a silent TCP client", silent.read_to_end(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing but the close: {buf:?}");
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());

    // After the TLS handshake, the request has the handshake timeout again.
    let config = client_config(&root);
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let mut tls = within(
        "handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap();
    let handshaken = Instant::now();
    let mut buf = Vec::new();
    let _ = within("close of a silent TLS client", tls.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "no HTTP answer: {buf:?}");
    assert!(
        handshaken.elapsed() >= timeout,
        "{:?}",
        handshaken.elapsed()
    );
}

/// Shutdown does not wait out the handshake timeout of a client that is still in its TLS
/// handshake.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_pending_tls_handshake() {
    let dir = Dir::new();
    let root = root("root");
    let (cert, key) = write_pair(&dir, &root, "server");
    let tls = ServerTls::from_pem_files(cert, key).unwrap();
    let listener = within("bind", tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(Notify::new());
    let signal = stop.clone();
    let server = tokio::spawn(
        serve(listener, app())
            .handshake_timeout(Duration::from_secs(3600))
            .tls(tls)
            .with_graceful_shutdown(async move { signal.notified().await })
            .into_future(),
    );
    let _silent = within("connect", TcpStream::connect(addr)).await.unwrap();
    // Connections are accepted in order: once this one is served, the silent one is in its
    // handshake.
    https_get(addr, "/hello", &root).await.unwrap();
    stop.notify_one();
    within("serve to return", server).await.unwrap().unwrap();
}

/// A burst larger than the socket's buffers to a client with a small receive buffer, so
/// that the server's writes over TLS (behind `tokio::io::split`) wait for the socket again
/// and again: every message arrives, in order, the last one too. (That what rustls took but
/// the socket did not is flushed out is checked deterministically by `outbound.rs`'s
/// `a_buffering_writer_is_flushed_to_the_end`: here the socket's room when the flusher
/// wakes makes it a matter of timing.)
#[tokio::test]
async fn a_burst_to_a_slow_socket_arrives_whole() {
    let dir = Dir::new();
    let root = root("root");
    let (cert, key) = write_pair(&dir, &root, "server");
    let tls = ServerTls::from_pem_files(cert, key).unwrap();
    let addr = serve_tls(&tls, STEP).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = within("connect", socket.connect(addr)).await.unwrap();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(client_config(&root)));
    let url = format!("wss://localhost:{}/burst", addr.port());
    let (mut ws, _) = within(
        "wss handshake",
        tokio_tungstenite::client_async_tls_with_config(url, tcp, None, Some(connector)),
    )
    .await
    .unwrap();
    for i in 0..BURST {
        let message = within(&format!("message {i}"), ws.next())
            .await
            .unwrap()
            .unwrap();
        let Message::Binary(data) = message else {
            panic!("message {i}: {message:?}");
        };
        assert_eq!(data.len(), BURST_SIZE);
        assert_eq!(data[..8], (i as u64).to_be_bytes());
    }
    let last = within("the last message", ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, Message::text("done"));
}
