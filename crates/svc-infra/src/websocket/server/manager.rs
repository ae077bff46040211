//! [`ConnectionManager`]: registration and removal of connections, rooms, and delivery
//! to them. What it is built from lives beside it: the registry (`registry.rs`), the
//! cluster view (`cluster.rs`), hooks, counters, keepalive, the [`Connection`] handle, and
//! the [`ManagerBuilder`].

use std::{
    borrow::Cow,
    collections::hash_map::Entry,
    fmt,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::{
    backplane::{Backplane, BackplaneStatus, PresenceChange, Topic},
    builder::ManagerBuilder,
    cluster::{Cluster, ClusterNode},
    connection::{Connection, refuse, run_connect_hook},
    flush::{Deferred, FlushQueue},
    history::{HistoryConfig, MemoryHistory},
    hooks::Hooks,
    message::{IntoMessage, PreparedMessage},
    outbound::{Push, SlowConsumerPolicy},
    recovery::History,
    registry::{Conn, Metadata, Registry, UserConns, unix_ms},
    socket::WebSocket,
    stats::{Counters, ManagerStats},
};
use crate::websocket::{ConnectionInfo, WebSocketConfig, WebSocketError};

mod rooms;

/// Why the manager turns a new connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// [`ConnectionManager::shutdown`] has begun.
    ShuttingDown,
    /// `WS_MAX_CONNECTIONS` reached on this node.
    NodeFull,
    /// `WS_MAX_CONNECTIONS_PER_USER` reached by this user on this node.
    UserFull,
}

impl Refused {
    /// The label of `svc_ws_upgrades_refused_total` and `svc_ws_connections_refused_total`.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::ShuttingDown => "shutting_down",
            Self::NodeFull => "node_full",
            Self::UserFull => "user_full",
        }
    }

    /// The close code and reason of a socket refused after its upgrade.
    pub(super) fn close(self) -> (u16, &'static str) {
        match self {
            Self::ShuttingDown => (1001, "server shutting down"),
            Self::NodeFull => (1013, "server full, try again later"),
            Self::UserFull => (1008, "too many connections for this user"),
        }
    }
}

/// How a connection ended, for the one debug line its removal writes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ended<'a> {
    /// The close code and reason, when known.
    pub(super) close: Option<(u16, &'a str)>,
    /// Whether the removal runs in the connection's own task, inside its span (`conn_id`,
    /// `user`); if not (keepalive, another connection's broadcast, `disconnect`, shutdown),
    /// the line is written outside any span, so that it is not taken for that task's.
    pub(super) here: bool,
}

