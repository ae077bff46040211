//! The cluster view: what this node knows of the others (their users, rooms and
//! connection counts, from their presence messages), what it tells them, and delivery of
//! what they send to this node's connections. Without a backplane it is empty and every
//! call here does nothing.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock, RwLockReadGuard, Weak},
    time::Duration,
};

use bytes::Bytes;

use super::{
    backplane::{
        Backplane, BackplaneStatus, Envelope, Inbox, Presence, PresenceChange, Receiver, Topic,
    },
    manager::{ConnectionManager, Inner},
    message::PreparedMessage,
    registry::{Conn, unix_us},
};

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
pub(super) const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(1);

/// Another node of the cluster, as this node last heard of it
/// ([`ConnectionManager::cluster_nodes`](super::ConnectionManager::cluster_nodes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterNode {
    /// The node's id ([`ConnectionManager::node_id`](super::ConnectionManager::node_id) there).
    pub id: u64,
    /// Its connections, as it last said.
    pub connections: u64,
    /// How long ago its last presence message arrived; a node silent for three of its
    /// heartbeats is forgotten.
    pub last_seen: Duration,
}

/// This node's place in the cluster: its id, its backplane (if any), and the other nodes.
pub(super) struct Cluster {
    /// This manager's id among the nodes of a cluster (random).
    pub(super) node: u64,
    /// Carries sends to the other nodes.
    backplane: Option<Arc<dyn Backplane>>,
    /// The other nodes, as their presence messages describe them.
    remote: RwLock<HashMap<u64, RemoteNode>>,
    /// How often this node sends its whole presence.
    heartbeat: Duration,
}

impl Cluster {
    pub(super) fn new(backplane: Option<Arc<dyn Backplane>>, heartbeat: Duration) -> Self {
        Self {
            node: rand::random(),
            backplane,
            remote: RwLock::new(HashMap::new()),
            heartbeat: heartbeat.max(Duration::from_millis(1)),
        }
    }

