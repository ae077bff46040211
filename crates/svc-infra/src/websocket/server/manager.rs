//! [`ConnectionManager`]: who is connected, which rooms they are in, and delivery to them.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    pin::Pin,
    sync::{
        Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::{
    backplane::{Backplane, BackplaneStatus, Envelope, Inbox, Presence, PresenceChange, Topic},
    clock::{now_ms, now_us},
    flush::{Deferred, FlushQueue},
    outbound::{Outbound, Push, SlowConsumerPolicy, ping_frame},
    socket::WebSocket,
};
use crate::websocket::protocol::{self, OP_BINARY, OP_TEXT};
use crate::websocket::{
    BoxError, ConnectionInfo, WebSocketConfig, WebSocketError, WebSocketMessage,
};

/// Application data attached to a connection at [`ConnectionManager::connect_with_metadata`].
pub type Metadata = HashMap<String, serde_json::Value>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A message encoded once, ready to go to any number of connections.
///
/// Server frames are not masked, so the bytes on the wire are the same for every recipient:
/// a broadcast builds them once and every recipient gets a reference-counted clone.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedMessage {
    frame: Bytes,
}

impl fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedMessage")
            .field("frame_len", &self.frame.len())
            .finish()
    }
}

impl PreparedMessage {
    /// A text message.
    pub fn text(text: &str) -> Self {
        Self {
            frame: protocol::encode_frame(OP_TEXT, text.as_bytes()),
        }
    }

    /// A binary message.
    pub fn binary(data: &[u8]) -> Self {
        Self {
            frame: protocol::encode_frame(OP_BINARY, data),
        }
    }

    /// A text message holding `value` as compact JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, WebSocketError> {
        Ok(Self::text(&serde_json::to_string(value)?))
    }

    /// Size of the frame on the wire, header included.
    pub fn wire_len(&self) -> usize {
        self.frame.len()
    }
}

/// Anything the manager can send: text (`&str`, `String`), binary (`Vec<u8>`, `Bytes`,
/// `&[u8]`), a [`WebSocketMessage`], JSON (`serde_json::Value` or [`Json`]`(value)` for any
/// `Serialize`), or an already [`PreparedMessage`]. Whatever it is, it is encoded once per
/// call, never once per recipient.
pub trait IntoMessage {
    /// Encodes the message into a frame.
    fn prepare(self) -> Result<PreparedMessage, WebSocketError>;
}

/// Sends any `Serialize` value as compact JSON text: `manager.broadcast(Json(&event))`.
#[derive(Debug, Clone, Copy)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoMessage for Json<T> {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        PreparedMessage::json(&self.0)
    }
}
impl IntoMessage for PreparedMessage {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(self)
    }
}
impl IntoMessage for &PreparedMessage {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(self.clone())
    }
}
impl IntoMessage for &str {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::text(self))
    }
}
impl IntoMessage for String {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::text(&self))
    }
}
impl IntoMessage for &String {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::text(self))
    }
}
impl IntoMessage for &[u8] {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::binary(self))
    }
}
impl IntoMessage for Vec<u8> {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::binary(&self))
    }
}
impl IntoMessage for Bytes {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(PreparedMessage::binary(&self))
    }
}
impl IntoMessage for WebSocketMessage {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        (&self).prepare()
    }
}
impl IntoMessage for &WebSocketMessage {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        Ok(match self.as_text() {
            Some(text) => PreparedMessage::text(text),
            None => PreparedMessage::binary(self.as_bytes()),
        })
    }
}
impl IntoMessage for serde_json::Value {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        PreparedMessage::json(&self)
    }
}
impl IntoMessage for &serde_json::Value {
    fn prepare(self) -> Result<PreparedMessage, WebSocketError> {
        PreparedMessage::json(self)
    }
}

/// Lifecycle hooks. Both methods default to doing nothing.
///
/// `on_connect` runs after the connection is registered (so a broadcast from inside it
/// reaches the new connection too); if it fails, the registration is rolled back and the
/// socket is closed with 1011. `on_disconnect` runs exactly once per registered connection,
/// after it was removed, however it went (closed by either side, failed send, keepalive,
/// [`ConnectionManager::disconnect_user`], shutdown).
pub trait ConnectionHooks: Send + Sync + 'static {
    /// A connection was registered.
    fn on_connect(
        &self,
        manager: &ConnectionManager,
        info: &ConnectionInfo,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (manager, info);
        async { Ok(()) }
    }

    /// A connection was removed.
    fn on_disconnect(
        &self,
        manager: &ConnectionManager,
        info: &ConnectionInfo,
    ) -> impl Future<Output = ()> + Send {
        let _ = (manager, info);
        async {}
    }
}

type ConnectHook =
    Arc<dyn Fn(ConnectionManager, ConnectionInfo) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(ConnectionManager, ConnectionInfo) -> BoxFuture<()> + Send + Sync>;

#[derive(Clone, Default)]
struct Hooks {
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
}

/// Counters of what the manager did, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ManagerStats {
    /// Connections registered.
    pub connects: u64,
    /// Connections removed.
    pub disconnects: u64,
    /// Frames handed to connections (written or queued).
    pub frames_sent: u64,
    /// Messages dropped by the slow-consumer policy (`DropNewest` / `DropOldest`).
    pub dropped: u64,
    /// Connections closed with 1013 because their queue was full.
    pub slow_consumer_disconnects: u64,
    /// Connections closed with 1011 because they did not answer keepalive pings.
    pub keepalive_timeouts: u64,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    disconnects: AtomicU64,
    frames_sent: AtomicU64,
    dropped: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    keepalive_timeouts: AtomicU64,
}

