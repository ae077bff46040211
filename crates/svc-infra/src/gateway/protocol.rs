//! `GET /ws` and its JSON protocol (`docs/protocol.md`): the requests, and what each one
//! does and answers.

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{
    Gateway,
    rate::{Limiter, Verdict},
};
use crate::{
    auth::OptionalWsIdentity,
    websocket::{
        Connection, Metadata, PreparedMessage, PublishOptions, StreamPosition, WebSocket,
        WebSocketError, WebSocketMessage, WsUpgrade, now_us,
    },
};

/// The longest user id (`?user=`) or room name accepted, in bytes.
const MAX_NAME_BYTES: usize = 128;

/// The prefix of a user's own stream: with history on, `send` to user V goes to the room
/// `@user:V`, which only V's connections are in (each joins its own at connect), so that
/// direct messages have positions and are recovered like a room's.
pub(crate) const USER_STREAM: &str = "@user:";

/// The room of `user`'s own stream.
pub(crate) fn user_stream(user: &str) -> String {
    format!("{USER_STREAM}{user}")
}

#[derive(Debug, Deserialize)]
pub(super) struct WsQuery {
    user: Option<String>,
}

/// `GET /ws`: the user is the credentials' subject or, for an anonymous connection, `?user=`
/// (else a random `anon-…`); then the connection runs the protocol until it ends.
pub(super) async fn ws(
    ws: WsUpgrade,
    OptionalWsIdentity(principal): OptionalWsIdentity,
    Query(query): Query<WsQuery>,
    State(gw): State<Gateway>,
) -> Response {
    let (user, scopes) = match principal {
        Some(p) => (p.id, p.scopes),
        None => {
            let user = query
                .user
                .filter(|u| !u.trim().is_empty() && u.len() <= MAX_NAME_BYTES)
                .unwrap_or_else(|| format!("anon-{:08x}", rand::random::<u32>()));
            (user, Vec::new())
        }
    };
    let can_broadcast = scopes.iter().any(|s| *s == gw.inner.broadcast_scope);
    let session = Session {
        gw,
        user: Arc::from(user.as_str()),
        can_broadcast,
    };
    ws.for_user(user)
        .on_upgrade(move |socket| session.run(socket))
        .into_response()
}

