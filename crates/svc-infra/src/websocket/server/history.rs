//! Room history with stream positions, so that a client that lost its connection gets what
//! it missed (DESIGN §7).
//!
//! A room configured with history numbers its publications: each gets a
//! [`StreamPosition`], an offset that grows by one per publication across the cluster and
//! the stream's epoch, which changes whenever the stream's past is lost (a store flushed or
//! restarted), so an old offset is never matched against a new stream. The publications are
//! kept, within [`HistoryLimits`], by a [`HistoryStore`]: [`MemoryHistory`] on one node (or
//! several managers of one process joined by an `InMemoryBackplane`), or the Redis store
//! that comes with the `redis` feature's backplane. A store assigns the offset, keeps the
//! publication and hands it to every node in one step, so that every node sees a stream's
//! publications in offset order.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::backplane::{Envelope, Inbox};
pub use crate::websocket::models::StreamPosition;

/// A new random epoch: 16 hex digits.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// How much of a stream's past is kept: at most `size` publications, each for at most
/// `ttl` after it was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Publications kept (the oldest go first); at least 1.
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
}

/// Which rooms keep history, and how much: a default for every room, and rules for rooms
/// whose name starts with a prefix (the longest matching prefix wins).
///
/// ```
/// use std::time::Duration;
/// use svc_infra::websocket::{HistoryConfig, HistoryLimits};
///
/// let history = HistoryConfig::default()
///     .prefix("chat:", Some(HistoryLimits { size: 100, ttl: Duration::from_secs(300) }))
///     .prefix("ticker:", Some(HistoryLimits { size: 1, ttl: Duration::from_secs(60) }));
/// assert_eq!(history.for_room("chat:lobby").map(|l| l.size), Some(100));
/// assert_eq!(history.for_room("lobby"), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryConfig {
    /// What a room no prefix rule matches keeps; `None`: no history (the default).
    pub default: Option<HistoryLimits>,
    /// `(prefix, limits)` rules; `None` limits turn history off for those rooms.
    pub prefixes: Vec<(String, Option<HistoryLimits>)>,
    /// At most this many publications are replayed by one recovery; a client further behind
    /// gets `recovered: false`. Default 300 (as Centrifugo).
    pub recovery_max: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            default: None,
            prefixes: Vec::new(),
            recovery_max: 300,
        }
    }
}

impl HistoryConfig {
    /// What `WS_HISTORY_SIZE`, `WS_HISTORY_TTL` and `WS_HISTORY_RECOVERY_MAX` say: every
    /// room keeps `history_size` publications (none when 0).
    pub fn from_config(config: &crate::websocket::WebSocketConfig) -> Self {
        let limits = (config.history_size > 0).then_some(HistoryLimits {
            size: config.history_size,
            ttl: config.history_ttl,
        });
        Self::default()
            .all_rooms(limits)
            .recovery_max(config.history_recovery_max)
    }

    /// Every room keeps `limits` unless a prefix rule says otherwise.
    pub fn all_rooms(mut self, limits: Option<HistoryLimits>) -> Self {
        self.default = limits.map(HistoryLimits::checked);
        self
    }

    /// Rooms whose name starts with `prefix` keep `limits` (`None`: no history).
    pub fn prefix(mut self, prefix: impl Into<String>, limits: Option<HistoryLimits>) -> Self {
        let prefix = prefix.into();
        self.prefixes.retain(|(p, _)| *p != prefix);
        self.prefixes
            .push((prefix, limits.map(HistoryLimits::checked)));
        self
    }

    /// Sets [`recovery_max`](Self::recovery_max) (at least 1).
    pub fn recovery_max(mut self, publications: usize) -> Self {
        self.recovery_max = publications.max(1);
        self
    }

    /// What `room` keeps, if anything.
    pub fn for_room(&self, room: &str) -> Option<HistoryLimits> {
        self.prefixes
            .iter()
            .filter(|(p, _)| room.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.default, |(_, limits)| *limits)
    }

    /// Whether any room keeps history.
    pub fn is_enabled(&self) -> bool {
        self.default.is_some() || self.prefixes.iter().any(|(_, l)| l.is_some())
    }
}