/// One registered connection, shared by the registry and its [`Connection`] handle.
struct Conn {
    id: u64,
    user_id: Arc<str>,
    out: Arc<Outbound>,
    connected_at: SystemTime,
    /// Milliseconds since the Unix epoch of the last message sent or received.
    last_activity: AtomicU64,
    metadata: Metadata,
    registered: AtomicBool,
}

impl Conn {
    fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            user_id: self.user_id.to_string(),
            connection_id: self.id.to_string(),
            connected_at: self.connected_at,
            last_activity: UNIX_EPOCH
                + Duration::from_millis(self.last_activity.load(Ordering::Relaxed)),
            metadata: self.metadata.clone(),
        }
    }

    fn touch(&self, unix_ms: u64) {
        self.last_activity.store(unix_ms, Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Registry {
    /// user → their connections, in connection order.
    users: HashMap<Arc<str>, Vec<Arc<Conn>>>,
    /// room → its members (users).
    rooms: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// user → the rooms they are in (the reverse index, so leaving all rooms is cheap).
    memberships: HashMap<Arc<str>, HashSet<Arc<str>>>,
    connections: usize,
    /// Every connection, rebuilt lazily after a change, so a broadcast costs one `Arc` clone.
    snapshot: Option<Arc<[Arc<Conn>]>>,
}

impl Registry {
    /// Takes `user` out of every room; returns each room left and whether it became empty
    /// (and is gone).
    fn leave_all_rooms(&mut self, user: &str) -> Vec<(Arc<str>, bool)> {
        let mut left = Vec::new();
        if let Some(rooms) = self.memberships.remove(user) {
            for room in rooms {
                let mut emptied = false;
                if let Some(members) = self.rooms.get_mut(&room) {
                    members.remove(user);
                    if members.is_empty() {
                        self.rooms.remove(&room);
                        emptied = true;
                    }
                }
                left.push((room, emptied));
            }
        }
        left
    }

    /// This node's whole presence, for a heartbeat.
    fn presence_snapshot(&self) -> Vec<PresenceChange> {
        let mut changes: Vec<PresenceChange> = self
            .users
            .keys()
            .map(|u| PresenceChange::Online(u.to_string()))
            .collect();
        for (user, rooms) in &self.memberships {
            for room in rooms {
                changes.push(PresenceChange::Joined {
                    user: user.to_string(),
                    room: room.to_string(),
                });
            }
        }
        changes
    }
}

/// What this node knows of another node of the cluster (from its presence messages).
#[derive(Debug)]
struct RemoteNode {
    users: HashSet<String>,
    rooms: HashMap<String, HashSet<String>>,
    connections: u64,
    seen: std::time::Instant,
    /// Forgotten when silent this long (three of its heartbeats).
    ttl: Duration,
}

impl RemoteNode {
    /// Heard from recently enough to count.
    fn is_live(&self) -> bool {
        self.seen.elapsed() < self.ttl
    }

    fn apply(&mut self, change: &PresenceChange) {
        match change {
            PresenceChange::Online(user) => {
                self.users.insert(user.clone());
            }
            PresenceChange::Offline(user) => {
                self.users.remove(user);
            }
            PresenceChange::Joined { user, room } => {
                self.rooms
                    .entry(room.clone())
                    .or_default()
                    .insert(user.clone());
            }
            PresenceChange::Left { user, room } => {
                if let Some(members) = self.rooms.get_mut(room) {
                    members.remove(user);
                    if members.is_empty() {
                        self.rooms.remove(room);
                    }
                }
            }
        }
    }
}

/// How often a node tells the others its whole presence, unless set otherwise; a node not
/// heard from for three of its own periods is forgotten.
const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(1);

pub(crate) struct Inner {
    config: WebSocketConfig,
    policy: SlowConsumerPolicy,
    registry: RwLock<Registry>,
    hooks: RwLock<Hooks>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    keepalive_started: AtomicBool,
    counters: Counters,
    /// Notified whenever a connection is removed (shutdown waits on it).
    removed: Notify,
    /// `on_disconnect` hooks in flight.
    hook_tasks: TaskTracker,
    /// Connections whose share of a broadcast or keepalive pass waits to be written.
    flush_queue: Arc<FlushQueue>,
    /// This manager's id among the nodes of a cluster (random).
    node: u64,
    /// Carries sends to the other nodes, once set.
    backplane: OnceLock<Arc<dyn Backplane>>,
    /// The other nodes, as their presence messages describe them.
    remote: RwLock<HashMap<u64, RemoteNode>>,
    /// Presence heartbeat period, milliseconds.
    heartbeat_ms: AtomicU64,
}

impl Inner {
    /// Tells the other nodes (if any) what changed here.
    fn announce(&self, connections: usize, changes: impl FnOnce() -> Vec<PresenceChange>) {
        if let Some(b) = self.backplane.get() {
            b.publish_presence(Presence {
                node: self.node,
                snapshot: false,
                connections: connections as u64,
                heartbeat_ms: self.heartbeat().as_millis().min(u128::from(u32::MAX)) as u32,
                changes: changes(),
            });
        }
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed).max(1))
    }

    /// What is known of the other nodes (callers skip those that are no longer live).
    fn live_nodes(&self) -> RwLockReadGuard<'_, HashMap<u64, RemoteNode>> {
        self.remote.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the backplane (if any) about a change of local interest.
    fn interest(&self, topic: impl FnOnce() -> Topic, subscribe: bool) {
        if let Some(b) = self.backplane.get() {
            let topic = topic();
            if subscribe {
                b.subscribe(&topic);
            } else {
                b.unsubscribe(&topic);
            }
        }
    }
}