/// One request of the `/ws` protocol (docs/protocol.md).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Join {
        room: String,
        /// The last position the client saw in this room (a room with history): what
        /// followed is replayed.
        #[serde(default)]
        since: Option<StreamPosition>,
        #[serde(default)]
        id: Option<Value>,
    },
    History {
        room: String,
        #[serde(default)]
        since: Option<StreamPosition>,
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        id: Option<Value>,
    },
    Leave {
        room: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Publish {
        room: String,
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    Send {
        to: String,
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    Broadcast {
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    Echo {
        data: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    Presence {
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        id: Option<Value>,
    },
}

impl Request {
    /// Its `type`, one of [`REQUEST_TYPES`].
    fn kind(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::History { .. } => "history",
            Self::Leave { .. } => "leave",
            Self::Publish { .. } => "publish",
            Self::Send { .. } => "send",
            Self::Broadcast { .. } => "broadcast",
            Self::Echo { .. } => "echo",
            Self::Presence { .. } => "presence",
        }
    }
}

/// One connection of one user, running the protocol.
struct Session {
    gw: Gateway,
    /// The user id, shared with the manager's registry once connected.
    user: Arc<str>,
    can_broadcast: bool,
}

impl Session {
    /// Answers requests until the connection ends. An answer waits for room in the
    /// connection's queue (`Connection::reply`), so a client that sends faster than it reads
    /// is slowed down by TCP rather than disconnected; a client over the request rate gets
    /// `error` answers, and one far over it is closed with 1008.
    ///
    /// This future is the connection's task for its whole life, idle or not, so it holds
    /// only what every connection needs between requests: the session, the connection, the
    /// rate limiter and the message being handled. The rest (joining the user's stream,
    /// handling a request, closing) runs boxed, and the loop is a `loop` + `match` because a
    /// `while let` would keep `recv`'s whole result alive across the request's await.
    #[allow(clippy::manual_async_fn)] // on purpose: see the comment below
    fn run(self, socket: WebSocket) -> impl Future<Output = ()> + Send + 'static {
        // A block, not an `async fn`: an `async fn` keeps its arguments twice in its future
        // (as passed, and as the body's own variables).
        async move {
            let manager = &self.gw.inner.manager;
            let connected = manager.connect_shared(self.user.clone(), socket, Metadata::new());
            let Ok(mut conn) = connected.await else {
                return;
            };
            // Boxed, like every request: it runs once, and would otherwise be part of the task.
            Box::pin(self.join_own_stream(&mut conn)).await;
            let mut limiter = Limiter::new(self.gw.inner.rate, now_us());
            loop {
                let message = match conn.recv().await {
                    Some(Ok(message)) => message,
                    _ => break,
                };
                let verdict = limiter.check(self.gw.inner.rate, now_us());
                if !Box::pin(self.serve(&mut conn, message, verdict)).await {
                    Box::pin(conn.close(1008, "rate limit exceeded")).await;
                    return;
                }
            }
        }
    }

    /// The user's own stream (rooms with history) is joined at once, from its current
    /// position; a client that reconnects re-joins it with `since`, like any room.
    async fn join_own_stream(&self, conn: &mut Connection) {
        let own = user_stream(&self.user);
        if !self.gw.inner.manager.keeps_history(&own) {
            return;
        }
        if let Err(e) = conn.join_room_from(&own, None, |_| None).await {
            tracing::debug!(user = %self.user, error = %e, "the user's stream was not joined");
        }
    }

    /// Handles one request and answers it; `false` when the connection must be closed for
    /// going far over the request rate.
    async fn serve(
        &self,
        conn: &mut Connection,
        message: WebSocketMessage,
        verdict: Verdict,
    ) -> bool {
        let message = &message;
        let rate = self.gw.inner.rate;
        let reply = match verdict {
            Verdict::Allow => self.handle(message, Some(&mut *conn)).await,
            Verdict::Refuse => {
                metrics::counter!("svc_ws_gateway_rate_limited_total").increment(1);
                Some(error(
                    request_id(message),
                    &format!(
                        "rate limit exceeded: at most {} requests per second",
                        rate.per_second
                    ),
                ))
            }
            Verdict::Close => {
                metrics::counter!("svc_ws_gateway_rate_limit_closes_total").increment(1);
                tracing::debug!(
                    user = %self.user,
                    code = 1008,
                    "closing a connection far over the request rate"
                );
                return false;
            }
        };
        let Some(reply) = reply else {
            return true;
        };
        // An answer too large to send (an echo near the limit) becomes an error answer;
        // the connection stays open. If the connection is closing, the next `recv`
        // finishes the close and ends the loop.
        if let Err(e @ WebSocketError::MessageTooLarge { .. }) = conn.reply(reply.to_string()).await
        {
            let _ = conn
                .reply(error(reply.get("id").cloned(), &e.to_string()).to_string())
                .await;
        }
        true
    }

    /// What to answer `message` with, if anything; counted in
    /// `svc_ws_gateway_requests_total{type, outcome}`.
    async fn handle(
        &self,
        message: &WebSocketMessage,
        conn: Option<&mut Connection>,
    ) -> Option<Value> {
        let (kind, answer) = self.answer(message, conn).await;
        let failed = answer
            .as_ref()
            .is_some_and(|a| a.get("type").and_then(Value::as_str) == Some("error"));
        let outcome = if failed { "error" } else { "ok" };
        metrics::counter!("svc_ws_gateway_requests_total", "type" => kind, "outcome" => outcome)
            .increment(1);
        answer
    }

    /// The request's type (`invalid` when it is not a request) and the answer, if any.
    async fn answer(
        &self,
        message: &WebSocketMessage,
        conn: Option<&mut Connection>,
    ) -> (&'static str, Option<Value>) {
        let Some(text) = message.as_text() else {
            let answer = error(None, "binary messages are not part of the protocol");
            return ("invalid", Some(answer));
        };
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").cloned());
                return ("invalid", Some(error(id, &format!("bad request: {e}"))));
            }
        };
        (request.kind(), self.run_request(request, conn).await)
    }

    /// Runs a valid request; the answer, if any. `conn` is the requesting connection
    /// (`None` in the fuzz target, which has none: a join is then a plain join).
    async fn run_request(&self, request: Request, conn: Option<&mut Connection>) -> Option<Value> {
        let m = &self.gw.inner.manager;
        let user: &str = &self.user;
        match request {
            Request::Join { room, since, id } => {
                if let Err(why) = check_name("room", &room) {
                    return Some(error(id, &why));
                }
                if room.starts_with(USER_STREAM) && room != user_stream(user) {
                    return Some(error(id, "a user's stream is joined by that user only"));
                }
                let limit = self.gw.inner.max_rooms_per_user;
                if limit != 0 {
                    let (rooms, member) = m.rooms_of(user, &room);
                    // The user's own stream does not count.
                    let own = m.rooms_of(user, &user_stream(user)).1;
                    let rooms = rooms - usize::from(own);
                    if rooms >= limit && !member {
                        metrics::counter!("svc_ws_gateway_room_limit_total").increment(1);
                        return Some(error(
                            id,
                            &format!("room limit reached: a user may be in {limit} rooms"),
                        ));
                    }
                }
                let Some(conn) = conn else {
                    m.join_room(user, &room).await;
                    return id.map(ack);
                };
                // A room with history: the `joined` answer goes first, then what was
                // missed, then the live publications (the library orders them).
                let answer_id = id.clone();
                let joined = conn
                    .join_room_from(&room, since, |r| {
                        let answer = json!({
                            "type": "joined",
                            "room": room,
                            "recovered": r.recovered,
                            "offset": r.position.offset,
                            "epoch": r.position.epoch,
                            "replayed": r.replayed,
                        });
                        Some(PreparedMessage::text(
                            &with_id(answer, answer_id).to_string(),
                        ))
                    })
                    .await;
                match joined {
                    Ok(Some(_)) => None,
                    Ok(None) => id.map(ack),
                    Err(e) => Some(error(id, &e.to_string())),
                }
            }
            Request::History {
                room,
                since,
                limit,
                id,
            } => {
                if room.starts_with(USER_STREAM) && room != user_stream(user) {
                    return Some(error(id, "a user's stream is read by that user only"));
                }
                let max = m.config().history_recovery_max.max(1);
                let limit = limit.unwrap_or(max).min(max);
                let after = since.as_ref().map_or(0, |s| s.offset);
                match m.history_of(&room, after, limit).await {
                    Ok(Some((top, publications))) => {
                        // A position of another epoch matches nothing of this stream.
                        let stale = since
                            .as_ref()
                            .is_some_and(|s| s.offset != 0 && s.epoch != top.epoch);
                        let publications: Vec<Value> = if stale {
                            Vec::new()
                        } else {
                            publications
                                .iter()
                                .filter_map(|(_, frame)| message_json(frame))
                                .collect()
                        };
                        let answer = json!({
                            "type": "history",
                            "room": room,
                            "offset": top.offset,
                            "epoch": top.epoch,
                            "publications": publications,
                        });
                        Some(with_id(answer, id))
                    }
                    Ok(None) => Some(error(id, &format!("room {room} keeps no history"))),
                    Err(e) => Some(error(id, &e.to_string())),
                }
            }
            Request::Leave { room, id } => {
                m.leave_room(user, &room).await;
                id.map(ack)
            }
            Request::Publish { room, data, id } => {
                if room.starts_with(USER_STREAM) {
                    return Some(error(id, "a user's stream is written by `send` only"));
                }
                let out = outgoing(user, Some(&room), data);
                let options = PublishOptions::default()
                    .exclude_user(user)
                    .embed_position();
                match m.publish(&room, out, options).await {
                    Ok(Some(position)) => id.map(|id| {
                        json!({"type": "ack", "id": id, "offset": position.offset, "epoch": position.epoch})
                    }),
                    Ok(None) => id.map(ack),
                    Err(e) => Some(error(id, &e.to_string())),
                }
            }
            Request::Send { to, data, id } => match send(m, user, &to, data).await {
                Ok(Some(position)) => id.map(|id| {
                    json!({"type": "ack", "id": id, "offset": position.offset, "epoch": position.epoch})
                }),
                Ok(None) => id.map(ack),
                Err(e) => Some(error(id, &e.to_string())),
            },
            Request::Broadcast { data, id } => {
                if !self.can_broadcast {
                    let scope = &self.gw.inner.broadcast_scope;
                    return Some(error(id, &format!("broadcast needs the `{scope}` scope")));
                }
                match m.broadcast(outgoing(user, None, data)).await {
                    Ok(_) => id.map(ack),
                    Err(e) => Some(error(id, &e.to_string())),
                }
            }
            Request::Echo { data, id } => Some(with_id(json!({"type": "echo", "data": data}), id)),
            Request::Presence { room, id } => {
                let users = match &room {
                    Some(room) => m.get_room_users(room),
                    None => m.active_users(),
                };
                Some(with_id(
                    json!({"type": "presence", "room": room, "users": users}),
                    id,
                ))
            }
        }
    }
}

