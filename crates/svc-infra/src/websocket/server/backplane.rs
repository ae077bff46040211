//! Carrying sends between nodes, so that one [`ConnectionManager`] per process behaves like
//! one manager for the whole cluster.
//!
//! A manager with a [`Backplane`] delivers every broadcast, room message and message to a
//! user to its own connections as before, and also publishes it as an [`Envelope`]; the
//! other nodes deliver it to theirs. Each node subscribes only to what its own connections
//! need: everything ([`Topic::All`]), the rooms that have members here, and the users who
//! have connections here. An envelope carries its origin node, so nothing is delivered
//! twice, and the frame already encoded, so no node encodes it again. When the origin
//! deflated a broadcast for its own recipients (permessage-deflate), the envelope carries
//! the deflated frame: smaller on the backplane, forwarded as it is to the recipients with
//! compression on every node, and inflated once per node only where a recipient needs it
//! plain, so a broadcast is deflated once in the whole cluster.
//!
//! Two backplanes come with the crate: [`InMemoryBackplane`], which joins managers in one
//! process (tests, or several managers in one binary), and, with the `redis` feature,
//! `RedisBackplane`, over Redis pub/sub. Without a backplane a manager is a single node.
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn demo() -> Result<(), svc_infra::websocket::WebSocketError> {
//! use svc_infra::websocket::{ConnectionManager, WebSocketConfig, backplane::RedisBackplane};
//!
//! let manager = ConnectionManager::builder(WebSocketConfig::from_env()?)
//!     .backplane(RedisBackplane::new("redis://127.0.0.1:6379")?)
//!     .build();
//! // Reaches the connections of every node on this Redis, this one's included.
//! manager.broadcast("hello, cluster").await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`ConnectionManager`]: super::ConnectionManager

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use bytes::{BufMut, Bytes, BytesMut};

use super::history::{HistoryStore, MemoryHistory, StreamPosition};

#[cfg(feature = "redis")]
mod redis_history;
#[cfg(feature = "redis")]
mod redis_pubsub;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_history::RedisHistory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_pubsub::RedisBackplane;

/// What an envelope is addressed to, and what a node subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Topic {
    /// Every connection (a broadcast).
    All,
    /// Every connection of every member of a room.
    Room(String),
    /// Every connection of one user.
    User(String),
}

/// A send crossing nodes: who it is for, whose connections to skip, and the frame.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The node that published it (it has delivered to its own connections already).
    pub origin: u64,
    /// Who it is for.
    pub topic: Topic,
    /// A user whose connections are skipped (`broadcast_excluding` and friends).
    pub exclude_user: Option<String>,
    /// The complete WebSocket frame, encoded once by the origin: plain, or deflated
    /// (permessage-deflate at window 15 without context takeover, RSV1 set in its first
    /// byte) when the origin deflated the message for its own recipients.
    pub frame: Bytes,
    /// When the origin published it (Unix time, microseconds), so that the receiving node
    /// can measure the delivery lag (`svc_ws_backplane_delivery_lag_seconds`). `None` from
    /// nodes that send version 1 of the wire form.
    pub sent_at_us: Option<u64>,
    /// A publication to a stream with history: its position, given by the history store
    /// (which hands positioned envelopes to every node, the origin included).
    pub position: Option<StreamPosition>,
    /// The frame (a JSON object) gets the position as its last fields, `"offset"` and
    /// `"epoch"`, once it is known: each node adds them once, for all its recipients.
    pub embed_position: bool,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("origin", &self.origin)
            .field("topic", &self.topic)
            .field("exclude_user", &self.exclude_user)
            .field("frame_len", &self.frame.len())
            .field("sent_at_us", &self.sent_at_us)
            .field("position", &self.position)
            .field("embed_position", &self.embed_position)
            .finish()
    }
}

