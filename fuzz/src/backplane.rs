//! `backplane_envelope` and `backplane_presence`: the decoders of what arrives from other
//! nodes over the backplane (`Envelope::from_bytes`, `Presence::from_bytes`; a Redis
//! backplane counts their failures in `svc_ws_backplane_malformed_total`), and what a
//! manager does with what they decode (`Inbox::deliver`, `Inbox::presence`).
//!
//! Input: a mode byte (bit 0: structured; for envelopes, bit 1: with a time, bit 2: a
//! deflated frame, bit 3: a position, version 4, which wins over bit 2), then in raw mode the bytes to decode (for presence: messages of one
//! length byte and that many bytes), in structured mode field values that this file encodes
//! itself, from the wire format documented on `to_bytes`.
//!
//! Properties (a violation panics):
//! - decoding never panics, and what decodes re-encodes to the same bytes (the format is
//!   canonical), and decodes again to the same value;
//! - a structured input decodes to exactly the fields it was built from (names longer than
//!   `u16::MAX` bytes are not built: the encoder cuts them, by design);
//! - a manager (no local connections) handed a decoded envelope reaches no one and does not
//!   panic; handed decoded presence messages, its cluster-wide answers never panic and stay
//!   within what the messages said: `active_users` and `get_room_users` list only users
//!   the messages put there, `connection_count` is at most the sum of the nodes' latest
//!   counts (saturating: a node may claim `u64::MAX`), and a message about the node itself
//!   is ignored.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use svc_infra::websocket::{
    ConnectionManager, WebSocketConfig,
    backplane::{Backplane, BackplaneStatus, Envelope, Inbox, Presence, PresenceChange, Topic},
    protocol::RSV1,
};

/// A backplane that only keeps the inbox the manager hands it.
#[derive(Debug, Default, Clone)]
pub struct Capture(Arc<Mutex<Option<Inbox>>>);

impl Backplane for Capture {
    fn attach(&self, inbox: Inbox) {
        *self.0.lock().expect("capture") = Some(inbox);
    }
    fn publish(&self, _: Envelope) {}
    fn publish_presence(&self, _: Presence) {}
    fn subscribe(&self, _: &Topic) {}
    fn unsubscribe(&self, _: &Topic) {}
    fn status(&self) -> BackplaneStatus {
        BackplaneStatus::Connected
    }
}

/// A manager with a backplane, and the inbox through which the other nodes reach it.
pub fn node() -> (ConnectionManager, Inbox) {
    let capture = Capture::default();
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .backplane(capture.clone())
        .build();
    let inbox = capture
        .0
        .lock()
        .expect("capture")
        .clone()
        .expect("attached");
    (manager, inbox)
}

