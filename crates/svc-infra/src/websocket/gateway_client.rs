//! [`GatewayClient`]: a client of the gateway's `/ws` protocol (`docs/protocol.md`) that
//! recovers by itself: it reconnects ([`websocket_connect`]), re-joins every room from the
//! last position it saw, and drops what it has seen already.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    StreamPosition, WebSocketClient, WebSocketError, WebSocketMessage, client::ClientBuilder,
    websocket_connect,
};

/// What a [`GatewayClient`] hands the application.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GatewayEvent {
    /// A message: of a room (`room`), or sent to this user or to everyone (`room: None`).
    /// In a room with history it has its `position`; the client gives each position once.
    Message {
        /// The room it was published to, if any.
        room: Option<String>,
        /// Who sent it.
        from: String,
        /// What was sent.
        data: Value,
        /// Its place in the room's stream (rooms with history).
        position: Option<StreamPosition>,
    },
    /// A room was joined (again, after a reconnect): `recovered` says whether everything
    /// missed meanwhile follows (`replayed` messages).
    Joined {
        /// The room.
        room: String,
        /// Everything after the position the client had was replayed.
        recovered: bool,
        /// The room's position once the replay is done.
        position: StreamPosition,
        /// How many replayed messages follow.
        replayed: u64,
    },
    /// Messages of `room` may have been missed and cannot be replayed (the history does not
    /// reach back, or the room's stream started over): reload what the room shows. The
    /// client goes on from `position`.
    Lost {
        /// The room.
        room: String,
        /// The position the client is at now.
        position: StreamPosition,
    },
    /// Connected (again): the rooms are being re-joined.
    Connected,
    /// The connection ended (with this close code); the client reconnects unless the
    /// reconnect policy gives up, in which case no more events come.
    Disconnected {
        /// The close code (1006: dropped without a close frame).
        code: u16,
    },
    /// Anything else the gateway sent (`presence`, `history`, `echo`, `ack`, `error`), as is.
    Other(Value),
}

/// What a [`GatewayClient`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayClientStats {
    /// Messages dropped because their position had been seen already (a replay and the
    /// live path can overlap around a re-join).
    pub duplicates_dropped: u64,
    /// Gaps seen on the live path (a message whose offset skipped some: the gateway dropped
    /// messages for this client, a slow consumer): each made the client re-join the room
    /// from its last position, so that the gateway replays what was skipped.
    pub gaps: u64,
    /// Connections made (the first included).
    pub connections: u64,
}

enum Command {
    Join(String),
    Leave(String),
    Send(Value),
    Close,
}

struct Shared {
    positions: Mutex<HashMap<String, StreamPosition>>,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    connections: AtomicU64,
}

/// A client of the gateway's `/ws` protocol that recovers by itself.
///
/// It keeps connecting with [`websocket_connect`] (the `WS_RECONNECT_*` policy: backoff with
/// jitter, at once after a 1012), and after every (re)connect re-joins each room it joined,
/// with `since` the last position it saw there, so that the gateway replays what was missed
/// (rooms with history, `WS_HISTORY_SIZE`). Messages whose position it has seen already are
/// dropped ([`GatewayClientStats::duplicates_dropped`]); when the gateway says what was
/// missed cannot be replayed, the application gets [`GatewayEvent::Lost`].
///
/// ```no_run
/// use svc_infra::websocket::{GatewayClient, GatewayEvent};
///
/// # async fn demo() {
/// let mut client = GatewayClient::connect("ws://127.0.0.1:8000/ws?token=…");
/// client.join("chat:lobby");
/// while let Some(event) = client.next_event().await {
///     match event {
///         GatewayEvent::Message { data, position, .. } => println!("{position:?}: {data}"),
///         GatewayEvent::Lost { room, .. } => println!("reload {room}"),
///         _ => {}
///     }
/// }
/// # }
/// ```
pub struct GatewayClient {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Receiver<GatewayEvent>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The `id` prefix of this client's own publications (the room follows).
const OWN_PUBLISH: &str = "svc-ws-client:publish:";

/// Events waiting for the application beyond this many make the connection wait (TCP then
/// slows the gateway down, which applies its slow-consumer policy).
const EVENTS: usize = 1024;

impl GatewayClient {
    /// Connects to a gateway's `/ws` URL (with its token, e.g. `?token=`, or a
    /// [`ClientBuilder`] with headers), recovering rooms after every reconnect. Must be
    /// called inside a tokio runtime: the connection runs in a task of its own, which ends
    /// when the client is dropped or closed, or when the reconnect policy gives up.
    pub fn connect(target: impl Into<ClientBuilder>) -> Self {
        Self::with_recovery(target, true)
    }