/// Why bytes are not an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed backplane envelope: {0}")]
pub struct EnvelopeError(&'static str);

const VERSION: u8 = 1;
/// The envelope's wire form with the origin's timestamp.
const VERSION_TIMED: u8 = 2;
/// Version 2's wire form, carrying a deflated frame.
const VERSION_DEFLATED: u8 = 3;
/// A publication to a stream with history: version 2's fields with its position.
const VERSION_POSITIONED: u8 = 4;

impl Envelope {
    /// Whether [`frame`](Self::frame) is deflated (RSV1 set in its first byte).
    pub fn is_deflated(&self) -> bool {
        self.frame
            .first()
            .is_some_and(|b| b & crate::websocket::protocol::RSV1 != 0)
    }

    /// The wire form: version, origin (u64, big-endian), in versions 2 and 3 the time it
    /// was sent (u64, Unix microseconds), topic kind (0 all, 1 room, 2 user) and name (u16
    /// length + UTF-8; empty for all), excluded user (0, or 1 + u16 length + UTF-8), then
    /// the frame. The version says what the frame is: 1 (no time) and 2 a plain frame, 3 a
    /// deflated one ([`is_deflated`](Self::is_deflated); it always travels with a time, 0
    /// when the envelope has none).
    ///
    /// A node reads every version up to its own. One that only knows version 1 drops
    /// version 2 as malformed, and one that knows 1 and 2 drops 3 (rather than send a
    /// deflated frame to a peer without compression, or deflate it twice): every node of
    /// a cluster should run a version that reads 3 before any sends it. A node sends 3
    /// only for a broadcast it deflated for its own recipients.
    pub fn to_bytes(&self) -> Bytes {
        if let Some(position) = &self.position {
            let (head, tail) = self.positioned_parts();
            let mut out = BytesMut::with_capacity(head.len() + tail.len() + 48);
            out.put_slice(&head);
            put_position(&mut out, position.offset, &position.epoch);
            out.put_slice(&tail);
            return out.freeze();
        }
        let (kind, name) = match &self.topic {
            Topic::All => (0u8, ""),
            Topic::Room(r) => (1, r.as_str()),
            Topic::User(u) => (2, u.as_str()),
        };
        let exclude = self.exclude_user.as_deref();
        let mut out = BytesMut::with_capacity(
            16 + name.len() + exclude.map_or(0, str::len) + self.frame.len(),
        );
        match (self.is_deflated(), self.sent_at_us) {
            (false, None) => {
                out.put_u8(VERSION);
                out.put_u64(self.origin);
            }
            (false, Some(at)) => {
                out.put_u8(VERSION_TIMED);
                out.put_u64(self.origin);
                out.put_u64(at);
            }
            (true, at) => {
                out.put_u8(VERSION_DEFLATED);
                out.put_u64(self.origin);
                out.put_u64(at.unwrap_or(0));
            }
        }
        out.put_u8(kind);
        put_str(&mut out, name);
        match exclude {
            None => out.put_u8(0),
            Some(user) => {
                out.put_u8(1);
                put_str(&mut out, user);
            }
        }
        out.put_slice(&self.frame);
        out.freeze()
    }

    /// The wire form of a positioned envelope (version 4) around its position: what comes
    /// before (version, origin, time, flags: 1 = embed the position) and after (topic,
    /// excluded user, frame). Between them go the offset (u8 length + decimal digits) and
    /// the epoch (u8 length + UTF-8): the Redis history store's script puts them there,
    /// once it has given the publication its offset.
    pub fn positioned_parts(&self) -> (Bytes, Bytes) {
        let mut head = BytesMut::with_capacity(18);
        head.put_u8(VERSION_POSITIONED);
        head.put_u64(self.origin);
        head.put_u64(self.sent_at_us.unwrap_or(0));
        head.put_u8(u8::from(self.embed_position));
        let (kind, name) = match &self.topic {
            Topic::All => (0u8, ""),
            Topic::Room(r) => (1, r.as_str()),
            Topic::User(u) => (2, u.as_str()),
        };
        let exclude = self.exclude_user.as_deref();
        let mut tail = BytesMut::with_capacity(
            8 + name.len() + exclude.map_or(0, str::len) + self.frame.len(),
        );
        tail.put_u8(kind);
        put_str(&mut tail, name);
        match exclude {
            None => tail.put_u8(0),
            Some(user) => {
                tail.put_u8(1);
                put_str(&mut tail, user);
            }
        }
        tail.put_slice(&self.frame);
        (head.freeze(), tail.freeze())
    }

    /// This envelope with its place in a stream.
    pub fn positioned(mut self, position: StreamPosition) -> Self {
        self.position = Some(position);
        self
    }

    /// Parses the wire form of [`to_bytes`](Self::to_bytes); anything else is an error,
    /// so that one envelope has one wire form: a deflated frame in version 1 or 2, or a
    /// plain one in version 3, too. The frame is not inflated here (the receiving node
    /// does it only if one of its recipients needs the message plain).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if !matches!(
            version,
            VERSION | VERSION_TIMED | VERSION_DEFLATED | VERSION_POSITIONED
        ) {
            return Err(EnvelopeError("unknown version"));
        }
        let origin = r.u64()?;
        let sent_at_us = if version == VERSION {
            None
        } else {
            Some(r.u64()?)
        };
        let (position, embed_position) = if version == VERSION_POSITIONED {
            let embed = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(EnvelopeError("unknown flags")),
            };
            let offset = r.short()?;
            let offset = std::str::from_utf8(offset)
                .ok()
                .filter(|d| d.len() <= 20 && (d == &"0" || !d.starts_with('0')))
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or(EnvelopeError("bad offset"))?;
            let epoch = std::str::from_utf8(r.short()?)
                .map_err(|_| EnvelopeError("epoch is not UTF-8"))?
                .to_owned();
            if epoch.is_empty() {
                return Err(EnvelopeError("empty epoch"));
            }
            (Some(StreamPosition { offset, epoch }), embed)
        } else {
            (None, false)
        };
        let kind = r.u8()?;
        let name = r.str()?;
        let topic = match kind {
            0 if name.is_empty() => Topic::All,
            0 => return Err(EnvelopeError("a name with topic all")),
            1 => Topic::Room(name),
            2 => Topic::User(name),
            _ => return Err(EnvelopeError("unknown topic kind")),
        };
        let exclude_user = match r.u8()? {
            0 => None,
            1 => Some(r.str()?),
            _ => return Err(EnvelopeError("bad exclude flag")),
        };
        let Some(&first) = r.0.first() else {
            return Err(EnvelopeError("no frame"));
        };
        let deflated = first & crate::websocket::protocol::RSV1 != 0;
        if deflated && version == VERSION_POSITIONED {
            return Err(EnvelopeError("a deflated frame in version 4"));
        }
        if deflated != (version == VERSION_DEFLATED) {
            return Err(EnvelopeError(if deflated {
                "a deflated frame in version 1 or 2"
            } else {
                "a plain frame in version 3"
            }));
        }
        Ok(Self {
            origin,
            topic,
            exclude_user,
            frame: Bytes::copy_from_slice(r.0),
            sent_at_us,
            position,
            embed_position,
        })
    }
}