/// Tracks server-side connections: many per user, rooms of users, broadcast, hooks.
///
/// Cheap to clone (an `Arc`); every clone is the same manager.
///
/// ```no_run
/// use axum::{Router, extract::Path, response::Response, routing::get};
/// use svc_infra::websocket::{ConnectionManager, WsManager, WsUpgrade, add_websocket_manager};
///
/// async fn ws(ws: WsUpgrade, Path(user_id): Path<String>, WsManager(manager): WsManager) -> Response {
///     ws.on_upgrade(move |socket| async move {
///         let Ok(mut conn) = manager.connect(&user_id, socket).await else { return };
///         while let Some(Ok(message)) = conn.recv().await {
///             let _ = manager.broadcast(message).await;
///         }
///     })
/// }
///
/// let (app, manager) = add_websocket_manager(Router::new().route("/ws/{user_id}", get(ws)));
/// # let _: Router = app;
/// ```
#[derive(Clone)]
pub struct ConnectionManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("connections", &self.connection_count())
            .field("rooms", &self.room_count())
            .finish_non_exhaustive()
    }
}

impl Default for ConnectionManager {
    fn default() -> Self {
        Self::new(WebSocketConfig::default())
    }
}

/// A manager configured from the `WS_*` environment (see [`WebSocketConfig::from_env`]).
pub fn easy_websocket_manager() -> Result<ConnectionManager, WebSocketError> {
    Ok(ConnectionManager::new(WebSocketConfig::from_env()?))
}

impl ConnectionManager {
    /// A manager with `config` (limits, keepalive) and the default slow-consumer policy
    /// ([`SlowConsumerPolicy::Disconnect`]).
    pub fn new(config: WebSocketConfig) -> Self {
        Self::with_policy(config, SlowConsumerPolicy::default())
    }

