//! [`Connection`]: a registered connection's handle.

use std::{fmt, sync::Arc};

use bytes::Bytes;

use super::{
    hooks::ConnectHook,
    manager::{ConnectionManager, Ended, Refused},
    message::{IntoMessage, PreparedMessage},
    outbound::Outbound,
    registry::{Conn, unix_ms},
    socket::WebSocket,
};
use crate::websocket::{ConnectionInfo, WebSocketError, WebSocketMessage};

/// A registered connection: receive from it, send to it, close it.
///
/// Dropping it (or the peer going away) removes the connection from the manager exactly
/// once, and `on_disconnect` runs exactly once.
pub struct Connection {
    pub(super) socket: WebSocket,
    pub(super) conn: Arc<Conn>,
    pub(super) manager: ConnectionManager,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.conn.id)
            .field("user_id", &self.conn.user_id)
            .field("socket", &self.socket)
            .finish()
    }
}

impl Connection {
    /// The connection id (what [`ConnectionInfo::connection_id`] holds).
    pub fn id(&self) -> String {
        self.conn.id.to_string()
    }

    /// The user this connection belongs to.
    pub fn user_id(&self) -> &str {
        &self.conn.user_id
    }

    /// What the manager knows about this connection.
    pub fn info(&self) -> ConnectionInfo {
        self.conn.info()
    }

    /// The manager this connection is registered with.
    pub fn manager(&self) -> &ConnectionManager {
        &self.manager
    }

    /// Joins this connection's user to `room` (as [`ConnectionManager::join_room`]) and,
    /// for a room with history, brings this connection up to date: with `since` (the last
    /// position it saw, from a message's `offset` and `epoch`), the publications after it
    /// are replayed to it, in order, before any live one, with nothing lost or doubled at
    /// the switch-over; without, it starts at the stream's top. `lead` builds a message
    /// that goes to it first (an answer saying how the recovery went), from what the
    /// recovery achieved.
    ///
    /// Returns `None` for a room without history (a plain join). A recovery that cannot be
    /// proven complete (history too short, epoch changed, more than `recovery_max` missed,
    /// store unreachable) replays nothing and says `recovered: false` with the current
    /// position: the application should reload its state.
    pub async fn join_room_from(
        &mut self,
        room: &str,
        since: Option<crate::websocket::StreamPosition>,
        lead: impl FnOnce(&super::Recovery) -> Option<PreparedMessage>,
    ) -> Result<Option<super::Recovery>, WebSocketError> {
        self.manager.join_from(&self.conn, room, since, lead).await
    }

    /// The underlying socket (close code, latency, subprotocol).
    pub fn socket(&self) -> &WebSocket {
        &self.socket
    }

    /// Receives the next message; `None` once the connection is closed (it is then removed
    /// from the manager). See [`WebSocket::recv`].
    ///
    /// The future is one pointer: a handler waits in it for most of its life, so it is part
    /// of every idle connection's task.
    pub fn recv(
        &mut self,
    ) -> impl Future<Output = Option<Result<WebSocketMessage, WebSocketError>>> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let item = std::task::ready!(self.socket.poll_recv(cx));
            match &item {
                Some(Ok(message)) => {
                    self.conn.touch(unix_ms());
                    self.manager.inner.counters.received(message.len());
                }
                Some(Err(_)) | None => {
                    let ended = Ended::here(self.socket.close_code());
                    self.manager.remove(&self.conn, true, ended);
                }
            }
            std::task::Poll::Ready(item)
        })
    }

    /// Sends a message to this connection only. Never waits: written now or queued. A full
    /// queue applies the manager's slow-consumer policy, counted in
    /// [`ManagerStats`](super::ManagerStats) like a broadcast's: `Disconnect` gives an error
    /// (the connection closes with 1013), the drop policies give `Ok` and count the dropped
    /// message.
    pub fn send(&self, message: impl IntoMessage) -> Result<(), WebSocketError> {
        let message = self.manager.prepare(message)?;
        let counters = &self.manager.inner.counters;
        let (frame, deflated) = frame_for(&message, self.socket.outbound())?;
        if deflated {
            counters.deflated();
        }
        let len = frame.len() as u64;
        match self.socket.send_frame(frame) {
            Ok(true) => {
                self.conn.touch(unix_ms());
                counters.sends(1, len, 0, 0);
            }
            Ok(false) => counters.sends(0, 0, 1, 0),
            Err(e) => {
                if e.close_code() == Some(1013) {
                    counters.sends(0, 0, 0, 1);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends a message to this connection, waiting for room in its queue instead of applying
    /// the slow-consumer policy: for answers to the client's own requests (see
    /// [`WebSocket::reply`]). Broadcasts and sends from elsewhere keep the policy.
    pub async fn reply(&mut self, message: impl IntoMessage) -> Result<(), WebSocketError> {
        let message = self.manager.prepare(message)?;
        let counters = &self.manager.inner.counters;
        let (frame, deflated) = frame_for(&message, self.socket.outbound())?;
        if deflated {
            counters.deflated();
        }
        let len = frame.len() as u64;
        self.socket.reply_frame(frame).await?;
        self.conn.touch(unix_ms());
        counters.sends(1, len, 0, 0);
        Ok(())
    }

    /// Closes the connection with `code` and `reason` and removes it from the manager.
    pub async fn close(mut self, code: u16, reason: &str) {
        self.socket.close(code, reason).await;
        let ended = Ended::here(self.socket.close_code());
        self.manager.remove(&self.conn, true, ended);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A socket still open closes with 1000 as it is dropped (right after this).
        let ended = Ended::here(Some(self.socket.close_code().unwrap_or((1000, ""))));
        self.manager.remove(&self.conn, true, ended);
    }
}

/// A connect the manager turned away: close the socket with the code that says why.
pub(super) async fn refuse(
    mut socket: Box<WebSocket>,
    why: Refused,
) -> Result<Connection, WebSocketError> {
    let (code, reason) = why.close();
    metrics::counter!("svc_ws_connections_refused_total", "reason" => why.reason()).increment(1);
    socket.close(code, reason).await;
    Err(WebSocketError::closed(code, reason))
}

/// The close reason of a connection whose `on_connect` hook failed (code 1011).
const CONNECT_HOOK_FAILED: &str = "connect hook failed";

/// Runs `on_connect`; if it fails, rolls the registration back (without `on_disconnect`:
/// the connection never completed) and closes with 1011.
pub(super) async fn run_connect_hook(
    mut connection: Connection,
    hook: ConnectHook,
) -> Result<Connection, WebSocketError> {
    let manager = connection.manager.clone();
    if let Err(e) = hook(manager.clone(), connection.conn.info()).await {
        tracing::warn!(
            conn_id = connection.conn.id,
            user = &*connection.conn.user_id,
            error = %e,
            "on_connect hook failed; closing with 1011"
        );
        let ended = Ended::here(Some((1011, CONNECT_HOOK_FAILED)));
        manager.remove(&connection.conn, false, ended);
        connection.socket.close(1011, CONNECT_HOOK_FAILED).await;
        return Err(WebSocketError::closed(1011, CONNECT_HOOK_FAILED));
    }
    Ok(connection)
}

/// The frame of `message` for one connection, and whether it was deflated for it. Every
/// message a caller can send has its plain frame; only one that arrived deflated from
/// another node (never handed to callers) can lack it.
fn frame_for(message: &PreparedMessage, out: &Outbound) -> Result<(Bytes, bool), WebSocketError> {
    message.frame_for(out, true).ok_or_else(|| {
        WebSocketError::Protocol("a deflated message from another node does not inflate".into())
    })
}