/// What one node tells the others about who is connected to it, so that
/// `is_user_connected`, `active_users`, `get_room_users` and the counts answer for the whole
/// cluster. Sent as a change when a user's first connection arrives or last one leaves and
/// on every room join and leave, and as a full snapshot at every heartbeat; a node not
/// heard from for three heartbeats is forgotten (it crashed, or the backplane is down).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Presence {
    /// The node this is about.
    pub node: u64,
    /// `true`: `changes` is the node's whole state and replaces what was known of it.
    pub snapshot: bool,
    /// The node's number of connections now.
    pub connections: u64,
    /// How often the node sends a snapshot (milliseconds): it is forgotten when it has
    /// been silent for three of its own periods.
    pub heartbeat_ms: u32,
    /// What changed (or, in a snapshot, everything that holds).
    pub changes: Vec<PresenceChange>,
}

/// One fact about a node's users and rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceChange {
    /// The user has connections on the node.
    Online(String),
    /// The user has no more connections on the node.
    Offline(String),
    /// The user is a member of the room on the node.
    Joined {
        /// The user.
        user: String,
        /// The room.
        room: String,
    },
    /// The user left the room on the node.
    Left {
        /// The user.
        user: String,
        /// The room.
        room: String,
    },
}

impl Presence {
    /// The wire form: version (1), node (u64), snapshot (u8), connections (u64), heartbeat
    /// (u32, milliseconds), then each
    /// change as a kind (0 online, 1 offline, 2 joined, 3 left) and its names (u16 length +
    /// UTF-8).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(24 + self.changes.len() * 16);
        out.put_u8(VERSION);
        out.put_u64(self.node);
        out.put_u8(u8::from(self.snapshot));
        out.put_u64(self.connections);
        out.put_u32(self.heartbeat_ms);
        for change in &self.changes {
            match change {
                PresenceChange::Online(user) => {
                    out.put_u8(0);
                    put_str(&mut out, user);
                }
                PresenceChange::Offline(user) => {
                    out.put_u8(1);
                    put_str(&mut out, user);
                }
                PresenceChange::Joined { user, room } => {
                    out.put_u8(2);
                    put_str(&mut out, user);
                    put_str(&mut out, room);
                }
                PresenceChange::Left { user, room } => {
                    out.put_u8(3);
                    put_str(&mut out, user);
                    put_str(&mut out, room);
                }
            }
        }
        out.freeze()
    }

    /// Parses the wire form of [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(EnvelopeError("unknown version"));
        }
        let node = r.u64()?;
        let snapshot = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(EnvelopeError("bad snapshot flag")),
        };
        let connections = r.u64()?;
        let heartbeat_ms = u32::from_be_bytes(r.take(4)?.try_into().unwrap_or_default());
        let mut changes = Vec::new();
        while !r.0.is_empty() {
            changes.push(match r.u8()? {
                0 => PresenceChange::Online(r.str()?),
                1 => PresenceChange::Offline(r.str()?),
                2 => PresenceChange::Joined {
                    user: r.str()?,
                    room: r.str()?,
                },
                3 => PresenceChange::Left {
                    user: r.str()?,
                    room: r.str()?,
                },
                _ => return Err(EnvelopeError("unknown presence change")),
            });
        }
        Ok(Self {
            node,
            snapshot,
            connections,
            heartbeat_ms,
            changes,
        })
    }
}