    /// A manager with `config` and the given slow-consumer policy.
    pub fn with_policy(config: WebSocketConfig, policy: SlowConsumerPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                policy,
                registry: RwLock::new(Registry::default()),
                hooks: RwLock::new(Hooks::default()),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                keepalive_started: AtomicBool::new(false),
                counters: Counters::default(),
                removed: Notify::new(),
                hook_tasks: TaskTracker::new(),
                flush_queue: Arc::default(),
                node: rand::random(),
                backplane: OnceLock::new(),
                remote: RwLock::new(HashMap::new()),
                heartbeat_ms: AtomicU64::new(PRESENCE_HEARTBEAT.as_millis() as u64),
            }),
        }
    }

    /// Makes this manager a node of a cluster: every broadcast, room message and message to
    /// a user also reaches the connections of the other managers on `backplane` (see
    /// [`Backplane`]). Sends still return how many of *this* node's connections they
    /// reached. Set it before serving; a manager keeps its first backplane (a second call
    /// is ignored).
    pub fn with_backplane(self, backplane: impl Backplane) -> Self {
        let backplane: Arc<dyn Backplane> = Arc::new(backplane);
        // Under the registry's lock, so that each user and room already here is subscribed
        // exactly once: by this, or by the registration that follows it.
        let reg = self.write();
        if self.inner.backplane.set(backplane.clone()).is_err() {
            tracing::warn!("ConnectionManager::with_backplane: a backplane is already set");
            drop(reg);
            return self;
        }
        backplane.attach(Inbox {
            node: self.inner.node,
            manager: Arc::downgrade(&self.inner),
        });
        backplane.subscribe(&Topic::All);
        for user in reg.users.keys() {
            backplane.subscribe(&Topic::User(user.to_string()));
        }
        for room in reg.rooms.keys() {
            backplane.subscribe(&Topic::Room(room.to_string()));
        }
        drop(reg);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(presence_heartbeat(Arc::downgrade(&self.inner)));
        } else {
            tracing::warn!("with_backplane outside a tokio runtime: no presence heartbeat");
        }
        self
    }

    /// How often this node tells the others who is connected to it (default 1 s); a node
    /// not heard from for three periods is forgotten, its users no longer count.
    pub fn with_presence_heartbeat(self, period: Duration) -> Self {
        self.inner
            .heartbeat_ms
            .store(period.as_millis().max(1) as u64, Ordering::Relaxed);
        self
    }

    /// Whether this node reaches the others: `None` without a backplane (a single node).
    pub fn backplane_status(&self) -> Option<BackplaneStatus> {
        self.inner.backplane.get().map(|b| b.status())
    }

    /// This manager's id among the nodes of a cluster.
    pub fn node_id(&self) -> u64 {
        self.inner.node
    }

    /// Hands `message` to the other nodes (no-op without a backplane).
    fn publish(
        &self,
        topic: impl FnOnce() -> Topic,
        exclude_user: Option<&str>,
        message: &PreparedMessage,
    ) {
        if let Some(b) = self.inner.backplane.get() {
            b.publish(Envelope {
                origin: self.inner.node,
                topic: topic(),
                exclude_user: exclude_user.map(str::to_owned),
                frame: message.frame.clone(),
            });
        }
    }

    /// The configuration connections get (used by [`WsUpgrade`](super::WsUpgrade)).
    pub fn config(&self) -> &WebSocketConfig {
        &self.inner.config
    }

    /// What happens to messages for a connection whose queue is full.
    pub fn slow_consumer_policy(&self) -> SlowConsumerPolicy {
        self.inner.policy
    }

    /// Installs lifecycle hooks, replacing earlier ones.
    pub fn set_hooks<H: ConnectionHooks>(&self, hooks: H) {
        let hooks = Arc::new(hooks);
        let on_connect = hooks.clone();
        let connect: ConnectHook = Arc::new(move |m, info| {
            let h = on_connect.clone();
            Box::pin(async move { h.on_connect(&m, &info).await })
        });
        let disconnect: DisconnectHook = Arc::new(move |m, info| {
            let h = hooks.clone();
            Box::pin(async move { h.on_disconnect(&m, &info).await })
        });
        *self.hooks_mut() = Hooks {
            on_connect: Some(connect),
            on_disconnect: Some(disconnect),
        };
    }

    /// Sets the `on_connect` hook from a closure, replacing an earlier one.
    pub fn on_connect<F, Fut>(&self, hook: F)
    where
        F: Fn(ConnectionManager, ConnectionInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.hooks_mut().on_connect = Some(Arc::new(move |m, i| Box::pin(hook(m, i))));
    }

    /// Sets the `on_disconnect` hook from a closure, replacing an earlier one.
    pub fn on_disconnect<F, Fut>(&self, hook: F)
    where
        F: Fn(ConnectionManager, ConnectionInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks_mut().on_disconnect = Some(Arc::new(move |m, i| Box::pin(hook(m, i))));
    }

    fn hooks(&self) -> Hooks {
        self.inner
            .hooks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn hooks_mut(&self) -> std::sync::RwLockWriteGuard<'_, Hooks> {
        self.inner.hooks.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.inner
            .registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `socket` for `user_id` and returns its [`Connection`].
    ///
    /// Fails (and closes the socket) when the manager is shutting down (1001) or the
    /// `on_connect` hook fails (1011, registration rolled back).
    pub fn connect(
        &self,
        user_id: &str,
        socket: WebSocket,
    ) -> impl Future<Output = Result<Connection, WebSocketError>> + Send + 'static {
        self.connect_with_metadata(user_id, socket, Metadata::new())
    }

    /// [`connect`](Self::connect) with application metadata, reported in
    /// [`ConnectionInfo::metadata`].
    pub fn connect_with_metadata(
        &self,
        user_id: &str,
        socket: WebSocket,
        metadata: Metadata,
    ) -> impl Future<Output = Result<Connection, WebSocketError>> + Send + 'static {
        // Registration is synchronous; the rare slow paths (closing a refused socket,
        // running a hook) are boxed. The future lives inside every connection's task for
        // its whole life, so it is kept to a few words.
        let registered = self.register(user_id, socket, metadata);
        let hook = self.hooks().on_connect;
        async move {
            match registered {
                Err(socket) => Box::pin(refuse(socket)).await,
                Ok(connection) => match hook {
                    None => Ok(connection),
                    Some(hook) => Box::pin(run_connect_hook(connection, hook)).await,
                },
            }
        }
    }

    fn register(
        &self,
        user_id: &str,
        socket: WebSocket,
        metadata: Metadata,
    ) -> Result<Connection, Box<WebSocket>> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Box::new(socket));
        }
        self.start_keepalive();
        let conn = Arc::new(Conn {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            user_id: Arc::from(user_id),
            out: socket.outbound().clone(),
            connected_at: SystemTime::now(),
            last_activity: AtomicU64::new(unix_ms()),
            metadata,
            registered: AtomicBool::new(true),
        });
        {
            let mut reg = self.write();
            let key = match reg.users.get_key_value(user_id) {
                Some((k, _)) => k.clone(),
                None => {
                    self.inner
                        .interest(|| Topic::User(user_id.to_owned()), true);
                    self.inner.announce(reg.connections + 1, || {
                        vec![PresenceChange::Online(user_id.to_owned())]
                    });
                    conn.user_id.clone()
                }
            };
            reg.users.entry(key).or_default().push(conn.clone());
            reg.connections += 1;
            reg.snapshot = None;
        }
        self.inner.counters.connects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("svc_ws_connects_total").increment(1);
        Ok(Connection {
            socket,
            conn,
            manager: self.clone(),
        })
    }

    /// Removes `conn` from the registry if it is still there (exactly once), and runs
    /// `on_disconnect` for it when `notify`.
    fn remove(&self, conn: &Arc<Conn>, notify: bool) -> bool {
        if !conn.registered.swap(false, Ordering::AcqRel) {
            return false;
        }
        {
            let mut reg = self.write();
            if let Some(list) = reg.users.get_mut(&*conn.user_id) {
                list.retain(|c| !Arc::ptr_eq(c, conn));
                if list.is_empty() {
                    reg.users.remove(&*conn.user_id);
                    self.inner
                        .interest(|| Topic::User(conn.user_id.to_string()), false);
                    let left = reg.leave_all_rooms(&conn.user_id);
                    self.unsubscribe_emptied(&left);
                    self.inner.announce(reg.connections - 1, || {
                        let mut changes = vec![PresenceChange::Offline(conn.user_id.to_string())];
                        changes.extend(left.iter().map(|(room, _)| PresenceChange::Left {
                            user: conn.user_id.to_string(),
                            room: room.to_string(),
                        }));
                        changes
                    });
                }
            }
            reg.connections -= 1;
            reg.snapshot = None;
        }
        self.inner
            .counters
            .disconnects
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("svc_ws_disconnects_total").increment(1);
        self.inner.removed.notify_waiters();
        if notify && let Some(hook) = self.hooks().on_disconnect {
            let fut = hook(self.clone(), conn.info());
            self.inner.hook_tasks.spawn(fut);
        }
        true
    }

    /// Unsubscribes from the rooms that `leave_all_rooms` emptied.
    fn unsubscribe_emptied(&self, left: &[(Arc<str>, bool)]) {
        for (room, emptied) in left {
            if *emptied {
                self.inner.interest(|| Topic::Room(room.to_string()), false);
            }
        }
    }

    /// Closes one connection of `user_id` (code 1000) and removes it. Returns whether it
    /// was found.
    pub async fn disconnect(&self, user_id: &str, connection_id: &str) -> bool {
        let Ok(id) = connection_id.parse::<u64>() else {
            return false;
        };
        let found = self
            .read()
            .users
            .get(user_id)
            .and_then(|list| list.iter().find(|c| c.id == id).cloned());
        match found {
            Some(conn) => {
                conn.out.kill(1000, "disconnected");
                self.remove(&conn, true)
            }
            None => false,
        }
    }

    /// Closes every connection of `user_id` (code 1000) and removes them; the user leaves
    /// all rooms. Returns how many connections were closed.
    pub async fn disconnect_user(&self, user_id: &str) -> usize {
        let conns = self.read().users.get(user_id).cloned().unwrap_or_default();
        let mut n = 0;
        for conn in &conns {
            conn.out.kill(1000, "disconnected");
            n += usize::from(self.remove(conn, true));
        }
        if conns.is_empty() {
            // Parity with the Python manager: a user without connections leaves all rooms.
            let mut reg = self.write();
            let left = reg.leave_all_rooms(user_id);
            self.unsubscribe_emptied(&left);
            if !left.is_empty() {
                self.inner.announce(reg.connections, || {
                    left.iter()
                        .map(|(room, _)| PresenceChange::Left {
                            user: user_id.to_owned(),
                            room: room.to_string(),
                        })
                        .collect()
                });
            }
        }
        n
    }

    /// Sends `message` to every connection of `user_id`. Returns how many were reached.
    pub async fn send_to_user(
        &self,
        user_id: &str,
        message: impl IntoMessage,
    ) -> Result<usize, WebSocketError> {
        let message = message.prepare()?;
        let conns = self.read().users.get(user_id).cloned().unwrap_or_default();
        let reached = self.deliver(conns.iter(), &message);
        self.publish(|| Topic::User(user_id.to_owned()), None, &message);
        Ok(reached)
    }

    /// Sends `message` to every connection of every user. Returns how many were reached.
    pub async fn broadcast(&self, message: impl IntoMessage) -> Result<usize, WebSocketError> {
        let message = message.prepare()?;
        let all = self.snapshot();
        let reached = self.deliver(all.iter(), &message);
        self.publish(|| Topic::All, None, &message);
        Ok(reached)
    }

    /// Like [`broadcast`](Self::broadcast), skipping every connection of `exclude_user`.
    pub async fn broadcast_excluding(
        &self,
        message: impl IntoMessage,
        exclude_user: &str,
    ) -> Result<usize, WebSocketError> {
        let message = message.prepare()?;
        let all = self.snapshot();
        let reached = self.deliver(all.iter().filter(|c| &*c.user_id != exclude_user), &message);
        self.publish(|| Topic::All, Some(exclude_user), &message);
        Ok(reached)
    }

    /// Sends `message` to every connection of every member of `room`.
    pub async fn broadcast_to_room(
        &self,
        room: &str,
        message: impl IntoMessage,
    ) -> Result<usize, WebSocketError> {
        let message = message.prepare()?;
        let conns = self.room_connections(room, None);
        let reached = self.deliver(conns.iter(), &message);
        self.publish(|| Topic::Room(room.to_owned()), None, &message);
        Ok(reached)
    }

    /// Like [`broadcast_to_room`](Self::broadcast_to_room), skipping `exclude_user`.
    pub async fn broadcast_to_room_excluding(
        &self,
        room: &str,
        message: impl IntoMessage,
        exclude_user: &str,
    ) -> Result<usize, WebSocketError> {
        let message = message.prepare()?;
        let conns = self.room_connections(room, Some(exclude_user));
        let reached = self.deliver(conns.iter(), &message);
        self.publish(
            || Topic::Room(room.to_owned()),
            Some(exclude_user),
            &message,
        );
        Ok(reached)
    }

    fn room_connections(&self, room: &str, exclude: Option<&str>) -> Vec<Arc<Conn>> {
        let reg = self.read();
        let Some(members) = reg.rooms.get(room) else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|u| exclude != Some(&***u))
            .filter_map(|u| reg.users.get(u))
            .flatten()
            .cloned()
            .collect()
    }

    fn snapshot(&self) -> Arc<[Arc<Conn>]> {
        if let Some(s) = &self.read().snapshot {
            return s.clone();
        }
        let mut reg = self.write();
        if let Some(s) = &reg.snapshot {
            return s.clone();
        }
        let all: Arc<[Arc<Conn>]> = reg.users.values().flatten().cloned().collect();
        reg.snapshot = Some(all.clone());
        all
    }

    /// Hands the frame to each connection; never waits on any of them.
    ///
    /// Runs inside tokio's cooperative budget on purpose: after 128 socket writes in one
    /// task poll, further sockets report "not ready", and their frames wait in the
    /// manager's [`FlushQueue`], worked first in, first out by one task that yields
    /// whenever its own budget is spent. When broadcasts come faster than the sockets can
    /// be written, the oldest frames go out first and a connection still waiting when the
    /// next broadcast arrives gets both in one write. Measured on the fan-out benchmark
    /// (docs/benchmarks.md), writing every socket from this loop is several times slower
    /// (p99 0.28–0.47 s against 3.3–4.2 s), and a flusher task per connection or per
    /// broadcast costs more than this queue (see the table there).
    fn deliver<'a>(
        &self,
        conns: impl Iterator<Item = &'a Arc<Conn>>,
        message: &PreparedMessage,
    ) -> usize {
        let now = unix_ms();
        let mut reached = 0;
        let mut dead = Vec::new();
        let (mut dropped, mut overflowed) = (0, 0);
        let mut deferred = Deferred::default();
        for conn in conns {
            match conn.out.push_deferred(message.frame.clone(), &mut deferred) {
                Push::Accepted => {
                    conn.touch(now);
                    reached += 1;
                }
                Push::Dropped => dropped += 1,
                Push::Overflow => {
                    overflowed += 1;
                    dead.push(conn.clone());
                }
                Push::Closed => dead.push(conn.clone()),
            }
        }
        self.inner.flush_queue.extend(deferred);
        self.count_sends(reached as u64, dropped, overflowed);
        for conn in dead {
            // A failed send removes the dead connection.
            self.remove(&conn, true);
        }
        reached
    }

    /// Records what sends did, in [`ManagerStats`] and the `metrics` counters: one place
    /// for broadcasts and [`Connection::send`] alike.
    fn count_sends(&self, sent: u64, dropped: u64, overflowed: u64) {
        let c = &self.inner.counters;
        c.frames_sent.fetch_add(sent, Ordering::Relaxed);
        if dropped > 0 {
            c.dropped.fetch_add(dropped, Ordering::Relaxed);
            metrics::counter!("svc_ws_messages_dropped_total").increment(dropped);
        }
        if overflowed > 0 {
            c.slow_consumer_disconnects
                .fetch_add(overflowed, Ordering::Relaxed);
            metrics::counter!("svc_ws_slow_consumer_disconnects_total").increment(overflowed);
        }
    }

    /// Adds `user_id` to `room` (idempotent). The user need not be connected yet; a user
    /// leaves every room when their last connection closes.
    pub async fn join_room(&self, user_id: &str, room: &str) {
        let mut reg = self.write();
        let user: Arc<str> = Arc::from(user_id);
        let room_key: Arc<str> = match reg.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => {
                self.inner.interest(|| Topic::Room(room.to_owned()), true);
                Arc::from(room)
            }
        };
        let joined = reg
            .rooms
            .entry(room_key.clone())
            .or_default()
            .insert(user.clone());
        reg.memberships.entry(user).or_default().insert(room_key);
        if joined {
            self.inner.announce(reg.connections, || {
                vec![PresenceChange::Joined {
                    user: user_id.to_owned(),
                    room: room.to_owned(),
                }]
            });
        }
    }

    /// Removes `user_id` from `room`; an empty room disappears.
    pub async fn leave_room(&self, user_id: &str, room: &str) {
        let mut reg = self.write();
        if let Some(members) = reg.rooms.get_mut(room) {
            let was_member = members.remove(user_id);
            if members.is_empty() {
                reg.rooms.remove(room);
                self.inner.interest(|| Topic::Room(room.to_owned()), false);
            }
            if was_member {
                self.inner.announce(reg.connections, || {
                    vec![PresenceChange::Left {
                        user: user_id.to_owned(),
                        room: room.to_owned(),
                    }]
                });
            }
        }
        if let Some(rooms) = reg.memberships.get_mut(user_id) {
            rooms.remove(room);
            if rooms.is_empty() {
                reg.memberships.remove(user_id);
            }
        }
    }

    /// What is known about each connection of `user_id` (empty if none).
    pub fn get_user_connections(&self, user_id: &str) -> Vec<ConnectionInfo> {
        self.read()
            .users
            .get(user_id)
            .map(|list| list.iter().map(|c| c.info()).collect())
            .unwrap_or_default()
    }

    /// Whether `user_id` has at least one connection.
    pub fn is_user_connected(&self, user_id: &str) -> bool {
        self.read().users.contains_key(user_id)
            || self
                .inner
                .live_nodes()
                .values()
                .any(|n| n.is_live() && n.users.contains(user_id))
    }

    /// The members of `room` (empty for an unknown room), sorted; with a backplane, on
    /// every node.
    pub fn get_room_users(&self, room: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .read()
            .rooms
            .get(room)
            .map(|m| m.iter().map(|u| u.to_string()).collect())
            .unwrap_or_default();
        for node in self.inner.live_nodes().values() {
            if node.is_live()
                && let Some(members) = node.rooms.get(room)
            {
                users.extend(members.iter().cloned());
            }
        }
        users.sort_unstable();
        users.dedup();
        users
    }

    /// The users with at least one connection, sorted; with a backplane, on every node.
    pub fn active_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.read().users.keys().map(|u| u.to_string()).collect();
        for node in self.inner.live_nodes().values() {
            if node.is_live() {
                users.extend(node.users.iter().cloned());
            }
        }
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Number of connections; with a backplane, on every node (another node's count is as
    /// of its last presence message: at most one heartbeat old).
    pub fn connection_count(&self) -> usize {
        let remote: u64 = self
            .inner
            .live_nodes()
            .values()
            .filter(|n| n.is_live())
            .map(|n| n.connections)
            .sum();
        self.local_connection_count() + remote as usize
    }

    /// Number of connections to this node.
    pub fn local_connection_count(&self) -> usize {
        self.read().connections
    }

    /// Number of rooms with at least one member; with a backplane, on every node.
    pub fn room_count(&self) -> usize {
        let reg = self.read();
        let nodes = self.inner.live_nodes();
        let mut remote: HashSet<&str> = HashSet::new();
        for node in nodes.values().filter(|n| n.is_live()) {
            remote.extend(
                node.rooms
                    .keys()
                    .map(String::as_str)
                    .filter(|r| !reg.rooms.contains_key(*r)),
            );
        }
        reg.rooms.len() + remote.len()
    }

    /// Counters since the manager was created.
    pub fn stats(&self) -> ManagerStats {
        let c = &self.inner.counters;
        ManagerStats {
            connects: c.connects.load(Ordering::Relaxed),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            slow_consumer_disconnects: c.slow_consumer_disconnects.load(Ordering::Relaxed),
            keepalive_timeouts: c.keepalive_timeouts.load(Ordering::Relaxed),
        }
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Graceful shutdown: new connects fail from now on; every connection gets the close
    /// frame (`code`, `reason`, e.g. 1001 "server shutting down") after whatever is already
    /// queued for it; then this waits up to `drain_timeout` for the clients to finish the
    /// closing handshake. Connections still open after that are dropped. `on_disconnect`
    /// hooks have run when this returns.
    pub async fn shutdown(&self, code: u16, reason: &str, drain_timeout: Duration) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let all = self.snapshot();
        for conn in all.iter() {
            conn.out.kill(code, reason.to_owned());
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        loop {
            let removed = self.inner.removed.notified();
            if self.local_connection_count() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, removed).await.is_err() {
                break;
            }
        }
        let left = self.snapshot();
        for conn in left.iter() {
            conn.out.release();
            self.remove(conn, true);
        }
        self.inner.hook_tasks.close();
        let _ = tokio::time::timeout(drain_timeout, self.inner.hook_tasks.wait()).await;
    }

    /// Starts the one keepalive task of this manager (a single timer for all connections).
    fn start_keepalive(&self) {
        let Some(interval) = self.inner.config.ping_interval else {
            return;
        };
        if self.inner.keepalive_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let timeout = self.inner.config.ping_timeout;
        tokio::spawn(keepalive(weak, interval, timeout));
    }
}