impl<'a> Ended<'a> {
    /// Seen by the connection's own task.
    pub(super) fn here(close: Option<(u16, &'a str)>) -> Self {
        Self { close, here: true }
    }

    /// Decided elsewhere: the close the connection was told to make, if known.
    pub(super) fn elsewhere(close: Option<(u16, &'a str)>) -> Self {
        Self { close, here: false }
    }
}

/// The manager's state, shared by its clones, its connections and its tasks.
pub(crate) struct Inner {
    pub(super) config: WebSocketConfig,
    policy: SlowConsumerPolicy,
    pub(super) registry: RwLock<Registry>,
    hooks: Hooks,
    next_id: AtomicU64,
    pub(super) shutting_down: AtomicBool,
    pub(super) keepalive_started: AtomicBool,
    pub(super) sampler_started: AtomicBool,
    pub(super) counters: Counters,
    /// Notified whenever a connection is removed (shutdown waits on it).
    pub(super) removed: Notify,
    /// `on_disconnect` hooks in flight.
    pub(super) hook_tasks: TaskTracker,
    /// Connections whose share of a broadcast or keepalive pass waits to be written.
    pub(super) flush_queue: Arc<FlushQueue>,
    /// The other nodes, and how to reach them.
    pub(super) cluster: Cluster,
    /// Rooms with history: `None` when no room keeps any.
    pub(super) history: Option<History>,
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
    pub(super) inner: Arc<Inner>,
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
    /// A manager with `config` (limits, keepalive) and everything else at its default:
    /// slow-consumer policy [`SlowConsumerPolicy::Disconnect`], no backplane, no hooks.
    pub fn new(config: WebSocketConfig) -> Self {
        Self::builder(config).build()
    }

    /// A builder for a manager with `config`: slow-consumer policy, backplane, presence
    /// heartbeat and hooks are set there, before the manager serves.
    pub fn builder(config: WebSocketConfig) -> ManagerBuilder {
        ManagerBuilder::new(config)
    }

    pub(super) fn from_parts(
        config: WebSocketConfig,
        policy: SlowConsumerPolicy,
        hooks: Hooks,
        backplane: Option<Arc<dyn Backplane>>,
        heartbeat: Duration,
        history: super::builder::HistorySetup,
    ) -> Self {
        super::metrics::describe_metrics();
        let history_config = history
            .config
            .unwrap_or_else(|| HistoryConfig::from_config(&config));
        let history = history_config.is_enabled().then(|| {
            let store = history
                .store
                .or_else(|| backplane.as_ref().and_then(|b| b.history_store()))
                .unwrap_or_else(|| Arc::new(MemoryHistory::default()));
            History::new(history_config, store, history.check_every)
        });
        let inner = Arc::new(Inner {
            config,
            policy,
            registry: RwLock::new(Registry::default()),
            hooks,
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            keepalive_started: AtomicBool::new(false),
            sampler_started: AtomicBool::new(false),
            counters: Counters::new(),
            removed: Notify::new(),
            hook_tasks: TaskTracker::new(),
            flush_queue: Arc::default(),
            cluster: Cluster::new(backplane, heartbeat),
            history,
        });
        Cluster::attach(&inner);
        Self { inner }
    }

    /// Whether this node reaches the others: `None` without a backplane (a single node).
    pub fn backplane_status(&self) -> Option<BackplaneStatus> {
        self.inner.cluster.status()
    }

    /// The other nodes of the cluster this node hears from (their presence heartbeats),
    /// ordered by id; empty without a backplane.
    pub fn cluster_nodes(&self) -> Vec<ClusterNode> {
        self.inner.cluster.nodes()
    }

    /// This manager's id among the nodes of a cluster.
    pub fn node_id(&self) -> u64 {
        self.inner.cluster.node
    }

    /// The configuration connections get (used by [`WsUpgrade`](super::WsUpgrade)).
    pub fn config(&self) -> &WebSocketConfig {
        &self.inner.config
    }

    /// What happens to messages for a connection whose queue is full.
    pub fn slow_consumer_policy(&self) -> SlowConsumerPolicy {
        self.inner.policy
    }

    /// Encodes `message` once, refusing one larger than `max_message_size` before anything
    /// is sent: the limit holds for what we send as for what we accept.
    pub(super) fn prepare(
        &self,
        message: impl IntoMessage,
    ) -> Result<PreparedMessage, WebSocketError> {
        let message = message.prepare()?;
        let limit = self.inner.config.max_message_size;
        if message.len() > limit {
            return Err(WebSocketError::MessageTooLarge {
                size: message.len(),
                limit,
            });
        }
        Ok(message)
    }

    /// Whether one more connection (of `user`, when known) fits the admission limits
    /// (`WS_MAX_CONNECTIONS`, `WS_MAX_CONNECTIONS_PER_USER`) and the manager is not
    /// shutting down. [`WsUpgrade`](super::WsUpgrade) asks before the upgrade (to answer
    /// 503 or 429); registration asks again under the registry's lock, so the limits hold
    /// however many handshakes race.
    pub(super) fn admits(&self, user: Option<&str>) -> Result<(), Refused> {
        self.admits_in(&self.read(), user)
    }

    fn admits_in(&self, reg: &Registry, user: Option<&str>) -> Result<(), Refused> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        let config = &self.inner.config;
        if config.max_connections != 0 && reg.connections >= config.max_connections {
            return Err(Refused::NodeFull);
        }
        let limit = config.max_connections_per_user;
        if let Some(user) = user
            && limit != 0
            && reg.users.get(user).is_some_and(|c| c.len() >= limit)
        {
            return Err(Refused::UserFull);
        }
        Ok(())
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Registry> {
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
    /// Fails (and closes the socket) when the manager is shutting down (1001), when the
    /// node or the user is at its connection limit (`WS_MAX_CONNECTIONS`: 1013 "server
    /// full", `WS_MAX_CONNECTIONS_PER_USER`: 1008 "too many connections for this user"), or
    /// when the `on_connect` hook fails (1011, registration rolled back).
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
        self.connect_shared(Arc::from(user_id), socket, metadata)
    }

    /// [`connect_with_metadata`](Self::connect_with_metadata) with the user id already
    /// shared: the registry keeps this `Arc`, so a caller that holds the id for the life of
    /// the connection (the gateway's session) does not hold a second copy.
    pub(crate) fn connect_shared(
        &self,
        user_id: Arc<str>,
        socket: WebSocket,
        metadata: Metadata,
    ) -> impl Future<Output = Result<Connection, WebSocketError>> + Send + 'static {
        // Registration is synchronous; the rare slow paths (closing a refused socket,
        // running a hook) are boxed. The future lives inside every connection's task for
        // its whole life, so it is kept to a few words.
        let registered = self.register(user_id, socket, metadata);
        let hook = self.inner.hooks.on_connect.clone();
        async move {
            match registered {
                Err((socket, why)) => Box::pin(refuse(socket, why)).await,
                Ok(connection) => match hook {
                    None => Ok(connection),
                    Some(hook) => Box::pin(run_connect_hook(connection, hook)).await,
                },
            }
        }
    }

    fn register(
        &self,
        shared_id: Arc<str>,
        socket: WebSocket,
        metadata: Metadata,
    ) -> Result<Connection, (Box<WebSocket>, Refused)> {
        self.start_keepalive();
        self.start_sampler();
        let user_id: &str = &shared_id;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // The connection's span (`WsUpgrade` opens one, at debug) gets its id and user, so
        // every line written in its task names them.
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("conn_id", id);
            span.record("user", user_id);
        }
        let now = unix_ms();
        let conn = Arc::new(Conn {
            id,
            user_id: shared_id.clone(),
            out: socket.outbound().clone(),
            connected_at: now,
            last_activity: AtomicU64::new(now),
            metadata: (!metadata.is_empty()).then(|| Box::new(metadata)),
            registered: AtomicBool::new(true),
        });
        {
            let mut reg = self.write();
            // Asked under the lock (and before the upgrade by `WsUpgrade`): handshakes that
            // passed that check together must not all get in.
            if let Err(why) = self.admits_in(&reg, Some(user_id)) {
                drop(reg);
                let (code, reason) = why.close();
                tracing::debug!(
                    conn_id = id,
                    user = user_id,
                    code,
                    reason,
                    kind = why.reason(),
                    "connection refused after the upgrade"
                );
                return Err((Box::new(socket), why));
            }
            let key = match reg.users.get_key_value(user_id) {
                Some((k, _)) => k.clone(),
                None => {
                    self.inner
                        .cluster
                        .interest(|| Topic::User(user_id.to_owned()), true);
                    self.inner.cluster.announce(reg.connections + 1, || {
                        vec![PresenceChange::Online(user_id.to_owned())]
                    });
                    conn.user_id.clone()
                }
            };
            match reg.users.entry(key) {
                Entry::Occupied(mut conns) => conns.get_mut().push(conn.clone()),
                Entry::Vacant(slot) => {
                    slot.insert(UserConns::One(conn.clone()));
                }
            }
            reg.connections += 1;
            reg.snapshot = None;
        }
        self.inner.counters.connected();
        tracing::debug!(conn_id = id, user = user_id, "connection registered");
        Ok(Connection {
            socket,
            conn,
            manager: self.clone(),
        })
    }