/// A position in the middle of a version 4 envelope (see
/// [`Envelope::positioned_parts`]); an epoch longer than 255 bytes is cut (ours have 16).
fn put_position(out: &mut BytesMut, offset: u64, epoch: &str) {
    let digits = offset.to_string();
    out.put_u8(digits.len() as u8);
    out.put_slice(digits.as_bytes());
    let mut end = epoch.len().min(255);
    while !epoch.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u8(end as u8);
    out.put_slice(&epoch.as_bytes()[..end]);
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Names longer than u16::MAX are cut at a character boundary (user ids and room names
    // are far shorter in practice; the receiving node then finds no such user or room).
    let s = crate::websocket::protocol::utf8_prefix(s, usize::from(u16::MAX));
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.0.len() < n {
            return Err(EnvelopeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    /// A u8 length, then that many bytes.
    fn short(&mut self) -> Result<&'a [u8], EnvelopeError> {
        let len = usize::from(self.u8()?);
        self.take(len)
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or_default()))
    }
    fn str(&mut self) -> Result<String, EnvelopeError> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| EnvelopeError("name is not UTF-8"))
    }
}

/// What a node does with what arrives from the others. The manager implements it; it is
/// declared here so that the backplane depends on nothing of the manager.
pub(crate) trait Receiver: Send + Sync + 'static {
    /// Delivers an envelope to this node's connections; returns how many were reached.
    fn deliver(&self, envelope: &Envelope) -> usize;
    /// Records what another node says about its users and rooms.
    fn presence(&self, presence: &Presence);
}

/// Where a backplane hands envelopes from other nodes: the manager that attached it, held
/// weakly, so a backplane never keeps a dropped manager alive.
#[derive(Clone)]
pub struct Inbox {
    node: u64,
    receiver: Arc<dyn Receiver>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").field("node", &self.node).finish()
    }
}

impl Inbox {
    pub(crate) fn new(node: u64, receiver: Arc<dyn Receiver>) -> Self {
        Self { node, receiver }
    }

    /// The id of the node (manager) this inbox belongs to.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Records what another node says about its users and rooms (this node's own presence
    /// is ignored).
    pub fn presence(&self, presence: &Presence) {
        if presence.node != self.node {
            self.receiver.presence(presence);
        }
    }

    /// Delivers an envelope from another node to this node's connections; envelopes this
    /// node published itself are ignored, but for positioned ones (a history store hands
    /// those to every node, the origin included). Never waits. Returns how many
    /// connections were reached (0 once the manager is gone).
    pub fn deliver(&self, envelope: &Envelope) -> usize {
        if envelope.origin == self.node && envelope.position.is_none() {
            return 0;
        }
        self.receiver.deliver(envelope)
    }
}

/// How many times each topic (or channel) was subscribed and not yet unsubscribed: the
/// bookkeeping every backplane needs, since a manager's subscribe and unsubscribe calls
/// are balanced per topic but may nest.
#[derive(Debug)]
pub(crate) struct Interest<K>(HashMap<K, usize>);

