//! The server the client tests talk to: a real axum server on 127.0.0.1:0 with axum's own
//! `WebSocketUpgrade`, independent of our server side, that reports what it observed.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{
        Path, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::get,
};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{STEP, step};

/// What the axum server observed, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Upgrade request headers (lowercase names) and the subprotocol the server picked.
    Upgrade {
        headers: BTreeMap<String, String>,
        protocol: Option<String>,
    },
    /// A close frame from the client: code and reason (`None` = no close frame before EOF).
    Closed(Option<(u16, String)>),
    /// Number of messages received by `/duplex`.
    Received(usize),
}

#[derive(Clone)]
struct AppState {
    hits: Arc<AtomicUsize>,
    seen: mpsc::Sender<Seen>,
    kill: watch::Receiver<bool>,
}

/// A running axum server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Requests that reached a handler (upgrades and refusals).
    pub hits: Arc<AtomicUsize>,
    pub seen: mpsc::Receiver<Seen>,
    kill: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Binds 127.0.0.1:0 and serves [`router`].
    pub async fn start() -> Self {
        let listener = step(TcpListener::bind("127.0.0.1:0")).await.unwrap();
        Self::serve(listener)
    }

    /// Serves on an already bound listener (e.g. the same port again after [`stop`]).
    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (seen_tx, seen) = mpsc::channel(64);
        let (kill, kill_rx) = watch::channel(false);
        let state = AppState {
            hits: Arc::clone(&hits),
            seen: seen_tx,
            kill: kill_rx,
        };
        let app = router().with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            hits,
            seen,
            kill,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Next observation.
    pub async fn next_seen(&mut self) -> Seen {
        step(self.seen.recv()).await.expect("server gone")
    }

    /// Kills the server like a crash: the port closes and every WebSocket is dropped without
    /// a close frame.
    pub async fn stop(self) {
        let _ = self.kill.send(true);
        self.task.abort();
        let _ = step(self.task).await;
    }
}

fn router() -> Router<AppState> {
    Router::new()
        .route("/echo", get(echo))
        .route("/close/{code}/{reason}", get(close_with))
        .route("/close-once/{code}/{reason}", get(close_once))
        .route("/big/{size}", get(big))
        .route("/duplex/{count}", get(duplex))
        .route("/burst/{count}", get(burst))
        .route(
            "/forbidden",
            get(|State(s): State<AppState>| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::FORBIDDEN,
                    Json(serde_json::json!({"error": "forbidden", "reason": "Insufficient scope"})),
                )
            }),
        )
        .route(
            "/unauthorized",
            get(|State(s): State<AppState>| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                (StatusCode::UNAUTHORIZED, "Token expired")
            }),
        )
        .route(
            "/unavailable",
            get(|State(s): State<AppState>| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                (StatusCode::SERVICE_UNAVAILABLE, "try later")
            }),
        )
        .route("/plain", get(|| async { "hello, not a websocket" }))
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn close_of(frame: Option<CloseFrame>) -> Seen {
    Seen::Closed(frame.map(|f| (f.code, f.reason.as_str().to_owned())))
}

/// Echoes text and binary messages; reports the upgrade request and the client's close.
/// Picks subprotocol `v2` or `chat` when offered.
async fn echo(State(s): State<AppState>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let ws = ws.protocols(["v2", "chat"]);
    let protocol = ws
        .selected_protocol()
        .map(|p| p.to_str().unwrap_or_default().to_owned());
    let _ = s
        .seen
        .send(Seen::Upgrade {
            headers: header_map(&headers),
            protocol,
        })
        .await;
    ws.on_upgrade(move |socket| echo_loop(socket, s))
}

async fn echo_loop(mut socket: WebSocket, s: AppState) {
    let mut kill = s.kill.clone();
    loop {
        tokio::select! {
            _ = kill.changed() => return, // crash: drop without a close frame
            message = socket.recv() => match message {
                Some(Ok(Message::Text(t))) => {
                    if socket.send(Message::Text(t)).await.is_err() { return; }
                }
                Some(Ok(Message::Binary(b))) => {
                    if socket.send(Message::Binary(b)).await.is_err() { return; }
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = s.seen.send(close_of(frame)).await;
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let _ = s.seen.send(Seen::Closed(None)).await;
                    return;
                }
            },
        }
    }
}

/// The first connection is closed like `/close/..`; later ones are echoed.
async fn close_once(
    State(s): State<AppState>,
    Path((code, reason)): Path<(u16, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    let n = s.hits.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        ws.on_upgrade(move |socket| close_socket(socket, s, code, reason))
    } else {
        ws.on_upgrade(move |socket| echo_loop(socket, s))
    }
}

/// Closes at once with the given code and reason.
async fn close_with(
    State(s): State<AppState>,
    Path((code, reason)): Path<(u16, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    ws.on_upgrade(move |socket| close_socket(socket, s, code, reason))
}

async fn close_socket(mut socket: WebSocket, s: AppState, code: u16, reason: String) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
    // Wait for the client's answer, then drop.
    let _ = tokio::time::timeout(STEP, async {
        while let Some(Ok(m)) = socket.recv().await {
            if let Message::Close(f) = m {
                let _ = s.seen.send(close_of(f)).await;
                break;
            }
        }
    })
    .await;
}

/// Sends one binary message of `size` bytes, then reports the client's close.
async fn big(State(s): State<AppState>, Path(size): Path<usize>, ws: WebSocketUpgrade) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    ws.max_message_size(64 << 20)
        .on_upgrade(move |mut socket| async move {
            let _ = socket.send(Message::Binary(vec![7u8; size].into())).await;
            let seen = tokio::time::timeout(STEP, async {
                loop {
                    match socket.recv().await {
                        Some(Ok(Message::Close(f))) => break close_of(f),
                        Some(Ok(_)) => {}
                        _ => break Seen::Closed(None),
                    }
                }
            })
            .await
            .unwrap_or(Seen::Closed(None));
            let _ = s.seen.send(seen).await;
        })
}

/// Sends `count` text messages `m-0`, `m-1`, … at once, then echoes.
async fn burst(
    State(s): State<AppState>,
    Path(count): Path<usize>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        for i in 0..count {
            if socket
                .send(Message::Text(format!("m-{i}").into()))
                .await
                .is_err()
            {
                return;
            }
        }
        echo_loop(socket, s).await;
    })
}

/// Sends `count` messages `down-i` while counting what comes up; once both are done it
/// sends `got N` and reports N.
async fn duplex(
    State(s): State<AppState>,
    Path(count): Path<usize>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let (mut sink, mut stream) = socket.split();
        let down = async move {
            for i in 0..count {
                if sink
                    .send(Message::Text(format!("down-{i}").into()))
                    .await
                    .is_err()
                {
                    break;
                }
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            sink
        };
        let up = async {
            let mut n = 0;
            while n < count {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with("up-") => n += 1,
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            n
        };
        let (mut sink, n) = tokio::join!(down, up);
        let _ = sink.send(Message::Text(format!("got {n}").into())).await;
        let _ = s.seen.send(Seen::Received(n)).await;
        // Read until the client closes (which also answers its close frame).
        let _ = tokio::time::timeout(STEP, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    })
}