    /// Removes `conn` from the registry if it is still there (exactly once), and runs
    /// `on_disconnect` for it when `notify`. The removal that counts writes one debug line,
    /// "connection closed", with the connection's id and user and how it `ended`.
    pub(super) fn remove(&self, conn: &Arc<Conn>, notify: bool, ended: Ended<'_>) -> bool {
        if !conn.registered.swap(false, Ordering::AcqRel) {
            return false;
        }
        let (code, reason) = ended.close.unzip();
        if ended.here {
            tracing::debug!(
                conn_id = conn.id,
                user = &*conn.user_id,
                code,
                reason,
                "connection closed"
            );
        } else {
            tracing::debug!(
                parent: None,
                conn_id = conn.id,
                user = &*conn.user_id,
                code,
                reason,
                "connection closed"
            );
        }
        {
            let mut reg = self.write();
            if let Some(list) = reg.users.get_mut(&*conn.user_id)
                && list.remove(conn)
            {
                reg.users.remove(&*conn.user_id);
                self.inner
                    .cluster
                    .interest(|| Topic::User(conn.user_id.to_string()), false);
                let left = reg.leave_all_rooms(&conn.user_id);
                self.unsubscribe_emptied(&left);
                self.inner.cluster.announce(reg.connections - 1, || {
                    let mut changes = vec![PresenceChange::Offline(conn.user_id.to_string())];
                    changes.extend(left.iter().map(|(room, _)| PresenceChange::Left {
                        user: conn.user_id.to_string(),
                        room: room.to_string(),
                    }));
                    changes
                });
            }
            reg.connections -= 1;
            reg.snapshot = None;
        }
        self.inner.counters.disconnected();
        self.inner.removed.notify_waiters();
        if notify && let Some(hook) = &self.inner.hooks.on_disconnect {
            let fut = hook(self.clone(), conn.info());
            self.inner.hook_tasks.spawn(fut);
        }
        true
    }