/// A connect during shutdown: close the socket with 1001.
async fn refuse(mut socket: Box<WebSocket>) -> Result<Connection, WebSocketError> {
    socket.close(1001, "server shutting down").await;
    Err(WebSocketError::closed(1001, "server shutting down"))
}

/// Runs `on_connect`; if it fails, rolls the registration back (without `on_disconnect`:
/// the connection never completed) and closes with 1011.
async fn run_connect_hook(
    mut connection: Connection,
    hook: ConnectHook,
) -> Result<Connection, WebSocketError> {
    let manager = connection.manager.clone();
    if let Err(e) = hook(manager.clone(), connection.conn.info()).await {
        tracing::warn!(user_id = %connection.conn.user_id, error = %e, "on_connect hook failed; closing with 1011");
        manager.remove(&connection.conn, false);
        connection.socket.close(1011, "connect hook failed").await;
        return Err(WebSocketError::closed(1011, "connect hook failed"));
    }
    Ok(connection)
}

/// Pings connections that have been quiet for `interval`, and closes with 1011 those that
/// did not answer within `timeout`. One task per manager; it ends with the manager.
async fn keepalive(inner: Weak<Inner>, interval: Duration, timeout: Option<Duration>) {
    let tick = timeout
        .map_or(interval, |t| t.min(interval))
        .div_f64(4.0)
        .max(Duration::from_millis(5));
    let ping = ping_frame();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let manager = ConnectionManager { inner };
        let now = now_ms();
        let now_micros = now_us();
        let mut deferred = Deferred::default();
        for conn in manager.snapshot().iter() {
            let sent = conn.out.ping_sent.load(Ordering::Relaxed);
            if let Some(t) = timeout
                && sent != 0
                && now_micros.saturating_sub(sent) > t.as_micros() as u64
            {
                manager
                    .inner
                    .counters
                    .keepalive_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("svc_ws_keepalive_timeouts_total").increment(1);
                conn.out.kill(1011, "keepalive ping timeout");
                manager.remove(conn, true);
                continue;
            }
            let quiet = now.saturating_sub(conn.out.last_seen.load(Ordering::Relaxed));
            if sent == 0 && quiet >= interval.as_millis() as u64 {
                conn.out.send_ping(&ping, &mut deferred);
            }
        }
        manager.inner.flush_queue.extend(deferred);
    }
}