/// Reads the fields of a structured input, in order.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| n << 8 | u64::from(self.u8()))
    }
    /// A name: a length byte, then that many bytes, made UTF-8.
    fn name(&mut self) -> String {
        let n = usize::from(self.u8()).min(self.0.len());
        let (bytes, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// `s` on the wire: a u16 length, big-endian, then the bytes.
fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("short name");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Runs one `backplane_envelope` input; panics only if a property is violated.
/// `node` is a manager and its inbox ([`node`]): envelopes hold no state, so one serves
/// every input. Returns whether the input decoded.
pub fn envelope(node: &(ConnectionManager, Inbox), data: &[u8]) -> bool {
    let inbox = &node.1;
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    if mode & 1 == 0 {
        let Ok(e) = Envelope::from_bytes(rest) else {
            return false;
        };
        round_trip_envelope(&e, rest);
        assert_eq!(
            inbox.deliver(&e),
            0,
            "reached a connection that is not there"
        );
        return true;
    }
    let mut f = Fields(rest);
    let origin = f.u64();
    // Version 3 carries a deflated frame (RSV1 set) and a time, version 2 a plain frame and
    // a time, version 1 a plain frame.
    let positioned = mode & 8 == 8;
    let deflated = mode & 4 == 4 && !positioned;
    let sent_at = (positioned || deflated || mode & 2 == 2).then(|| f.u64());
    // Version 4: flags (1: embed), the offset in decimal digits and the epoch, each after
    // a length byte.
    let position = positioned.then(|| {
        let embed = f.u8() & 1 == 1;
        let offset = f.u64();
        let mut epoch = f.name();
        if epoch.is_empty() {
            epoch.push('e');
        }
        // At most 255 bytes (a length byte), cut at a character.
        let mut end = epoch.len().min(255);
        while !epoch.is_char_boundary(end) {
            end -= 1;
        }
        epoch.truncate(end.max(1));
        (embed, offset, epoch)
    });
    let kind = f.u8() % 3;
    let name = if kind == 0 { String::new() } else { f.name() };
    let exclude = (f.u8() & 1 == 1).then(|| f.name());
    let mut frame = f.0.to_vec();
    if frame.is_empty() {
        frame.push(0x81);
    }
    if deflated {
        frame[0] |= RSV1;
    } else {
        frame[0] &= !RSV1;
    }
    let version = match (positioned, deflated, sent_at) {
        (true, _, _) => 4,
        (_, true, _) => 3,
        (_, false, Some(_)) => 2,
        (_, false, None) => 1,
    };
    let mut wire = vec![version];
    wire.extend_from_slice(&origin.to_be_bytes());
    if let Some(at) = sent_at {
        wire.extend_from_slice(&at.to_be_bytes());
    }
    if let Some((embed, offset, epoch)) = &position {
        wire.push(u8::from(*embed));
        let digits = offset.to_string();
        wire.push(digits.len() as u8);
        wire.extend_from_slice(digits.as_bytes());
        wire.push(epoch.len() as u8);
        wire.extend_from_slice(epoch.as_bytes());
    }
    wire.push(kind);
    put_str(&mut wire, &name);
    match &exclude {
        None => wire.push(0),
        Some(user) => {
            wire.push(1);
            put_str(&mut wire, user);
        }
    }
    wire.extend_from_slice(&frame);

    let e = Envelope::from_bytes(&wire).expect("a well-formed envelope");
    let topic = match kind {
        0 => Topic::All,
        1 => Topic::Room(name),
        _ => Topic::User(name),
    };
    assert_eq!(e.origin, origin);
    assert_eq!(e.sent_at_us, sent_at);
    assert_eq!(e.topic, topic);
    assert_eq!(e.exclude_user, exclude);
    assert_eq!(&e.frame[..], &frame[..]);
    assert_eq!(e.is_deflated(), deflated);
    assert_eq!(
        e.position
            .as_ref()
            .map(|p| (e.embed_position, p.offset, p.epoch.clone())),
        position
    );
    round_trip_envelope(&e, &wire);
    assert_eq!(
        inbox.deliver(&e),
        0,
        "reached a connection that is not there"
    );
    true
}

fn round_trip_envelope(e: &Envelope, wire: &[u8]) {
    let again = e.to_bytes();
    assert_eq!(&again[..], wire, "{e:?} re-encodes differently");
    assert_eq!(&Envelope::from_bytes(&again).expect("decodes again"), e);
}

/// What the presence messages said so far, node by node: users, rooms and connections.
#[derive(Default)]
struct Said {
    nodes: HashMap<u64, (HashSet<String>, HashMap<String, HashSet<String>>, u64)>,
}

impl Said {
    fn record(&mut self, p: &Presence) {
        let (users, rooms, connections) = self.nodes.entry(p.node).or_default();
        if p.snapshot {
            users.clear();
            rooms.clear();
        }
        for change in &p.changes {
            match change {
                PresenceChange::Online(u) => {
                    users.insert(u.clone());
                }
                PresenceChange::Offline(u) => {
                    users.remove(u);
                }
                PresenceChange::Joined { user, room } => {
                    rooms.entry(room.clone()).or_default().insert(user.clone());
                }
                PresenceChange::Left { user, room } => {
                    if let Some(m) = rooms.get_mut(room) {
                        m.remove(user);
                    }
                }
                other => panic!("unknown change {other:?}"),
            }
        }
        *connections = p.connections;
    }
}

/// Runs one `backplane_presence` input (a fresh manager each time: presence is state);
/// panics only if a property is violated. Returns how many messages decoded.
pub fn presence(data: &[u8]) -> usize {
    let Some((&mode, rest)) = data.split_first() else {
        return 0;
    };
    let mut decoded_count = 0;
    let (manager, inbox) = node();
    let mut said = Said::default();
    let mut f = Fields(rest);
    while !f.0.is_empty() {
        let decoded = if mode & 1 == 0 {
            let n = usize::from(f.u8()).min(f.0.len());
            let (bytes, rest) = f.0.split_at(n);
            f.0 = rest;
            let Ok(p) = Presence::from_bytes(bytes) else {
                continue;
            };
            round_trip_presence(&p, bytes);
            p
        } else {
            structured_presence(&mut f, inbox.node())
        };
        decoded_count += 1;
        inbox.presence(&decoded);
        if decoded.node != inbox.node() {
            said.record(&decoded);
        }
        check_view(&manager, &said);
    }
    decoded_count
}

/// A presence message built from the fields at the start of `f`, encoded here, decoded
/// by the crate and checked against the fields.
fn structured_presence(f: &mut Fields<'_>, own_node: u64) -> Presence {
    let head = f.u8();
    // A few node ids, so that messages about the same node meet; sometimes this node's.
    let node = match head & 7 {
        7 => own_node,
        6 => f.u64(),
        n => u64::from(n),
    };
    let snapshot = head & 8 != 0;
    let connections = match (head >> 4) & 3 {
        0 => u64::MAX - u64::from(f.u8()),
        1 => u64::from(f.u8()),
        _ => f.u64(),
    };
    let heartbeat_ms: u32 = if head & 0x40 != 0 { 0 } else { 60_000 };
    let count = usize::from(f.u8() % 8);
    let mut changes = Vec::new();
    let mut wire = vec![1];
    wire.extend_from_slice(&node.to_be_bytes());
    wire.push(u8::from(snapshot));
    wire.extend_from_slice(&connections.to_be_bytes());
    wire.extend_from_slice(&heartbeat_ms.to_be_bytes());
    for _ in 0..count {
        let kind = f.u8() % 4;
        let user = f.name();
        wire.push(kind);
        put_str(&mut wire, &user);
        changes.push(match kind {
            0 => PresenceChange::Online(user),
            1 => PresenceChange::Offline(user),
            k => {
                let room = f.name();
                put_str(&mut wire, &room);
                if k == 2 {
                    PresenceChange::Joined { user, room }
                } else {
                    PresenceChange::Left { user, room }
                }
            }
        });
    }
    let p = Presence::from_bytes(&wire).expect("a well-formed presence message");
    assert_eq!(
        (p.node, p.snapshot, p.connections, p.heartbeat_ms),
        (node, snapshot, connections, heartbeat_ms)
    );
    assert_eq!(p.changes, changes);
    round_trip_presence(&p, &wire);
    p
}

fn round_trip_presence(p: &Presence, wire: &[u8]) {
    let again = p.to_bytes();
    assert_eq!(&again[..], wire, "{p:?} re-encodes differently");
    assert_eq!(&Presence::from_bytes(&again).expect("decodes again"), p);
}

/// The manager's cluster-wide answers stay within what the messages said.
fn check_view(manager: &ConnectionManager, said: &Said) {
    let all_users: HashSet<&String> = said.nodes.values().flat_map(|(u, _, _)| u).collect();
    for user in manager.active_users() {
        assert!(
            all_users.contains(&user),
            "active user {user:?} nobody announced"
        );
    }
    let rooms: HashSet<&String> = said.nodes.values().flat_map(|(_, r, _)| r.keys()).collect();
    for room in &rooms {
        let members: HashSet<&String> = said
            .nodes
            .values()
            .filter_map(|(_, r, _)| r.get(*room))
            .flatten()
            .collect();
        for user in manager.get_room_users(room) {
            assert!(members.contains(&user), "{user:?} in {room:?}");
        }
    }
    assert!(manager.room_count() <= rooms.len());
    let total = said
        .nodes
        .values()
        .fold(0u64, |sum, (_, _, c)| sum.saturating_add(*c));
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    assert!(
        manager.connection_count() <= total,
        "{} connections, the nodes said {total}",
        manager.connection_count()
    );
}