/// The request types of the protocol, the `type` label of `svc_ws_gateway_requests_total`
/// (`invalid`: not a request).
pub(crate) const REQUEST_TYPES: &[&str] = &[
    "join",
    "history",
    "leave",
    "publish",
    "send",
    "broadcast",
    "echo",
    "presence",
    "invalid",
];

/// The `id` of a request that is not handled, if it has one.
fn request_id(message: &WebSocketMessage) -> Option<Value> {
    #[derive(Deserialize)]
    struct Id {
        id: Option<Value>,
    }
    let text = message.as_text()?;
    serde_json::from_str::<Id>(text).ok()?.id
}

/// What `/ws` answers `message` with for `user` (its JSON text), if anything: the protocol
/// without a connection, for the `gateway_request` fuzz target ([`crate::fuzzing`]).
pub(crate) async fn answer(
    gw: &Gateway,
    user: &str,
    can_broadcast: bool,
    message: &WebSocketMessage,
) -> Option<String> {
    let session = Session {
        gw: gw.clone(),
        user: Arc::from(user),
        can_broadcast,
    };
    session.handle(message, None).await.map(|v| v.to_string())
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("a {what} name has 1 to {MAX_NAME_BYTES} bytes"));
    }
    Ok(())
}

/// Sends `data` from `from` to user `to`: through `to`'s own stream when it keeps history
/// (the message then has `"room": "@user:…"` and a position, which is returned), else to
/// `to`'s connections as they are.
pub(super) async fn send(
    m: &crate::websocket::ConnectionManager,
    from: &str,
    to: &str,
    data: Value,
) -> Result<Option<StreamPosition>, WebSocketError> {
    let stream = user_stream(to);
    if m.keeps_history(&stream) {
        let out = outgoing(from, Some(&stream), data);
        m.publish(&stream, out, PublishOptions::default().embed_position())
            .await
    } else {
        m.send_to_user(to, outgoing(from, None, data))
            .await
            .map(|_| None)
    }
}