/// A registered connection: receive from it, send to it, close it.
///
/// Dropping it (or the peer going away) removes the connection from the manager exactly
/// once, and `on_disconnect` runs exactly once.
pub struct Connection {
    socket: WebSocket,
    conn: Arc<Conn>,
    manager: ConnectionManager,
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

    /// The underlying socket (close code, latency, subprotocol).
    pub fn socket(&self) -> &WebSocket {
        &self.socket
    }

    /// Receives the next message; `None` once the connection is closed (it is then removed
    /// from the manager). See [`WebSocket::recv`].
    pub async fn recv(&mut self) -> Option<Result<WebSocketMessage, WebSocketError>> {
        let item = self.socket.recv().await;
        match &item {
            Some(Ok(_)) => self.conn.touch(unix_ms()),
            Some(Err(_)) | None => {
                self.manager.remove(&self.conn, true);
            }
        }
        item
    }

    /// Sends a message to this connection only. Never waits: written now or queued. A full
    /// queue applies the manager's slow-consumer policy, counted in [`ManagerStats`] like a
    /// broadcast's: `Disconnect` gives an error (the connection closes with 1013), the drop
    /// policies give `Ok` and count the dropped message.
    pub fn send(&self, message: impl IntoMessage) -> Result<(), WebSocketError> {
        let message = message.prepare()?;
        match self.socket.send_frame(message.frame) {
            Ok(true) => {
                self.conn.touch(unix_ms());
                self.manager.count_sends(1, 0, 0);
            }
            Ok(false) => self.manager.count_sends(0, 1, 0),
            Err(e) => {
                if e.close_code() == Some(1013) {
                    self.manager.count_sends(0, 0, 1);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Closes the connection with `code` and `reason` and removes it from the manager.
    pub async fn close(mut self, code: u16, reason: &str) {
        self.socket.close(code, reason).await;
        self.manager.remove(&self.conn, true);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.manager.remove(&self.conn, true);
    }
}

/// Delivers an envelope from another node to this node's connections (see
/// [`Inbox::deliver`]). Never waits. Returns how many connections were reached.
pub(crate) fn deliver_remote(inner: &Arc<Inner>, envelope: &Envelope) -> usize {
    let manager = ConnectionManager {
        inner: inner.clone(),
    };
    let message = PreparedMessage {
        frame: envelope.frame.clone(),
    };
    let exclude = envelope.exclude_user.as_deref();
    let skip = |c: &&Arc<Conn>| exclude != Some(&*c.user_id);
    let reached = match &envelope.topic {
        Topic::All => {
            let all = manager.snapshot();
            manager.deliver(all.iter().filter(skip), &message)
        }
        Topic::Room(room) => {
            let conns = manager.room_connections(room, exclude);
            manager.deliver(conns.iter(), &message)
        }
        Topic::User(user) => {
            let conns = manager
                .read()
                .users
                .get(user.as_str())
                .cloned()
                .unwrap_or_default();
            manager.deliver(conns.iter().filter(skip), &message)
        }
    };
    metrics::counter!("svc_ws_backplane_received_total").increment(1);
    reached
}

/// Records another node's presence message (see [`Inbox::presence`]).
pub(crate) fn remote_presence(inner: &Inner, presence: &Presence) {
    let mut nodes = inner.remote.write().unwrap_or_else(|p| p.into_inner());
    let node = nodes.entry(presence.node).or_insert_with(|| RemoteNode {
        users: HashSet::new(),
        rooms: HashMap::new(),
        connections: 0,
        seen: std::time::Instant::now(),
        ttl: Duration::ZERO,
    });
    if presence.snapshot {
        node.users.clear();
        node.rooms.clear();
    }
    for change in &presence.changes {
        node.apply(change);
    }
    node.connections = presence.connections;
    node.seen = std::time::Instant::now();
    node.ttl = Duration::from_millis(u64::from(presence.heartbeat_ms.max(1))) * 3;
}

/// Tells the other nodes this node's whole presence every heartbeat, and forgets the nodes
/// not heard from for three; ends with the manager.
async fn presence_heartbeat(inner: Weak<Inner>) {
    loop {
        let Some(period) = inner.upgrade().map(|i| i.heartbeat()) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(backplane) = inner.backplane.get() else {
            return;
        };
        let (connections, changes) = {
            let reg = inner.registry.read().unwrap_or_else(|p| p.into_inner());
            (reg.connections, reg.presence_snapshot())
        };
        backplane.publish_presence(Presence {
            node: inner.node,
            snapshot: true,
            connections: connections as u64,
            heartbeat_ms: inner.heartbeat().as_millis().min(u128::from(u32::MAX)) as u32,
            changes,
        });
        inner
            .remote
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, n| n.seen.elapsed() < n.ttl);
    }
}
