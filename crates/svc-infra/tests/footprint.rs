//! What an idle connection's task holds: the sizes that decide its memory
//! (docs/benchmarks.md, "A lighter connection"). A change that grows them grows every idle
//! connection; these fail so that it is a decision, not an accident.

use std::mem::size_of;

use serde::Deserialize;
use svc_infra::websocket::{Connection, ConnectionManager, WebSocket, WebSocketConfig};

/// The size of the future `handler` returns, without running it.
fn future_size<F, Fut>(_: &F) -> usize
where
    F: FnOnce(WebSocket) -> Fut,
    Fut: Future<Output = ()>,
{
    size_of::<Fut>()
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
}

#[test]
fn a_socket_and_a_connection_are_a_few_words() {
    assert_eq!(size_of::<WebSocket>(), size_of::<usize>());
    assert!(size_of::<Connection>() <= 3 * size_of::<usize>());
}

/// A handler waits in `recv` for most of its life: its future is one pointer.
#[test]
fn waiting_for_a_message_is_one_pointer() {
    fn socket_recv<F: Future>(_: fn(&'static mut WebSocket) -> F) -> usize {
        size_of::<F>()
    }
    fn connection_recv<F: Future>(_: fn(&'static mut Connection) -> F) -> usize {
        size_of::<F>()
    }
    assert_eq!(socket_recv(WebSocket::recv), size_of::<usize>());
    assert_eq!(connection_recv(Connection::recv), size_of::<usize>());
}

/// bench_app's handler (register, then echo or broadcast by the message's type): its future
/// plus tokio's task header and trailer (96 bytes) fit the 256-byte task tokio allocates
/// (its tasks are aligned to 128 bytes).
#[test]
fn a_typical_handler_fits_a_256_byte_task() {
    let manager = ConnectionManager::new(WebSocketConfig::default());
    let user_id = String::from("u");
    let handler = move |socket: WebSocket| async move {
        let Ok(mut conn) = manager.connect(&user_id, socket).await else {
            return;
        };
        drop(user_id);
        loop {
            let message = match conn.recv().await {
                Some(Ok(message)) => message,
                _ => break,
            };
            let Some(text) = message.as_text() else {
                continue;
            };
            match serde_json::from_str::<Kind<'_>>(text)
                .ok()
                .and_then(|k| k.kind)
            {
                Some("echo") if conn.send(&message).is_err() => break,
                Some("broadcast") => {
                    let _ = manager.broadcast(&message).await;
                }
                _ => {}
            }
        }
    };
    let size = future_size(&handler);
    assert!(size <= 160, "the handler's future is {size} bytes");
}

/// The simplest handler, `while let Some(..) = conn.recv().await {}`: the socket, the
/// connection and `recv`'s future.
#[test]
fn a_minimal_handler_is_ten_words() {
    let manager = ConnectionManager::new(WebSocketConfig::default());
    let handler = move |socket: WebSocket| async move {
        let Ok(mut conn) = manager.connect("u", socket).await else {
            return;
        };
        while conn.recv().await.is_some() {}
    };
    let size = future_size(&handler);
    assert!(size <= 80, "the handler's future is {size} bytes");
}