impl HistoryLimits {
    fn checked(self) -> Self {
        Self {
            size: self.size.max(1),
            ttl: self.ttl.max(Duration::from_millis(1)),
        }
    }
}

/// A stored publication: its offset and what was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Its offset in the stream.
    pub offset: u64,
    /// What was published: the frame, who it was for, whom to skip.
    pub envelope: Envelope,
}

/// What [`HistoryStore::read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    /// The stream's current position: its last offset (0 if nothing was ever published)
    /// and its epoch.
    pub top: StreamPosition,
    /// Publications after the offset asked for, oldest first, at most the limit asked for;
    /// they start later than asked when the older ones are gone.
    pub publications: Vec<Publication>,
}

/// Why a history operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The store cannot be reached (Redis down): nothing was published or read.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version does not understand.
    #[error("history store answered badly: {0}")]
    Protocol(String),
}

/// A boxed future, as the store's methods return (the trait stays object-safe).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HistoryError>> + Send + 'a>>;

/// Keeps streams of publications and hands new ones to every node.
pub trait HistoryStore: Send + Sync + 'static {
    /// Called once by each manager that uses the store, before anything is published:
    /// where this node takes the publications the store hands out.
    fn attach(&self, inbox: Inbox);

    /// Gives `envelope` the next offset of `stream`, keeps it (within `limits`) and hands
    /// it, positioned, to every node, this one included, in one atomic step: no two
    /// publications get one offset, none is skipped, and every node receives a stream's
    /// publications in offset order. Returns the position given.
    fn publish(
        &self,
        stream: &str,
        envelope: Envelope,
        limits: HistoryLimits,
    ) -> StoreFuture<'_, StreamPosition>;

    /// The stream's position and up to `limit` of its publications after offset `after`.
    fn read(&self, stream: &str, after: u64, limit: usize) -> StoreFuture<'_, HistoryRead>;
}

/// History in this process's memory: for one node, or for several managers of one process
/// joined by an `InMemoryBackplane` (they share its store). Bounded per stream by each
/// stream's limits and in total by a byte budget (the oldest publications of any stream
/// go first); publications expire after their TTL. A stream whose publications have all
/// expired is forgotten: its next publication starts a new epoch.
#[derive(Clone)]
pub struct MemoryHistory {
    inner: Arc<Mutex<Memory>>,
}

impl fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.lock();
        f.debug_struct("MemoryHistory")
            .field("streams", &m.streams.len())
            .field("bytes", &m.bytes)
            .field("max_bytes", &m.max_bytes)
            .finish()
    }
}

struct Memory {
    streams: HashMap<Arc<str>, Stream>,
    /// Every kept publication in publication order, across streams, for the byte budget.
    /// Entries whose publication is already gone are skipped (and compacted away).
    order: VecDeque<(Arc<str>, u64)>,
    bytes: usize,
    max_bytes: usize,
    inboxes: Vec<Inbox>,
}

struct Stream {
    epoch: Arc<str>,
    top: u64,
    /// Kept publications, oldest first, with when each expires.
    kept: VecDeque<(Instant, Publication)>,
    /// When the last publication expires: the stream is forgotten after.
    expires: Instant,
}

/// The default byte budget of a [`MemoryHistory`]: 64 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 << 20;

/// What a kept publication costs, beyond its frame: the entry, the order's entry, the
/// envelope's strings.
fn cost(p: &Publication) -> usize {
    let e = &p.envelope;
    e.frame.len() + e.exclude_user.as_ref().map_or(0, String::len) + 96
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new(DEFAULT_MEMORY_BUDGET)
    }
}