    /// Unsubscribes from the rooms that `leave_all_rooms` emptied.
    fn unsubscribe_emptied(&self, left: &[(Arc<str>, bool)]) {
        for (room, emptied) in left {
            if *emptied {
                self.inner
                    .cluster
                    .interest(|| Topic::Room(room.to_string()), false);
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
                self.remove(&conn, true, Ended::elsewhere(Some((1000, "disconnected"))))
            }
            None => false,
        }
    }

    /// Closes every connection of `user_id` (code 1000) and removes them; the user leaves
    /// all rooms. Returns how many connections were closed.
    pub async fn disconnect_user(&self, user_id: &str) -> usize {
        let conns = self.read().user_connections(user_id);
        let mut n = 0;
        for conn in &conns {
            conn.out.kill(1000, "disconnected");
            n += usize::from(self.remove(
                conn,
                true,
                Ended::elsewhere(Some((1000, "disconnected"))),
            ));
        }
        if conns.is_empty() {
            // Parity with the Python manager: a user without connections leaves all rooms.
            let mut reg = self.write();
            let left = reg.leave_all_rooms(user_id);
            self.unsubscribe_emptied(&left);
            if !left.is_empty() {
                self.inner.cluster.announce(reg.connections, || {
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
        let message = self.prepare(message)?;
        let conns = self.read().user_connections(user_id);
        let reached = self.deliver(conns.iter(), &message);
        self.inner.cluster.publish(
            || Topic::User(user_id.to_owned()),
            None,
            message.backplane_frame(),
        );
        Ok(reached)
    }

    /// Sends `message` to every connection of every user. Returns how many were reached.
    pub async fn broadcast(&self, message: impl IntoMessage) -> Result<usize, WebSocketError> {
        let message = self.prepare(message)?;
        let all = self.snapshot();
        let reached = self.deliver(all.iter(), &message);
        self.inner
            .cluster
            .publish(|| Topic::All, None, message.backplane_frame());
        Ok(reached)
    }

    /// Like [`broadcast`](Self::broadcast), skipping every connection of `exclude_user`.
    pub async fn broadcast_excluding(
        &self,
        message: impl IntoMessage,
        exclude_user: &str,
    ) -> Result<usize, WebSocketError> {
        let message = self.prepare(message)?;
        let all = self.snapshot();
        let reached = self.deliver(all.iter().filter(|c| &*c.user_id != exclude_user), &message);
        self.inner
            .cluster
            .publish(|| Topic::All, Some(exclude_user), message.backplane_frame());
        Ok(reached)
    }

    /// Sends `message` to every connection of every member of `room`.
    pub async fn broadcast_to_room(
        &self,
        room: &str,
        message: impl IntoMessage,
    ) -> Result<usize, WebSocketError> {
        let message = self.prepare(message)?;
        let conns = self.read().room_connections(room, None);
        let reached = self.deliver(conns.iter(), &message);
        self.inner.cluster.publish(
            || Topic::Room(room.to_owned()),
            None,
            message.backplane_frame(),
        );
        Ok(reached)
    }

    /// Like [`broadcast_to_room`](Self::broadcast_to_room), skipping `exclude_user`.
    pub async fn broadcast_to_room_excluding(
        &self,
        room: &str,
        message: impl IntoMessage,
        exclude_user: &str,
    ) -> Result<usize, WebSocketError> {
        let message = self.prepare(message)?;
        let conns = self.read().room_connections(room, Some(exclude_user));
        let reached = self.deliver(conns.iter(), &message);
        self.inner.cluster.publish(
            || Topic::Room(room.to_owned()),
            Some(exclude_user),
            message.backplane_frame(),
        );
        Ok(reached)
    }

    pub(super) fn snapshot(&self) -> Arc<[Arc<Conn>]> {
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
    pub(super) fn deliver<'a>(
        &self,
        conns: impl Iterator<Item = &'a Arc<Conn>>,
        message: &PreparedMessage,
    ) -> usize {
        let started = std::time::Instant::now();
        let now = unix_ms();
        let mut reached = 0;
        let mut dead = Vec::new();
        let (mut dropped, mut overflowed) = (0, 0);
        let mut deferred = Deferred::default();
        let (mut bytes, mut deflated) = (0u64, false);
        for conn in conns {
            let Some((frame, made)) = message.frame_for(&conn.out, false) else {
                // Arrived deflated and does not inflate: the caller reports it.
                continue;
            };
            deflated |= made;
            let len = frame.len() as u64;
            match conn.out.push_deferred(frame, &mut deferred) {
                Push::Accepted => {
                    conn.touch(now);
                    reached += 1;
                    bytes += len;
                }
                Push::Dropped => dropped += 1,
                Push::Overflow => {
                    overflowed += 1;
                    dead.push((conn.clone(), true));
                }
                Push::Closed => dead.push((conn.clone(), false)),
            }
        }
        self.inner.flush_queue.extend(deferred);
        let counters = &self.inner.counters;
        counters.sends(reached as u64, bytes, dropped, overflowed);
        if deflated {
            counters.deflated();
        }
        counters.delivered_in(started.elapsed());
        for (conn, overflowed) in dead {
            // A failed send removes the dead connection: a slow consumer closing with 1013,
            // or one that was closing already (with a kill's code, or 1006 when its socket
            // failed).
            let known = if overflowed {
                Some((1013, Cow::Borrowed("slow consumer")))
            } else {
                conn.out.known_close()
            };
            let close = known.as_ref().map(|(code, reason)| (*code, &**reason));
            self.remove(&conn, true, Ended::elsewhere(close));
        }
        reached
    }

    /// What is known about each connection of `user_id` (empty if none).
    pub fn get_user_connections(&self, user_id: &str) -> Vec<ConnectionInfo> {
        self.read()
            .users
            .get(user_id)
            .map(|list| list.iter().map(|c| c.info()).collect())
            .unwrap_or_default()
    }

    /// Whether `user_id` has at least one connection; with a backplane, on any node.
    pub fn is_user_connected(&self, user_id: &str) -> bool {
        self.read().users.contains_key(user_id) || self.inner.cluster.has_user(user_id)
    }

    /// The users with at least one connection, sorted; with a backplane, on every node.
    pub fn active_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.read().users.keys().map(|u| u.to_string()).collect();
        self.inner.cluster.users(&mut users);
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Number of connections; with a backplane, on every node (another node's count is as
    /// of its last presence message: at most one heartbeat old).
    pub fn connection_count(&self) -> usize {
        self.local_connection_count()
            .saturating_add(self.inner.cluster.connections())
    }

    /// Number of connections to this node.
    pub fn local_connection_count(&self) -> usize {
        self.read().connections
    }

    /// Number of rooms with at least one member; with a backplane, on every node.
    pub fn room_count(&self) -> usize {
        let reg = self.read();
        reg.rooms.len()
            + self
                .inner
                .cluster
                .rooms_beyond(|r| reg.rooms.contains_key(r))
    }

    /// Counters since the manager was created.
    pub fn stats(&self) -> ManagerStats {
        self.inner.counters.snapshot()
    }
}