    /// Starts the backplane's part: hands it this node's inbox, subscribes to broadcasts,
    /// and starts the presence heartbeat. Called once, by the builder, before any
    /// connection exists.
    pub(super) fn attach(inner: &Arc<Inner>) {
        let weak: Weak<Inner> = Arc::downgrade(inner);
        if let Some(history) = &inner.history {
            history.store.attach(Inbox::new(
                inner.cluster.node,
                Arc::new(Arrivals(weak.clone())),
            ));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(super::recovery::check_tops(weak.clone()))),
                Err(_) => tracing::warn!("history set outside a tokio runtime: no top checks"),
            }
        }
        let Some(backplane) = &inner.cluster.backplane else {
            return;
        };
        backplane.attach(Inbox::new(
            inner.cluster.node,
            Arc::new(Arrivals(weak.clone())),
        ));
        backplane.subscribe(&Topic::All);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(presence_heartbeat(weak))),
            Err(_) => {
                tracing::warn!("backplane set outside a tokio runtime: no presence heartbeat")
            }
        }
    }

    /// Whether this node reaches the others: `None` without a backplane.
    pub(super) fn status(&self) -> Option<BackplaneStatus> {
        self.backplane.as_ref().map(|b| b.status())
    }

    fn heartbeat_ms(&self) -> u32 {
        self.heartbeat.as_millis().min(u128::from(u32::MAX)) as u32
    }

    /// Tells the other nodes (if any) what changed here.
    pub(super) fn announce(
        &self,
        connections: usize,
        changes: impl FnOnce() -> Vec<PresenceChange>,
    ) {
        if let Some(b) = &self.backplane {
            b.publish_presence(Presence {
                node: self.node,
                snapshot: false,
                connections: connections as u64,
                heartbeat_ms: self.heartbeat_ms(),
                changes: changes(),
            });
        }
    }

    /// Tells the backplane (if any) about a change of local interest.
    pub(super) fn interest(&self, topic: impl FnOnce() -> Topic, subscribe: bool) {
        if let Some(b) = &self.backplane {
            let topic = topic();
            if subscribe {
                b.subscribe(&topic);
            } else {
                b.unsubscribe(&topic);
            }
        }
    }

    /// Hands a frame to the other nodes (no-op without a backplane).
    pub(super) fn publish(
        &self,
        topic: impl FnOnce() -> Topic,
        exclude_user: Option<&str>,
        frame: &Bytes,
    ) {
        if let Some(b) = &self.backplane {
            b.publish(Envelope {
                origin: self.node,
                topic: topic(),
                exclude_user: exclude_user.map(str::to_owned),
                frame: frame.clone(),
                sent_at_us: Some(unix_us()),
                position: None,
                embed_position: false,
            });
        }
    }

    /// Whether another node has a connection of `user`.
    pub(super) fn has_user(&self, user: &str) -> bool {
        self.live(|n| n.users.contains(user))
    }

    /// Adds the members of `room` on other nodes to `users`.
    pub(super) fn room_users(&self, room: &str, users: &mut Vec<String>) {
        for node in self.remote().values().filter(|n| n.is_live()) {
            users.extend(node.rooms.get(room).into_iter().flatten().cloned());
        }
    }

    /// Adds the users connected to other nodes to `users`.
    pub(super) fn users(&self, users: &mut Vec<String>) {
        for node in self.remote().values().filter(|n| n.is_live()) {
            users.extend(node.users.iter().cloned());
        }
    }

    /// Connections on the other nodes (as of their last presence message). Each count is
    /// what a node claims: the sum saturates rather than overflow.
    pub(super) fn connections(&self) -> usize {
        let remote = self.remote();
        let live = remote.values().filter(|n| n.is_live());
        let sum = live.fold(0u64, |sum, n| sum.saturating_add(n.connections));
        usize::try_from(sum).unwrap_or(usize::MAX)
    }

    /// Rooms with members on other nodes that `is_local` does not count already.
    pub(super) fn rooms_beyond(&self, is_local: impl Fn(&str) -> bool) -> usize {
        let remote = self.remote();
        let rooms = remote
            .values()
            .filter(|n| n.is_live())
            .flat_map(|n| n.rooms.keys());
        rooms
            .map(String::as_str)
            .filter(|r| !is_local(r))
            .collect::<HashSet<_>>()
            .len()
    }

    /// The other nodes still heard from, by id.
    pub(super) fn nodes(&self) -> Vec<ClusterNode> {
        let mut nodes: Vec<ClusterNode> = self
            .remote()
            .iter()
            .filter(|(_, n)| n.is_live())
            .map(|(&id, n)| ClusterNode {
                id,
                connections: n.connections,
                last_seen: n.seen.elapsed(),
            })
            .collect();
        nodes.sort_unstable_by_key(|n| n.id);
        nodes
    }

    /// Whether any other node still heard from satisfies `f`.
    fn live(&self, f: impl Fn(&RemoteNode) -> bool) -> bool {
        self.remote().values().any(|n| n.is_live() && f(n))
    }

    fn remote(&self) -> RwLockReadGuard<'_, HashMap<u64, RemoteNode>> {
        self.remote.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records another node's presence message.
    fn record(&self, presence: &Presence) {
        let mut nodes = self.remote.write().unwrap_or_else(|p| p.into_inner());
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

    /// Forgets the nodes not heard from for three of their heartbeats.
    fn forget_silent(&self) {
        self.remote
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, n| n.is_live());
    }
}

/// What the backplane hands this node: the manager, held weakly, so a backplane never
/// keeps a dropped manager alive.
struct Arrivals(Weak<Inner>);

impl Receiver for Arrivals {
    fn deliver(&self, envelope: &Envelope) -> usize {
        match self.0.upgrade() {
            Some(inner) => ConnectionManager { inner }.deliver_remote(envelope),
            None => 0,
        }
    }

    fn presence(&self, presence: &Presence) {
        if let Some(inner) = self.0.upgrade() {
            inner.cluster.record(presence);
        }
    }
}