impl<K> Default for Interest<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq> Interest<K> {
    /// Counts one more subscription; true when `key` was not wanted before.
    pub(crate) fn add(&mut self, key: K) -> bool {
        let n = self.0.entry(key).or_default();
        *n += 1;
        *n == 1
    }

    /// Counts one fewer; true when `key` is no longer wanted.
    pub(crate) fn remove(&mut self, key: &K) -> bool {
        match self.0.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.0.remove(key);
                true
            }
            None => false,
        }
    }

    /// Whether `key` is wanted.
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.0.contains_key(key)
    }

    /// Every wanted key (the Redis backplane syncs its subscriptions to them).
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.keys()
    }
}

/// Whether a backplane can currently reach the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackplaneStatus {
    /// Connected: sends reach the other nodes.
    Connected,
    /// Not connected (starting, or lost and reconnecting): sends reach this node's
    /// connections only, and what was meant for other nodes is dropped and counted.
    Disconnected,
}

/// Carries sends between the nodes of a cluster (see the [module docs](self)).
///
/// A manager calls [`attach`](Self::attach) once, then [`subscribe`](Self::subscribe) /
/// [`unsubscribe`](Self::unsubscribe) as its local interest changes (always in the order the
/// changes happened, balanced per topic), and [`publish`](Self::publish) for every send.
/// None of them may wait: they are called from the send path, some under the manager's lock.
pub trait Backplane: Send + Sync + fmt::Debug + 'static {
    /// Starts handing envelopes from other nodes to `inbox`.
    fn attach(&self, inbox: Inbox);
    /// Sends `envelope` to the other nodes interested in its topic.
    fn publish(&self, envelope: Envelope);
    /// Tells every other node about this node's users and rooms.
    fn publish_presence(&self, presence: Presence);
    /// This node now has local interest in `topic`.
    fn subscribe(&self, topic: &Topic);
    /// This node no longer has local interest in `topic`.
    fn unsubscribe(&self, topic: &Topic);
    /// Whether the other nodes can be reached now.
    fn status(&self) -> BackplaneStatus;
    /// The history store that goes with this backplane, if it has one: one that hands
    /// publications to the nodes this backplane joins (see
    /// [`HistoryStore::publish`]). A manager with rooms that keep history uses it unless
    /// told otherwise.
    fn history_store(&self) -> Option<Arc<dyn HistoryStore>> {
        None
    }
}

/// Joins the managers of one process: clones share one hub, and every manager given a
/// clone is a node of the same little cluster. Always connected.
#[derive(Default)]
pub struct InMemoryBackplane {
    hub: Arc<Mutex<Hub>>,
    /// The node this clone is attached to (set by `attach`; each clone has its own).
    node: Mutex<Option<u64>>,
}

impl Clone for InMemoryBackplane {
    /// Another handle on the same hub, for another manager.
    fn clone(&self) -> Self {
        Self {
            hub: self.hub.clone(),
            node: Mutex::new(None),
        }
    }
}

#[derive(Default)]
struct Hub {
    nodes: HashMap<u64, Node>,
    /// The history of the managers joined here, shared like everything else.
    history: MemoryHistory,
}

struct Node {
    inbox: Inbox,
    topics: Interest<Topic>,
}

impl fmt::Debug for InMemoryBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = self.lock().nodes.len();
        f.debug_struct("InMemoryBackplane")
            .field("nodes", &nodes)
            .finish()
    }
}

