//! Raw TCP peers, for the tests that need a misbehaving one or exact bytes on the wire:
//! servers that answer the handshake by hand, clients that upgrade by hand, and frames
//! written and read with `svc_infra::websocket::protocol`.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use svc_infra::websocket::protocol::{self, FrameHeader, apply_mask};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{step, within};

// Raw servers, for a peer of our client.

/// Accept times of a raw server's connections.
pub type Accepts = Arc<Mutex<Vec<Instant>>>;

/// Binds 127.0.0.1:0 and runs `handler` for every connection; records accept times.
pub async fn raw_server<F, Fut>(handler: F) -> (SocketAddr, Accepts)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = step(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts: Accepts = Arc::default();
    let log = Arc::clone(&accepts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            log.lock().unwrap().push(Instant::now());
            tokio::spawn(handler(stream));
        }
    });
    (addr, accepts)
}

/// Reads an HTTP request head; returns it as text.
pub async fn read_request(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match step(stream.read(&mut byte)).await {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Completes the server side of the handshake by hand, adding `extra` header lines
/// (each ending in `\r\n`); returns the request head.
pub async fn raw_handshake(stream: &mut TcpStream, extra: &str) -> String {
    let request = read_request(stream).await;
    let key = request
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_owned())
        })
        .expect("no Sec-WebSocket-Key");
    let accept = protocol::accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    );
    step(stream.write_all(response.as_bytes())).await.unwrap();
    request
}

/// An unmasked server frame.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    protocol::encode_frame(opcode, payload).to_vec()
}

/// Reads one (masked) client frame: opcode and unmasked payload.
pub async fn read_client_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = vec![0u8; 2];
    step(stream.read_exact(&mut head)).await?;
    let need = FrameHeader::needed(&head);
    head.resize(need, 0);
    step(stream.read_exact(&mut head[2..])).await?;
    let header = FrameHeader::parse(&head)
        .map_err(std::io::Error::other)?
        .expect("a whole header");
    let mut payload = vec![0u8; usize::try_from(header.payload_len).unwrap()];
    step(stream.read_exact(&mut payload)).await?;
    if let Some(mask) = header.mask {
        apply_mask(&mut payload, mask, 0);
    }
    Ok((header.opcode, payload))
}

/// Reads client frames until a close frame; returns its code and reason.
pub async fn read_client_close(stream: &mut TcpStream) -> Option<(u16, String)> {
    loop {
        let (opcode, payload) = read_client_frame(stream).await.ok()?;
        if opcode == protocol::OP_CLOSE {
            let close = protocol::parse_close(&payload).ok()?;
            return Some(close.map_or((1005, String::new()), |(c, r)| (c, r.to_owned())));
        }
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = step(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    listener.local_addr().unwrap()
}

// Raw clients, for a peer of our server.

/// Connects to `addr` and does the WebSocket handshake for `path` by hand.
pub async fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let tcp = within("tcp", TcpStream::connect(addr)).await.unwrap();
    upgrade_on(tcp, addr, path).await
}

/// Does the WebSocket handshake on `tcp` by hand; reads exactly the response head.
pub async fn upgrade_on(tcp: TcpStream, addr: SocketAddr, path: &str) -> TcpStream {
    let (tcp, head) = upgrade_request(tcp, addr, path).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// The upgrade request for `path` by hand; returns the stream and the response head
/// (status line and headers, header names lower-cased by hyper), whatever the status.
pub async fn upgrade_request(tcp: TcpStream, addr: SocketAddr, path: &str) -> (TcpStream, String) {
    upgrade_request_with(tcp, addr, path, "").await
}

/// Connects to `addr` and upgrades `path` offering `permessage-deflate;
/// client_max_window_bits` (what browsers send); returns the stream and whether the server
/// accepted the offer.
pub async fn deflate_upgrade(addr: SocketAddr, path: &str) -> (TcpStream, bool) {
    let tcp = within("tcp", TcpStream::connect(addr)).await.unwrap();
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let (tcp, head) = upgrade_request_with(tcp, addr, path, offer).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let accepted = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("sec-websocket-extensions: permessage-deflate")
    });
    (tcp, accepted)
}

/// [`upgrade_request`] with `extra` header lines (each ending in `\r\n`).
pub async fn upgrade_request_with(
    mut tcp: TcpStream,
    addr: SocketAddr,
    path: &str,
    extra: &str,
) -> (TcpStream, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    within("write", tcp.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("response head", tcp.read_exact(&mut byte))
            .await
            .unwrap();
        head.push(byte[0]);
    }
    (
        tcp,
        String::from_utf8(head).expect("an ASCII response head"),
    )
}

/// Reads one frame of either role: its header and its payload, unmasked if it was masked.
pub async fn read_frame(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> (FrameHeader, Vec<u8>) {
    let mut head = vec![0u8; 2];
    within("frame header", tcp.read_exact(&mut head))
        .await
        .unwrap();
    head.resize(FrameHeader::needed(&head), 0);
    within("frame header", tcp.read_exact(&mut head[2..]))
        .await
        .unwrap();
    let header = FrameHeader::parse(&head)
        .expect("a valid frame header")
        .expect("a whole header");
    let mut payload = vec![0u8; usize::try_from(header.payload_len).unwrap()];
    within("frame payload", tcp.read_exact(&mut payload))
        .await
        .unwrap();
    if let Some(mask) = header.mask {
        apply_mask(&mut payload, mask, 0);
    }
    (header, payload)
}

/// Reads one (unmasked) server frame: opcode and payload.
pub async fn read_server_frame(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    let (header, payload) = read_frame(tcp).await;
    assert!(header.mask.is_none(), "a server frame is not masked");
    (header.opcode, payload)
}

/// One HTTP/1.1 request by hand; returns the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut tcp = within("http", TcpStream::connect(addr)).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    within("http request", tcp.write_all(req.as_bytes()))
        .await
        .unwrap();
    let mut response = String::new();
    within("http response", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// One HTTP/1.1 `GET` by hand, with extra `headers` (each ending in `\r\n`); returns the
/// status, the response's headers (lower-cased names) and the body.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut tcp = within("http", TcpStream::connect(addr)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    within("http request", tcp.write_all(req.as_bytes()))
        .await
        .unwrap();
    let mut response = String::new();
    within("http response", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("")[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}