/// What clients receive from a `publish`, a `send`, a `broadcast` or `POST /api/publish`:
/// `{"type": "message", "from": …, "room": … (rooms only), "data": …}`.
pub(super) fn outgoing(from: &str, room: Option<&str>, data: Value) -> String {
    let mut out = json!({"type": "message", "from": from, "data": data});
    if let (Some(room), Some(obj)) = (room, out.as_object_mut()) {
        obj.insert("room".to_owned(), room.into());
    }
    out.to_string()
}

/// The JSON of a message frame (what a member received), if it is one.
fn message_json(frame: &[u8]) -> Option<Value> {
    let header = crate::websocket::protocol::FrameHeader::parse(frame).ok()??;
    serde_json::from_slice(frame.get(header.len..)?).ok()
}

/// `{"type": "ack", "id": id}`.
fn ack(id: Value) -> Value {
    json!({"type": "ack", "id": id})
}

/// `{"type": "error", "error": why}`, with the request's `id` if it had one.
fn error(id: Option<Value>, why: &str) -> Value {
    with_id(json!({"type": "error", "error": why}), id)
}

fn with_id(mut v: Value, id: Option<Value>) -> Value {
    if let (Some(id), Some(obj)) = (id, v.as_object_mut()) {
        obj.insert("id".to_owned(), id);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's task is `Session::run`'s future for its whole life, idle or not:
    /// with tokio's 96 bytes of task header and trailer it fits a 256-byte task (tokio
    /// aligns tasks to 128 bytes). It held 1,300 bytes before requests were boxed.
    #[test]
    fn a_session_fits_a_256_byte_task() {
        fn future_size<A, B, F: Future>(_: fn(A, B) -> F) -> usize {
            size_of::<F>()
        }
        let size = future_size(Session::run);
        assert!(size <= 152, "Session::run's future is {size} bytes");
    }

    #[test]
    fn requests_parse_strictly() {
        let r: Request = serde_json::from_str(r#"{"type":"join","room":"a","id":1}"#).unwrap();
        assert!(matches!(r, Request::Join { room, id: Some(_), since: None } if room == "a"));
        for bad in [
            r#"{"type":"fly"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"echo","data":1,"extra":2}"#,
            r#"{"room":"a"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_carry_the_id() {
        assert_eq!(ack(json!(7)), json!({"type": "ack", "id": 7}));
        assert_eq!(error(None, "x"), json!({"type": "error", "error": "x"}));
        assert_eq!(
            error(Some(json!("a")), "x"),
            json!({"type": "error", "error": "x", "id": "a"})
        );
        assert!(check_name("room", "").is_err());
        assert!(check_name("room", &"r".repeat(129)).is_err());
        assert!(check_name("room", &"r".repeat(128)).is_ok());
    }
}