impl InMemoryBackplane {
    /// A new hub with no nodes; clone it for each manager.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self) -> Option<u64> {
        *self.node.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backplane for InMemoryBackplane {
    fn attach(&self, inbox: Inbox) {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(inbox.node);
        self.lock().nodes.insert(
            inbox.node,
            Node {
                inbox,
                topics: Interest::default(),
            },
        );
    }

    fn publish(&self, envelope: Envelope) {
        // Collect the receivers first: delivering may call back into the hub (a hook that
        // joins a room), which must not find it locked.
        let inboxes: Vec<Inbox> = self
            .lock()
            .nodes
            .values()
            .filter(|n| n.inbox.node != envelope.origin && n.topics.contains(&envelope.topic))
            .map(|n| n.inbox.clone())
            .collect();
        for inbox in inboxes {
            inbox.deliver(&envelope);
        }
    }

    fn publish_presence(&self, presence: Presence) {
        let inboxes: Vec<Inbox> = self
            .lock()
            .nodes
            .values()
            .filter(|n| n.inbox.node != presence.node)
            .map(|n| n.inbox.clone())
            .collect();
        for inbox in inboxes {
            inbox.presence(&presence);
        }
    }

    fn subscribe(&self, topic: &Topic) {
        let Some(node) = self.node() else { return };
        if let Some(n) = self.lock().nodes.get_mut(&node) {
            n.topics.add(topic.clone());
        }
    }

    fn unsubscribe(&self, topic: &Topic) {
        let Some(node) = self.node() else { return };
        if let Some(n) = self.lock().nodes.get_mut(&node) {
            n.topics.remove(topic);
        }
    }

    fn status(&self) -> BackplaneStatus {
        BackplaneStatus::Connected
    }

    fn history_store(&self) -> Option<Arc<dyn HistoryStore>> {
        Some(Arc::new(self.lock().history.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_counts_nested_subscriptions() {
        let mut interest = Interest::default();
        assert!(interest.add("a"));
        assert!(!interest.add("a"));
        assert!(!interest.remove(&"a"));
        assert!(interest.contains(&"a"));
        assert!(interest.remove(&"a"));
        assert!(!interest.contains(&"a"));
        assert!(!interest.remove(&"a"), "an unbalanced remove is ignored");
        assert_eq!(interest.keys().count(), 0);
    }

    #[test]
    fn envelopes_round_trip() {
        for (topic, exclude) in [
            (Topic::All, None),
            (Topic::Room("lobby".into()), Some("alice".to_owned())),
            (Topic::User("bob ü".into()), None),
        ] {
            let e = Envelope {
                origin: 0xdead_beef_0102_0304,
                topic,
                exclude_user: exclude,
                frame: Bytes::from_static(b"\x81\x02hi"),
                sent_at_us: None,
                position: None,
                embed_position: false,
            };
            assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
            let timed = Envelope {
                sent_at_us: Some(1_764_500_000_123_456),
                position: None,
                embed_position: false,
                ..e
            };
            let wire = timed.to_bytes();
            assert_eq!(wire[0], 2);
            assert_eq!(Envelope::from_bytes(&wire).unwrap(), timed);
            // A deflated frame (RSV1) travels in version 3, with its time.
            let deflated = Envelope {
                frame: crate::websocket::protocol::encode_deflated_frame(0x1, b"\xca\xc8\x04\x00"),
                ..timed.clone()
            };
            assert!(deflated.is_deflated() && !timed.is_deflated());
            let wire = deflated.to_bytes();
            assert_eq!(wire[0], 3);
            assert_eq!(wire.len(), timed_len(&deflated));
            assert_eq!(Envelope::from_bytes(&wire).unwrap(), deflated);
            // A publication with its position travels in version 4: the position between
            // the parts the Redis script puts it between.
            let positioned = Envelope {
                embed_position: true,
                ..timed.clone()
            }
            .positioned(StreamPosition {
                offset: 1_234_567,
                epoch: "0a1b2c3d4e5f6071".into(),
            });
            let wire = positioned.to_bytes();
            assert_eq!(wire[0], 4);
            let (head, tail) = positioned.positioned_parts();
            let middle = b"\x071234567\x100a1b2c3d4e5f6071";
            assert_eq!(wire, [&head[..], &middle[..], &tail[..]].concat());
            assert_eq!(Envelope::from_bytes(&wire).unwrap(), positioned);
        }
        // A version 4 envelope with a bad offset or epoch, bad flags, a deflated frame.
        let good = Envelope {
            origin: 1,
            topic: Topic::Room("r".into()),
            exclude_user: None,
            frame: Bytes::from_static(b"\x81\x02hi"),
            sent_at_us: Some(5),
            position: None,
            embed_position: false,
        };
        let (head, tail) = good.positioned_parts();
        for middle in [
            &b"\x0201\x01e"[..],
            b"\x00\x01e",
            b"\x021x\x01e",
            b"\x0112\x01e",
            b"\x011\x00",
            b"\x151234567890123456789012\x01e",
        ] {
            let wire = [&head[..], middle, &tail[..]].concat();
            assert!(Envelope::from_bytes(&wire).is_err(), "{middle:?}");
        }
        let mut flags = [&head[..], b"\x011\x01e", &tail[..]].concat();
        flags[17] = 2;
        assert!(Envelope::from_bytes(&flags).is_err());
        let deflated = Envelope {
            frame: crate::websocket::protocol::encode_deflated_frame(0x1, b"\xca\xc8\x04\x00"),
            ..good
        };
        let (head, tail) = deflated.positioned_parts();
        let wire = [&head[..], b"\x011\x01e", &tail[..]].concat();
        assert!(Envelope::from_bytes(&wire).is_err());
    }

    /// The length of a timed envelope's wire form (versions 2 and 3 have the same layout).
    fn timed_len(e: &Envelope) -> usize {
        let name = match &e.topic {
            Topic::All => 0,
            Topic::Room(n) | Topic::User(n) => n.len(),
        };
        let exclude = e.exclude_user.as_ref().map_or(1, |u| 3 + u.len());
        1 + 8 + 8 + 1 + 2 + name + exclude + e.frame.len()
    }

    #[test]
    fn the_version_says_whether_the_frame_is_deflated() {
        let plain = Envelope {
            origin: 7,
            topic: Topic::All,
            exclude_user: None,
            frame: Bytes::from_static(b"\x81\x02hi"),
            sent_at_us: Some(1),
            position: None,
            embed_position: false,
        };
        let deflated = Envelope {
            frame: Bytes::from_static(b"\xc1\x02hi"),
            ..plain.clone()
        };
        // One wire form per envelope: a plain frame in version 3, or a deflated one in
        // version 1 or 2, is an error (an older node would send it on as it is).
        let mut bad = plain.to_bytes().to_vec();
        bad[0] = 3;
        assert!(Envelope::from_bytes(&bad).is_err());
        let mut bad = deflated.to_bytes().to_vec();
        bad[0] = 2;
        assert!(Envelope::from_bytes(&bad).is_err());
        let untimed = Envelope {
            sent_at_us: None,
            position: None,
            embed_position: false,
            ..plain.clone()
        };
        let mut bad = untimed.to_bytes().to_vec();
        *bad.last_mut().unwrap() = b'i';
        let at = bad.len() - 4;
        bad[at] |= 0x40;
        assert!(Envelope::from_bytes(&bad).is_err(), "version 1, RSV1");
        // A deflated envelope without a time is written with time 0.
        let untimed = Envelope {
            sent_at_us: None,
            position: None,
            embed_position: false,
            ..deflated
        };
        let again = Envelope::from_bytes(&untimed.to_bytes()).unwrap();
        assert_eq!(again.sent_at_us, Some(0));
    }

    #[test]
    fn presence_round_trips() {
        let p = Presence {
            node: 42,
            snapshot: true,
            connections: 3,
            heartbeat_ms: 1000,
            changes: vec![
                PresenceChange::Online("alice".into()),
                PresenceChange::Offline("bob".into()),
                PresenceChange::Joined {
                    user: "alice".into(),
                    room: "lobby".into(),
                },
                PresenceChange::Left {
                    user: "carol".into(),
                    room: "lobby".into(),
                },
            ],
        };
        let bytes = p.to_bytes();
        assert_eq!(Presence::from_bytes(&bytes).unwrap(), p);
        // Cut inside any field: an error, never a panic.
        for cut in 1..bytes.len() {
            let _ = Presence::from_bytes(&bytes[..cut]);
        }
        assert!(Presence::from_bytes(&bytes[..21]).is_err());
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        let good = Envelope {
            origin: 7,
            topic: Topic::Room("r".into()),
            exclude_user: Some("u".into()),
            frame: Bytes::from_static(b"\x81\x00"),
            sent_at_us: None,
            position: None,
            embed_position: false,
        }
        .to_bytes();
        // Cut anywhere before the frame's first byte (the frame itself is opaque here).
        for cut in 0..=good.len() - 2 {
            assert!(Envelope::from_bytes(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.to_vec();
        bad[0] = 9;
        assert!(Envelope::from_bytes(&bad).is_err());
        let mut bad = good.to_vec();
        bad[9] = 7; // topic kind
        assert!(Envelope::from_bytes(&bad).is_err());
        // A name with topic all was read and dropped, so two wire forms meant one envelope
        // (found by the backplane_envelope fuzz target: bytes must re-encode to themselves).
        let mut bad = good.to_vec();
        bad[9] = 0; // topic all, name "r"
        assert!(Envelope::from_bytes(&bad).is_err());
    }
}
