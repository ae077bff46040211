//! The plain-axum baseline of `docs/benchmarks.md`: the bench_app protocol written the obvious
//! good way, without svc-infra.
//!
//! Run with: `cargo run --release -p svc-ws --example plain_axum -- --port 3000`
//! (add `--read-buffer-size 4096` for the small-buffer calibration of DESIGN §3; raise the
//! open-file limit first, e.g. `ulimit -n 65536`, to hold 10,000 connections).
//!
//! - `GET /ws/{user_id}` is a WebSocket; a text message whose JSON `"type"` is `"echo"` goes
//!   back unchanged to that connection only; `"broadcast"` goes unchanged to every `/ws`
//!   connection, sender included; anything else is ignored.
//! - `GET /stats` answers `{"connections": N}`.
//! - `GET /echo` is a WebSocket that sends every text and binary message back unchanged.
//!
//! Per connection: a registry entry (connection id → bounded `mpsc::Sender<Message>`), a
//! reader loop (the upgrade task) and a writer task that drains the queue with `feed` and one
//! `flush` per batch. A broadcast clones the received `Utf8Bytes` (a refcount bump) into every
//! queue with `try_send`, never waiting on a slow client; a full queue drops the message for
//! that client and is counted (reported on stderr).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc::{self, error::TrySendError};

#[derive(Debug, Parser)]
#[command(about = "Plain-axum WebSocket server speaking the bench_app protocol")]
struct Args {
    /// Port to bind on 127.0.0.1.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
    /// WebSocket read buffer per connection in bytes (default: tungstenite's 128 KiB).
    #[arg(long)]
    read_buffer_size: Option<usize>,
    /// Capacity of each connection's outgoing queue, in messages.
    #[arg(long, default_value_t = 256)]
    queue: usize,
}

/// Shared state: the registry and the counters.
#[derive(Debug)]
pub(crate) struct AppState {
    conns: RwLock<HashMap<u64, mpsc::Sender<Message>>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    read_buffer_size: Option<usize>,
    queue: usize,
}

impl AppState {
    /// A server with no connections; `read_buffer_size` None keeps tungstenite's default.
    pub(crate) fn new(read_buffer_size: Option<usize>, queue: usize) -> Arc<Self> {
        Arc::new(Self {
            conns: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            read_buffer_size,
            queue: queue.max(1),
        })
    }

    fn broadcast(&self, text: &Utf8Bytes) {
        let conns = self.conns.read().unwrap_or_else(PoisonError::into_inner);
        for tx in conns.values() {
            if let Err(TrySendError::Full(_)) = tx.try_send(Message::Text(text.clone())) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The only field the server looks at.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let state = AppState::new(args.read_buffer_size, args.queue);
    tokio::spawn(report_drops(Arc::clone(&state)));
    let app = router(state);
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    eprintln!("plain_axum listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The bench_app routes (`crates/svc-ws/tests/bench.rs` serves them in-process too).
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws/{user_id}", get(ws_handler))
        .route("/echo", get(echo_handler))
        .route("/stats", get(stats))
        .with_state(state)
}

fn configure(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    match state.read_buffer_size {
        Some(size) => ws.read_buffer_size(size),
        None => ws,
    }
}

async fn ws_handler(
    ws: WebSocketUpgrade,
    Path(_user_id): Path<String>,
    State(state): State<Arc<AppState>>,
) -> impl IntoResponse {
    configure(ws, &state).on_upgrade(move |socket| connection(socket, state))
}

async fn connection(socket: WebSocket, state: Arc<AppState>) {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(state.queue);
    state
        .conns
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, tx.clone());
    let writer = tokio::spawn(writer(sink, rx));
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text.as_str()) else {
                    continue;
                };
                let kind = envelope.kind.as_ref();
                if kind == "broadcast" {
                    state.broadcast(&text);
                } else if kind == "echo" && tx.send(Message::Text(text)).await.is_err() {
                    break;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    state
        .conns
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    drop(tx);
    // The writer ends once the registry's and this task's senders are gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// Drains the queue: every message already queued is fed, then one flush writes the batch.
async fn writer(mut sink: SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(message) = rx.recv().await {
        if sink.feed(message).await.is_err() {
            return;
        }
        while let Ok(message) = rx.try_recv() {
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

async fn echo_handler(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
) -> impl IntoResponse {
    configure(ws, &state).on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            let reply = match message {
                Message::Text(_) | Message::Binary(_) => message,
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

async fn stats(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let connections = state
        .conns
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    Json(serde_json::json!({ "connections": connections }))
}

/// Reports broadcast drops (full queues) on stderr when the count changes.
async fn report_drops(state: Arc<AppState>) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = state.dropped.load(Ordering::Relaxed);
        if now != last {
            eprintln!("plain_axum: {now} broadcast messages dropped on full queues");
            last = now;
        }
    }
}
