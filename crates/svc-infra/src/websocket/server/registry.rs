//! The local registry: this node's connections, by user, and its rooms.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{backplane::PresenceChange, outbound::Outbound};
use crate::websocket::ConnectionInfo;

/// Application data attached to a connection at
/// [`ConnectionManager::connect_with_metadata`](super::ConnectionManager::connect_with_metadata).
pub type Metadata = HashMap<String, serde_json::Value>;

/// One registered connection, shared by the registry and its
/// [`Connection`](super::Connection) handle.
///
/// Every idle connection holds one, so it is kept to what it needs: times as milliseconds,
/// metadata boxed (and absent when empty).
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) user_id: Arc<str>,
    pub(super) out: Arc<Outbound>,
    /// Milliseconds since the Unix epoch when the connection was registered.
    pub(super) connected_at: u64,
    /// Milliseconds since the Unix epoch of the last message sent or received.
    pub(super) last_activity: AtomicU64,
    pub(super) metadata: Option<Box<Metadata>>,
    /// Still in the registry: cleared by the one removal that counts.
    pub(super) registered: AtomicBool,
}

impl Conn {
    pub(super) fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            user_id: self.user_id.to_string(),
            connection_id: self.id.to_string(),
            connected_at: UNIX_EPOCH + Duration::from_millis(self.connected_at),
            last_activity: UNIX_EPOCH
                + Duration::from_millis(self.last_activity.load(Ordering::Relaxed)),
            metadata: self.metadata.as_deref().cloned().unwrap_or_default(),
        }
    }

    pub(super) fn touch(&self, unix_ms: u64) {
        self.last_activity.store(unix_ms, Ordering::Relaxed);
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A user's connections on this node, in connection order. Almost every user has one, held
/// inline; a second one moves them to a boxed `Vec` (two words in the map's entry, not four).
#[derive(Clone)]
pub(super) enum UserConns {
    One(Arc<Conn>),
    // Boxed on purpose: an entry of every user's holds this enum, and a plain `Vec` would make
    // it two words larger for the few users with several connections.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Arc<Conn>>>),
}

impl UserConns {
    pub(super) fn as_slice(&self) -> &[Arc<Conn>] {
        match self {
            Self::One(conn) => std::slice::from_ref(conn),
            Self::Many(conns) => conns,
        }
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, Arc<Conn>> {
        self.as_slice().iter()
    }

    pub(super) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(super) fn push(&mut self, conn: Arc<Conn>) {
        match self {
            Self::One(first) => *self = Self::Many(Box::new(vec![first.clone(), conn])),
            Self::Many(conns) => conns.push(conn),
        }
    }

    /// Takes `conn` out; `true` when none are left.
    pub(super) fn remove(&mut self, conn: &Arc<Conn>) -> bool {
        match self {
            Self::One(only) => Arc::ptr_eq(only, conn),
            Self::Many(conns) => {
                conns.retain(|c| !Arc::ptr_eq(c, conn));
                match conns.len() {
                    0 => true,
                    1 => {
                        *self = Self::One(conns[0].clone());
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

impl<'a> IntoIterator for &'a UserConns {
    type Item = &'a Arc<Conn>;
    type IntoIter = std::slice::Iter<'a, Arc<Conn>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The rooms a user is in on this node. Most users are in one: held inline (no set of its
/// own); a second moves them to a boxed set (two words in the map's entry).
pub(super) enum UserRooms {
    One(Arc<str>),
    // Boxed on purpose, as `UserConns::Many`.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<Arc<str>>>),
}

impl UserRooms {
    #[cfg(any(feature = "gateway", test))]
    pub(super) fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(rooms) => rooms.len(),
        }
    }

    #[cfg(any(feature = "gateway", test))]
    pub(super) fn contains(&self, room: &str) -> bool {
        match self {
            Self::One(only) => &**only == room,
            Self::Many(rooms) => rooms.contains(room),
        }
    }

    /// Adds `room` (nothing if it is there already).
    pub(super) fn insert(&mut self, room: Arc<str>) {
        match self {
            Self::One(only) if *only == room => {}
            Self::One(only) => *self = Self::Many(Box::new(HashSet::from([only.clone(), room]))),
            Self::Many(rooms) => {
                rooms.insert(room);
            }
        }
    }

    /// Takes `room` out; `true` when none are left.
    pub(super) fn remove(&mut self, room: &str) -> bool {
        match self {
            Self::One(only) => &**only == room,
            Self::Many(rooms) => {
                rooms.remove(room);
                rooms.is_empty()
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        let (one, many) = match self {
            Self::One(only) => (Some(only), None),
            Self::Many(rooms) => (None, Some(rooms.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub(super) fn into_vec(self) -> Vec<Arc<str>> {
        match self {
            Self::One(only) => vec![only],
            Self::Many(rooms) => rooms.into_iter().collect(),
        }
    }
}

/// Who is connected to this node and which rooms they are in. Lives behind the manager's
/// `RwLock`; every method here is synchronous and short.
#[derive(Default)]
pub(super) struct Registry {
    /// user → their connections, in connection order.
    pub(super) users: HashMap<Arc<str>, UserConns>,
    /// room → its members (users).
    pub(super) rooms: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// user → the rooms they are in (the reverse index, so leaving all rooms is cheap).
    pub(super) memberships: HashMap<Arc<str>, UserRooms>,
    pub(super) connections: usize,
    /// Every connection, rebuilt lazily after a change, so a broadcast costs one `Arc` clone.
    pub(super) snapshot: Option<Arc<[Arc<Conn>]>>,
}

impl Registry {
    /// Takes `user` out of every room; returns each room left and whether it became empty
    /// (and is gone).
    pub(super) fn leave_all_rooms(&mut self, user: &str) -> Vec<(Arc<str>, bool)> {
        let mut left = Vec::new();
        if let Some(rooms) = self.memberships.remove(user) {
            for room in rooms.into_vec() {
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
    pub(super) fn presence_snapshot(&self) -> Vec<PresenceChange> {
        let mut changes: Vec<PresenceChange> = self
            .users
            .keys()
            .map(|u| PresenceChange::Online(u.to_string()))
            .collect();
        for (user, rooms) in &self.memberships {
            for room in rooms.iter() {
                changes.push(PresenceChange::Joined {
                    user: user.to_string(),
                    room: room.to_string(),
                });
            }
        }
        changes
    }

    /// The connections of `user` (empty if none).
    pub(super) fn user_connections(&self, user: &str) -> Vec<Arc<Conn>> {
        self.users
            .get(user)
            .map(|c| c.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// The connections of every member of `room`, skipping `exclude`'s.
    pub(super) fn room_connections(&self, room: &str, exclude: Option<&str>) -> Vec<Arc<Conn>> {
        let Some(members) = self.rooms.get(room) else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|u| exclude != Some(&***u))
            .filter_map(|u| self.users.get(u))
            .flatten()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_rooms_go_from_one_to_many_and_back_to_none() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut rooms = UserRooms::One(a.clone());
        rooms.insert(a.clone());
        assert!(matches!(rooms, UserRooms::One(_)), "joining twice is once");
        rooms.insert(b.clone());
        assert_eq!(
            (rooms.len(), rooms.contains("a"), rooms.contains("b")),
            (2, true, true)
        );
        assert!(!rooms.remove("c"), "not a member: nothing changes");
        assert!(!rooms.remove("a"));
        assert_eq!((rooms.len(), rooms.contains("a")), (1, false));
        assert!(rooms.remove("b"), "the last room left");
        let one = UserRooms::One(b.clone());
        assert!(!one.contains("a"));
        assert_eq!(one.into_vec(), vec![b]);
    }

    #[test]
    fn a_map_entry_is_two_words_for_the_few_with_several() {
        assert_eq!(size_of::<UserRooms>(), 2 * size_of::<usize>());
        assert_eq!(size_of::<UserConns>(), 2 * size_of::<usize>());
    }
}
