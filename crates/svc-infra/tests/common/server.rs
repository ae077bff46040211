//! Server-side fixtures: axum apps served on 127.0.0.1:0 and tokio-tungstenite clients
//! against them, with a timeout on every await.

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::CloseFrame},
};

use super::within;

/// A tokio-tungstenite client connection.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Serves `app` on 127.0.0.1:0 with the library's serving path
/// (`svc_infra::websocket::serve`, default handshake timeout) and returns its address.
pub async fn serve(app: Router) -> SocketAddr {
    serve_with(app, Duration::from_secs(10)).await
}

/// [`serve`] with a handshake timeout.
pub async fn serve_with(app: Router, handshake_timeout: Duration) -> SocketAddr {
    let listener = within("bind", tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = svc_infra::websocket::serve(listener, app)
            .handshake_timeout(handshake_timeout)
            .await;
    });
    addr
}

/// Connects a WebSocket client to `ws://addr{path}`.
pub async fn connect(addr: SocketAddr, path: &str) -> Client {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = within("connect", tokio_tungstenite::connect_async(&url))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// Upgrades `url` with `origin` as the `Origin` header (`None`: no header, as a client that is
/// not a browser sends). `Err` holds the HTTP status of a refused upgrade; any other failure
/// fails the test.
pub async fn connect_from_origin(url: &str, origin: Option<&str>) -> Result<Client, u16> {
    let mut request = url.into_client_request().expect("a ws:// URL");
    if let Some(origin) = origin {
        let value = origin.parse().expect("an origin header value");
        request.headers_mut().insert("origin", value);
    }
    match within("connect", tokio_tungstenite::connect_async(request)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("connect {url} from {origin:?}: {e}"),
    }
}

/// The next text message (pings answered automatically by tungstenite on read).
pub async fn next_text(ws: &mut Client) -> String {
    loop {
        match within("next message", ws.next()).await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the close frame and returns it (code, reason).
pub async fn next_close(ws: &mut Client) -> Option<(u16, String)> {
    loop {
        match within("close frame", ws.next()).await {
            Some(Ok(Message::Close(frame))) => {
                return frame.map(|CloseFrame { code, reason }| (code.into(), reason.to_string()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("error before the close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Asserts nothing arrives for `quiet`.
pub async fn assert_silent(ws: &mut Client, quiet: Duration) {
    if let Ok(m) = tokio::time::timeout(quiet, ws.next()).await {
        panic!("expected silence, got {m:?}");
    }
}

/// Sends one text message.
pub async fn send_text(ws: &mut Client, text: &str) {
    within("send", ws.send(Message::text(text)))
        .await
        .expect("send");
}