impl ConnectionManager {
    /// Delivers an envelope from another node to this node's connections. Never waits.
    /// Returns how many connections were reached.
    ///
    /// A frame the origin deflated goes as it is to the recipients with the full window
    /// (no deflate here), and is inflated once, on the first recipient that needs it plain
    /// (no compression, or a smaller window). One that does not inflate within
    /// `max_message_size` reaches none of those: it is dropped for them with a warning and
    /// counted in `svc_ws_backplane_malformed_total`, like an envelope that does not
    /// decode. What goes as it is is not checked here, as a plain frame is not either:
    /// nodes trust each other (docs/security.md).
    fn deliver_remote(&self, envelope: &Envelope) -> usize {
        if envelope.position.is_some() {
            return self.deliver_positioned(envelope);
        }
        let message = if envelope.is_deflated() {
            PreparedMessage::from_deflated_frame(
                envelope.frame.clone(),
                self.inner.config.max_message_size,
            )
        } else {
            PreparedMessage::from_frame(envelope.frame.clone())
        };
        let exclude = envelope.exclude_user.as_deref();
        let skip = |c: &&Arc<Conn>| exclude != Some(&*c.user_id);
        let reached = match &envelope.topic {
            Topic::All => {
                let all = self.snapshot();
                self.deliver(all.iter().filter(skip), &message)
            }
            Topic::Room(room) => {
                let conns = self.read().room_connections(room, exclude);
                self.deliver(conns.iter(), &message)
            }
            Topic::User(user) => {
                let conns = self.read().user_connections(user);
                self.deliver(conns.iter().filter(skip), &message)
            }
        };
        metrics::counter!("svc_ws_backplane_received_total").increment(1);
        if message.failed_to_inflate() {
            metrics::counter!("svc_ws_backplane_malformed_total").increment(1);
            tracing::warn!(
                origin = envelope.origin,
                topic = ?envelope.topic,
                limit = self.inner.config.max_message_size,
                "a deflated backplane message does not inflate within the limit: \
                 dropped for the recipients that needed it plain"
            );
        }
        if let Some(sent) = envelope.sent_at_us {
            // Clocks of two hosts differ: a lag below zero is recorded as zero.
            let lag_us = unix_us().saturating_sub(sent);
            metrics::histogram!("svc_ws_backplane_delivery_lag_seconds")
                .record(lag_us as f64 / 1e6);
        }
        reached
    }
}

/// Tells the other nodes this node's whole presence every heartbeat, and forgets the nodes
/// not heard from for three; ends with the manager.
async fn presence_heartbeat(inner: Weak<Inner>) {
    loop {
        let Some(period) = inner.upgrade().map(|i| i.cluster.heartbeat) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(backplane) = &inner.cluster.backplane else {
            return;
        };
        let (connections, changes) = {
            let reg = inner.registry.read().unwrap_or_else(|p| p.into_inner());
            (reg.connections, reg.presence_snapshot())
        };
        backplane.publish_presence(Presence {
            node: inner.cluster.node,
            snapshot: true,
            connections: connections as u64,
            heartbeat_ms: inner.cluster.heartbeat_ms(),
            changes,
        });
        inner.cluster.forget_silent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::WebSocketConfig;

    fn presence(node: u64, connections: u64) -> Presence {
        Presence {
            node,
            snapshot: true,
            connections,
            heartbeat_ms: 60_000,
            changes: Vec::new(),
        }
    }

    #[test]
    fn connection_counts_that_other_nodes_claim_saturate() {
        // Found by the backplane_presence fuzz target: two nodes claiming u64::MAX
        // connections overflowed the sum (a panic in debug builds, a wrong count in release).
        let manager = ConnectionManager::builder(WebSocketConfig::default())
            .backplane(crate::websocket::backplane::InMemoryBackplane::new())
            .build();
        let cluster = &manager.inner.cluster;
        cluster.record(&presence(1, 3));
        cluster.record(&presence(2, 4));
        assert_eq!(manager.connection_count(), 7);
        cluster.record(&presence(1, u64::MAX));
        cluster.record(&presence(2, u64::MAX));
        assert_eq!(cluster.connections(), usize::MAX);
        assert_eq!(manager.connection_count(), usize::MAX);
    }
}