    /// [`connect`](Self::connect), choosing whether rooms are re-joined from their last
    /// position (`recover`), or at their current one, as a client without recovery would
    /// (what missed messages cost: `svc-ws bench reliability` compares both).
    pub fn with_recovery(target: impl Into<ClientBuilder>, recover: bool) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let (tx, events) = mpsc::channel(EVENTS);
        let shared = Arc::new(Shared {
            positions: Mutex::new(HashMap::new()),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let task = Task {
            shared: shared.clone(),
            events: tx,
            rooms: HashSet::new(),
            rejoining: HashSet::new(),
            own: HashMap::new(),
            recover,
        };
        tokio::spawn(task.run(target.into(), rx));
        Self {
            commands,
            events,
            shared,
        }
    }

    /// Joins `room`, now if connected and again after every reconnect.
    pub fn join(&self, room: &str) {
        let _ = self.commands.send(Command::Join(room.to_owned()));
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) {
        let _ = self.commands.send(Command::Leave(room.to_owned()));
    }

    /// Publishes `data` to `room`'s other members (if connected; a request made while
    /// disconnected is dropped, as the gateway could not answer it).
    pub fn publish(&self, room: &str, data: Value) {
        // The ack (by this id) says which offset this publication took: the gateway does not
        // send it back to its author, and the gap it leaves in the room is no gap.
        let id = format!("{OWN_PUBLISH}{room}");
        self.request(json!({"type": "publish", "room": room, "data": data, "id": id}));
    }

    /// Sends any request of the protocol (answers come as [`GatewayEvent::Other`]).
    pub fn request(&self, request: Value) {
        let _ = self.commands.send(Command::Send(request));
    }

    /// The next event; `None` once the client is closed or has given up reconnecting.
    pub async fn next_event(&mut self) -> Option<GatewayEvent> {
        self.events.recv().await
    }

    /// The last position seen in `room` (rooms with history).
    pub fn position(&self, room: &str) -> Option<StreamPosition> {
        lock(&self.shared.positions).get(room).cloned()
    }

    /// What the client counted so far.
    pub fn stats(&self) -> GatewayClientStats {
        GatewayClientStats {
            duplicates_dropped: self.shared.duplicates.load(Ordering::Relaxed),
            gaps: self.shared.gaps.load(Ordering::Relaxed),
            connections: self.shared.connections.load(Ordering::Relaxed),
        }
    }

    /// Closes the connection (1000) and stops reconnecting.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

impl Drop for GatewayClient {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connection task.
struct Task {
    shared: Arc<Shared>,
    events: mpsc::Sender<GatewayEvent>,
    rooms: HashSet<String>,
    /// Rooms re-joined after a gap, until their `joined` answer: their messages meanwhile
    /// are dropped (the replay that follows the answer has them).
    rejoining: HashSet<String>,
    /// Per room, the offsets of this client's own publications not yet passed (their epoch
    /// and offsets), which it does not receive: skipped over by the gap check.
    own: HashMap<String, (String, BTreeSet<u64>)>,
    recover: bool,
}

impl Task {
    async fn run(mut self, target: ClientBuilder, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut connections = websocket_connect(target);
        loop {
            // Between connections, commands only change what the next one joins.
            let next = loop {
                tokio::select! {
                    next = connections.next() => break next,
                    command = commands.recv() => match command {
                        None | Some(Command::Close) => return,
                        Some(command) => self.offline(command),
                    },
                }
            };
            let mut ws = match next {
                Some(Ok(ws)) => ws,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "gateway client gives up");
                    return;
                }
                None => return,
            };
            self.shared.connections.fetch_add(1, Ordering::Relaxed);
            if self.events.send(GatewayEvent::Connected).await.is_err() {
                return;
            }
            match self.connected(&mut ws, &mut commands).await {
                Ok(()) => {
                    let _ = ws.close(1000, "").await;
                    return;
                }
                Err(e) => {
                    let code = ws.close_status().map_or(1006, |(code, _)| code);
                    tracing::debug!(error = %e, code, "gateway client disconnected");
                    if self
                        .events
                        .send(GatewayEvent::Disconnected { code })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    fn offline(&mut self, command: Command) {
        match command {
            Command::Join(room) => {
                self.rooms.insert(room);
            }
            Command::Leave(room) => {
                self.rooms.remove(&room);
            }
            Command::Send(_) | Command::Close => {}
        }
    }

    fn join_request(&self, room: &str) -> Value {
        let mut request = json!({"type": "join", "room": room});
        if self.recover
            && let Some(p) = lock(&self.shared.positions).get(room)
        {
            request["since"] = json!({"offset": p.offset, "epoch": p.epoch});
        }
        request
    }

    /// One connection: re-joins, then handles messages and commands until it ends. `Ok`
    /// when the application closed the client.
    async fn connected(
        &mut self,
        ws: &mut WebSocketClient,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), WebSocketError> {
        if !self.recover {
            lock(&self.shared.positions).clear();
        }
        self.rejoining.clear();
        let rooms: Vec<String> = self.rooms.iter().cloned().collect();
        for room in rooms {
            ws.send(self.join_request(&room).to_string()).await?;
        }
        loop {
            tokio::select! {
                received = ws.recv() => {
                    let message = received?;
                    match self.event(&message) {
                        Seen::Event(event) => {
                            if self.events.send(event).await.is_err() {
                                return Ok(());
                            }
                        }
                        Seen::Gap(room) => {
                            // Re-join from the last position: the gateway replays the rest.
                            self.shared.gaps.fetch_add(1, Ordering::Relaxed);
                            let request = self.join_request(&room);
                            self.rejoining.insert(room);
                            ws.send(request.to_string()).await?;
                        }
                        Seen::Nothing => {}
                    }
                }
                command = commands.recv() => match command {
                    None | Some(Command::Close) => return Ok(()),
                    Some(Command::Join(room)) => {
                        let request = self.join_request(&room);
                        self.rooms.insert(room);
                        ws.send(request.to_string()).await?;
                    }
                    Some(Command::Leave(room)) => {
                        self.rooms.remove(&room);
                        ws.send(json!({"type": "leave", "room": room}).to_string()).await?;
                    }
                    Some(Command::Send(request)) => ws.send(request.to_string()).await?,
                },
            }
        }
    }

    /// What a message from the gateway means to the application.
    fn event(&mut self, message: &WebSocketMessage) -> Seen {
        let Some(value) = message
            .as_text()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
        else {
            return Seen::Nothing;
        };
        match self.parse(value) {
            Ok(Some(event)) => Seen::Event(event),
            Ok(None) => Seen::Nothing,
            Err(room) => Seen::Gap(room),
        }
    }

    /// The event of one message, if any; `Err(room)` for a gap in a room's offsets.
    fn parse(&mut self, value: Value) -> Result<Option<GatewayEvent>, String> {
        let room = value.get("room").and_then(Value::as_str).map(str::to_owned);
        let position = position_of(&value);
        let event = match value.get("type").and_then(Value::as_str) {
            Some("message") => {
                if let (Some(room), Some(p)) = (&room, &position) {
                    // The user's own stream (direct messages with history): the gateway
                    // joins it at connect; followed like a room, so that a reconnect
                    // re-joins it from its last position.
                    if room.starts_with("@user:") && !self.rooms.contains(room) {
                        self.rooms.insert(room.clone());
                    }
                    if self.rejoining.contains(room) {
                        return Ok(None); // replayed after the answer
                    }
                    let mut positions = lock(&self.shared.positions);
                    match positions.get(room) {
                        Some(last) if last.epoch == p.epoch && p.offset <= last.offset => {
                            self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                            return Ok(None);
                        }
                        Some(last)
                            if self.recover
                                && last.epoch == p.epoch
                                && p.offset > self.next_expected(room, last) =>
                        {
                            return Err(room.clone());
                        }
                        _ => {
                            if let Some((_, offsets)) = self.own.get_mut(room) {
                                offsets.retain(|o| *o > p.offset);
                            }
                            positions.insert(room.clone(), p.clone());
                        }
                    }
                }
                Some(GatewayEvent::Message {
                    room,
                    from: value["from"].as_str().unwrap_or_default().to_owned(),
                    data: value.get("data").cloned().unwrap_or(Value::Null),
                    position,
                })
            }
            Some("joined") => {
                let (Some(room), Some(position)) = (room, position) else {
                    return Ok(None);
                };
                self.rejoining.remove(&room);
                let recovered = value["recovered"].as_bool().unwrap_or(false);
                let replayed = value["replayed"].as_u64().unwrap_or(0);
                // The replayed messages move the position themselves; without any, the
                // answer says where the room is.
                if !recovered || replayed == 0 {
                    lock(&self.shared.positions).insert(room.clone(), position.clone());
                }
                if recovered {
                    Some(GatewayEvent::Joined {
                        room,
                        recovered,
                        position,
                        replayed,
                    })
                } else {
                    Some(GatewayEvent::Lost { room, position })
                }
            }
            Some("recovery") if value["recovered"] == false => {
                let (Some(room), Some(position)) = (room, position) else {
                    return Ok(None);
                };
                lock(&self.shared.positions).insert(room.clone(), position.clone());
                Some(GatewayEvent::Lost { room, position })
            }
            Some("ack") if self.own_ack(&value) => None,
            _ => Some(GatewayEvent::Other(value)),
        };
        Ok(event)
    }

    /// The offset that should come next in `room` after `last`: past this client's own
    /// publications, which it does not receive.
    fn next_expected(&self, room: &str, last: &StreamPosition) -> u64 {
        let mut next = last.offset + 1;
        if let Some((epoch, offsets)) = self.own.get(room)
            && *epoch == last.epoch
        {
            while offsets.contains(&next) {
                next += 1;
            }
        }
        next
    }

    /// Records the offset of one of this client's own publications from its ack; whether
    /// the ack was one of those.
    fn own_ack(&mut self, ack: &Value) -> bool {
        let Some(room) = ack["id"]
            .as_str()
            .and_then(|id| id.strip_prefix(OWN_PUBLISH))
        else {
            return false;
        };
        if let Some(p) = position_of(ack) {
            let (epoch, offsets) = self.own.entry(room.to_owned()).or_default();
            if *epoch != p.epoch {
                *epoch = p.epoch;
                offsets.clear();
            }
            offsets.insert(p.offset);
        }
        true
    }
}

/// What one message from the gateway amounts to.
enum Seen {
    Event(GatewayEvent),
    /// A room's offsets skipped some: re-join it from the last position.
    Gap(String),
    Nothing,
}

fn position_of(value: &Value) -> Option<StreamPosition> {
    Some(StreamPosition {
        offset: value.get("offset")?.as_u64()?,
        epoch: value.get("epoch")?.as_str()?.to_owned(),
    })
}
