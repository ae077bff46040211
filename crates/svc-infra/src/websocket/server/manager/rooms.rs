//! [`ConnectionManager`]'s rooms: joining, leaving, who is in one.

use std::{collections::hash_map::Entry, sync::Arc};

use super::ConnectionManager;
use crate::websocket::server::{
    backplane::{PresenceChange, Topic},
    registry::UserRooms,
};

impl ConnectionManager {
    /// Adds `user_id` to `room` (idempotent). The user need not be connected yet; a user
    /// leaves every room when their last connection closes.
    pub async fn join_room(&self, user_id: &str, room: &str) {
        let mut reg = self.write();
        // The id the registry already holds for this user, if any: one copy per user.
        let user: Arc<str> = match reg.users.get_key_value(user_id) {
            Some((k, _)) => k.clone(),
            None => match reg.memberships.get_key_value(user_id) {
                Some((k, _)) => k.clone(),
                None => Arc::from(user_id),
            },
        };
        let room_key: Arc<str> = match reg.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => {
                self.inner
                    .cluster
                    .interest(|| Topic::Room(room.to_owned()), true);
                Arc::from(room)
            }
        };
        let joined = reg
            .rooms
            .entry(room_key.clone())
            .or_default()
            .insert(user.clone());
        match reg.memberships.entry(user) {
            Entry::Occupied(mut rooms) => rooms.get_mut().insert(room_key),
            Entry::Vacant(slot) => {
                slot.insert(UserRooms::One(room_key));
            }
        }
        if joined {
            self.inner.cluster.announce(reg.connections, || {
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
                self.inner
                    .cluster
                    .interest(|| Topic::Room(room.to_owned()), false);
            }
            if was_member {
                self.inner.cluster.announce(reg.connections, || {
                    vec![PresenceChange::Left {
                        user: user_id.to_owned(),
                        room: room.to_owned(),
                    }]
                });
            }
        }
        if let Some(rooms) = reg.memberships.get_mut(user_id)
            && rooms.remove(room)
        {
            reg.memberships.remove(user_id);
        }
    }

    /// How many rooms `user_id` is in on this node, and whether `room` is one of them.
    #[cfg(feature = "gateway")]
    pub(crate) fn rooms_of(&self, user_id: &str, room: &str) -> (usize, bool) {
        self.read()
            .memberships
            .get(user_id)
            .map_or((0, false), |rooms| (rooms.len(), rooms.contains(room)))
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
        self.inner.cluster.room_users(room, &mut users);
        users.sort_unstable();
        users.dedup();
        users
    }
}