impl MemoryHistory {
    /// A store that keeps at most about `max_bytes` of publications in all.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Memory {
                streams: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                max_bytes,
                inboxes: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held by kept publications (as the budget counts them).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Publications kept, in all streams.
    pub fn len(&self) -> usize {
        self.lock().streams.values().map(|s| s.kept.len()).sum()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything, as a restarted store would: every stream starts a new epoch.
    pub fn clear(&self) {
        let mut m = self.lock();
        m.streams.clear();
        m.order.clear();
        m.bytes = 0;
    }
}

impl Memory {
    /// Drops what expired from `stream` (and the stream, once all of it expired).
    fn expire(&mut self, stream: &str, now: Instant) {
        let Some(s) = self.streams.get_mut(stream) else {
            return;
        };
        while s.kept.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, p)) = s.kept.pop_front() {
                self.bytes -= cost(&p);
            }
        }
        if s.kept.is_empty() && s.expires <= now {
            self.streams.remove(stream);
        }
    }

    /// Drops the oldest publications of any stream until the budget holds.
    fn enforce_budget(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((key, offset)) = self.order.pop_front() else {
                break;
            };
            if let Some(s) = self.streams.get_mut(&key)
                && s.kept.front().is_some_and(|(_, p)| p.offset == offset)
                && let Some((_, p)) = s.kept.pop_front()
            {
                self.bytes -= cost(&p);
            }
        }
        // Entries of publications dropped by size or TTL stay in `order` until they reach
        // its front; compact when they outnumber the live ones.
        let live: usize = self.streams.values().map(|s| s.kept.len()).sum();
        if self.order.len() > 2 * live + 1024 {
            let streams = &self.streams;
            self.order.retain(|(key, offset)| {
                streams
                    .get(key)
                    .is_some_and(|s| s.kept.iter().any(|(_, p)| p.offset == *offset))
            });
        }
    }
}

impl HistoryStore for MemoryHistory {
    fn attach(&self, inbox: Inbox) {
        let mut m = self.lock();
        m.inboxes.retain(|i| i.node() != inbox.node());
        m.inboxes.push(inbox);
    }

    fn publish(
        &self,
        stream: &str,
        envelope: Envelope,
        limits: HistoryLimits,
    ) -> StoreFuture<'_, StreamPosition> {
        let now = Instant::now();
        let mut m = self.lock();
        m.expire(stream, now);
        let key: Arc<str> = match m.streams.get_key_value(stream) {
            Some((k, _)) => k.clone(),
            None => Arc::from(stream),
        };
        let s = m.streams.entry(key.clone()).or_insert_with(|| Stream {
            epoch: Arc::from(new_epoch()),
            top: 0,
            kept: VecDeque::new(),
            expires: now,
        });
        s.top += 1;
        let position = StreamPosition {
            offset: s.top,
            epoch: s.epoch.to_string(),
        };
        let publication = Publication {
            offset: s.top,
            envelope,
        };
        let positioned = publication.envelope.clone().positioned(position.clone());
        let mut freed = 0;
        s.kept.push_back((now + limits.ttl, publication.clone()));
        while s.kept.len() > limits.size {
            if let Some((_, p)) = s.kept.pop_front() {
                freed += cost(&p);
            }
        }
        s.expires = s.expires.max(now + limits.ttl);
        m.bytes = m.bytes + cost(&publication) - freed;
        m.order.push_back((key, position.offset));
        m.enforce_budget();
        // Handed out under the lock: every node sees this stream in offset order.
        for inbox in &m.inboxes {
            inbox.deliver(&positioned);
        }
        drop(m);
        Box::pin(std::future::ready(Ok(position)))
    }

    fn read(&self, stream: &str, after: u64, limit: usize) -> StoreFuture<'_, HistoryRead> {
        let mut m = self.lock();
        m.expire(stream, Instant::now());
        let read = match m.streams.get(stream) {
            Some(s) => HistoryRead {
                top: StreamPosition {
                    offset: s.top,
                    epoch: s.epoch.to_string(),
                },
                publications: s
                    .kept
                    .iter()
                    .map(|(_, p)| p)
                    .filter(|p| p.offset > after)
                    .take(limit)
                    .cloned()
                    .collect(),
            },
            // Nothing kept: a stream that does not exist yet, with the epoch its first
            // publication will have... which is not known; an empty epoch matches no
            // client's position, so a recovery against it answers `recovered: false`
            // unless the client had seen nothing either.
            None => HistoryRead {
                top: StreamPosition {
                    offset: 0,
                    epoch: String::new(),
                },
                publications: Vec::new(),
            },
        };
        Box::pin(std::future::ready(Ok(read)))
    }
}
