//! Rooms with history, on the manager's side: publishing with a position, delivering
//! positioned publications in offset order, noticing gaps, and joining a room from a
//! position (DESIGN §7).
//!
//! Every node keeps, per room with history that has members here, the last position it
//! delivered ([`RoomTrack`]). A publication arrives from the store (positioned, in offset
//! order as the store hands them out) and is delivered if it is the next one; a duplicate is
//! dropped; a skipped offset (a publication lost between nodes, say during a Redis blink)
//! makes the node catch up from the history before delivering anything more of that room;
//! a new epoch (the stream's past was lost) is delivered after telling the members that
//! what came before cannot be recovered. A connection that joins with a position gets the
//! publications after it from the history, then the live ones, merged by offset: live ones
//! that arrive while the history is read wait in a buffer of their own.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use bytes::Bytes;

use super::{
    ConnectionManager,
    backplane::{Envelope, Topic},
    flush::Deferred,
    history::{HistoryConfig, HistoryError, HistoryRead, HistoryStore, StreamPosition},
    manager::Inner,
    message::{IntoMessage, PreparedMessage},
    registry::{Conn, unix_us},
};
use crate::websocket::{WebSocketError, protocol};

/// How long a read of the history may take before the recovery gives up (and says so).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The manager's history: what to keep, where, and where each room stands on this node.
pub(super) struct History {
    pub(super) config: HistoryConfig,
    pub(super) store: Arc<dyn HistoryStore>,
    tracks: Mutex<HashMap<Arc<str>, RoomTrack>>,
    /// How often rooms are compared with the top of their stream.
    pub(super) check_every: Duration,
}

/// Where one room's stream stands on this node.
#[derive(Default)]
struct RoomTrack {
    /// The last publication delivered here (`None` before the first is known).
    last: Option<StreamPosition>,
    /// Catching up from the history after a gap: live publications wait here meanwhile.
    catching_up: Option<Vec<Envelope>>,
    /// Connections joining from a position, each with the live publications that arrived
    /// while its history was read.
    joining: HashMap<u64, Vec<Envelope>>,
}

/// What joining a room from a position achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Every publication after the position asked for was replayed (or none was asked
    /// for). `false`: the history no longer reaches back that far, the stream's epoch
    /// changed, more than `recovery_max` were missed, or the store could not be read; the
    /// application should reload its state rather than trust a gap.
    pub recovered: bool,
    /// The position the connection is at now: the last publication it was given, or the
    /// stream's top when nothing was replayed.
    pub position: StreamPosition,
    /// How many publications were replayed.
    pub replayed: usize,
}

/// How [`ConnectionManager::publish`] publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Skip this user's connections.
    pub exclude_user: Option<String>,
    /// The message is a JSON object: give it its position as its last two fields,
    /// `"offset"` and `"epoch"` (each node adds them once, for all its recipients).
    pub embed_position: bool,
}

impl PublishOptions {
    /// Skips `user`'s connections.
    pub fn exclude_user(mut self, user: impl Into<String>) -> Self {
        self.exclude_user = Some(user.into());
        self
    }

    /// Embeds the position in the message (a JSON object).
    pub fn embed_position(mut self) -> Self {
        self.embed_position = true;
        self
    }
}

/// The store's name of a room's stream.
pub(super) fn room_stream(room: &str) -> String {
    format!("room:{room}")
}

impl History {
    pub(super) fn new(
        config: HistoryConfig,
        store: Arc<dyn HistoryStore>,
        check_every: Duration,
    ) -> Self {
        Self {
            config,
            store,
            tracks: Mutex::new(HashMap::new()),
            check_every,
        }
    }

    fn tracks(&self) -> MutexGuard<'_, HashMap<Arc<str>, RoomTrack>> {
        self.tracks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The frame of a positioned publication: with the position added as the JSON object's last
/// fields when the envelope asks for it (falls back to the frame as it is if the frame is
/// not a JSON object).
fn render(envelope: &Envelope) -> Bytes {
    match (&envelope.position, envelope.embed_position) {
        (Some(position), true) => {
            embed(&envelope.frame, position).unwrap_or_else(|| envelope.frame.clone())
        }
        _ => envelope.frame.clone(),
    }
}

fn embed(frame: &[u8], position: &StreamPosition) -> Option<Bytes> {
    let header = protocol::FrameHeader::parse(frame).ok()??;
    let payload = frame.get(header.len..)?;
    let body = payload.trim_ascii_end().strip_suffix(b"}")?;
    let mut out = Vec::with_capacity(payload.len() + 64);
    out.extend_from_slice(body);
    if body.trim_ascii_end().last() != Some(&b'{') {
        out.push(b',');
    }
    let epoch = serde_json::to_string(&position.epoch).ok()?;
    out.extend_from_slice(format!("\"offset\":{},\"epoch\":{epoch}}}", position.offset).as_bytes());
    Some(protocol::encode_frame(header.opcode, &out))
}

/// Whether `message` is a text message holding a JSON object (what embedding needs).
fn is_json_object(message: &PreparedMessage) -> bool {
    let Some(frame) = message.plain() else {
        return false;
    };
    let Ok(Some(header)) = protocol::FrameHeader::parse(frame) else {
        return false;
    };
    header.opcode == protocol::OP_TEXT && {
        let payload = frame[header.len..].trim_ascii();
        payload.starts_with(b"{") && payload.ends_with(b"}")
    }
}

/// What the members of a room are told when publications they may have missed cannot be
/// replayed: `{"type":"recovery","room":R,"recovered":false,"offset":N,"epoch":E}`, where
/// `(N, E)` is the position they are at now.
fn loss_notice(room: &str, position: &StreamPosition) -> PreparedMessage {
    let notice = serde_json::json!({
        "type": "recovery",
        "room": room,
        "recovered": false,
        "offset": position.offset,
        "epoch": position.epoch,
    });
    PreparedMessage::text(&notice.to_string())
}

impl ConnectionManager {
    fn history(&self) -> Option<&History> {
        self.inner.history.as_ref()
    }

    /// Whether `room` keeps history (see [`HistoryConfig`]).
    pub fn keeps_history(&self, room: &str) -> bool {
        self.history()
            .is_some_and(|h| h.config.for_room(room).is_some())
    }

    /// Publishes `message` to `room`. A room with history (see [`HistoryConfig`]) keeps it
    /// and numbers it: the returned position is the publication's, the same on every node,
    /// and every member receives the room's publications in that order. A room without
    /// history gets a plain [`broadcast_to_room`](Self::broadcast_to_room) and `None`.
    ///
    /// Errors: a message too large, `embed_position` on a message that is not a JSON
    /// object, or a store that cannot be reached (`WebSocketError::History`: nothing was
    /// published).
    pub async fn publish(
        &self,
        room: &str,
        message: impl IntoMessage,
        options: PublishOptions,
    ) -> Result<Option<StreamPosition>, WebSocketError> {
        let limits = self.history().and_then(|h| h.config.for_room(room));
        let (Some(limits), Some(history)) = (limits, self.history()) else {
            match &options.exclude_user {
                Some(user) => {
                    self.broadcast_to_room_excluding(room, message, user)
                        .await?
                }
                None => self.broadcast_to_room(room, message).await?,
            };
            return Ok(None);
        };
        let message = self.prepare(message)?;
        if options.embed_position && !is_json_object(&message) {
            return Err(WebSocketError::Json(
                "a message that embeds its position must be a JSON object".into(),
            ));
        }
        let envelope = Envelope {
            origin: self.inner.cluster.node,
            topic: Topic::Room(room.to_owned()),
            exclude_user: options.exclude_user,
            frame: message.plain().cloned().unwrap_or_default(),
            sent_at_us: Some(unix_us()),
            position: None,
            embed_position: options.embed_position,
        };
        let publish = history.store.publish(&room_stream(room), envelope, limits);
        match tokio::time::timeout(READ_TIMEOUT, publish).await {
            Ok(Ok(position)) => Ok(Some(position)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                Err(HistoryError::Unavailable("the store did not answer in time".into()).into())
            }
        }
    }

    /// The position of `room`'s stream and up to `limit` of its publications after offset
    /// `after`, as the frames a member receives. `None` for a room without history.
    pub async fn history_of(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<(StreamPosition, Vec<(StreamPosition, Bytes)>)>, WebSocketError> {
        let Some(history) = self.history().filter(|h| h.config.for_room(room).is_some()) else {
            return Ok(None);
        };
        let read = read(history, room, after, limit).await?;
        let publications = positioned(&read)
            .map(|e| (e.position.clone().unwrap_or_default(), render(&e)))
            .collect();
        Ok(Some((read.top, publications)))
    }

    /// Delivers a positioned publication from the store to this node's members of its room,
    /// in offset order (see the module's documentation). Never waits.
    pub(super) fn deliver_positioned(&self, envelope: &Envelope) -> usize {
        let (Some(history), Topic::Room(room), Some(position)) =
            (self.history(), &envelope.topic, &envelope.position)
        else {
            return 0;
        };
        let mut tracks = history.tracks();
        let conns = self
            .read()
            .room_connections(room, envelope.exclude_user.as_deref());
        if conns.is_empty() && !tracks.contains_key(room.as_str()) {
            return 0;
        }
        let track = tracks.entry(Arc::from(room.as_str())).or_default();
        if let Some(waiting) = &mut track.catching_up {
            waiting.push(envelope.clone());
            return 0;
        }
        match &track.last {
            Some(last) if last.epoch == position.epoch && position.offset <= last.offset => {
                return 0; // delivered already
            }
            Some(last) if last.epoch == position.epoch && position.offset > last.offset + 1 => {
                metrics::counter!("svc_ws_history_gaps_total").increment(1);
                track.catching_up = Some(vec![envelope.clone()]);
                self.spawn_catch_up(room, last.clone());
                return 0;
            }
            Some(last) if last.epoch != position.epoch => {
                // A new epoch: what came before it is gone for good; say so. The members
                // start the new stream from its beginning: what of it did not arrive here
                // (published before this node was subscribed again) comes from its history.
                let start = StreamPosition {
                    offset: 0,
                    epoch: position.epoch.clone(),
                };
                self.deliver_except(track, &conns, &loss_notice(room, &start), None);
                if position.offset > 1 {
                    metrics::counter!("svc_ws_history_gaps_total").increment(1);
                    track.last = Some(start.clone());
                    track.catching_up = Some(vec![envelope.clone()]);
                    self.spawn_catch_up(room, start);
                    return 0;
                }
            }
            _ => {}
        }
        track.last = Some(position.clone());
        let message = PreparedMessage::from_frame(render(envelope));
        self.deliver_except(track, &conns, &message, Some(envelope))
    }

    /// Delivers `message` to `conns` but those joining (each of which gets `envelope`, if
    /// any, in its buffer instead).
    fn deliver_except(
        &self,
        track: &mut RoomTrack,
        conns: &[Arc<Conn>],
        message: &PreparedMessage,
        envelope: Option<&Envelope>,
    ) -> usize {
        if track.joining.is_empty() {
            return self.deliver(conns.iter(), message);
        }
        for conn in conns {
            if let (Some(waiting), Some(e)) = (track.joining.get_mut(&conn.id), envelope) {
                waiting.push(e.clone());
            }
        }
        let joining = &track.joining;
        self.deliver(
            conns.iter().filter(|c| !joining.contains_key(&c.id)),
            message,
        )
    }

    fn spawn_catch_up(&self, room: &str, last: StreamPosition) {
        let weak = Arc::downgrade(&self.inner);
        let room = room.to_owned();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(catch_up(weak, room, last))),
            Err(_) => tracing::warn!(room, "no tokio runtime: cannot catch up from history"),
        }
    }

    /// Joins `conn`'s user to `room` and brings `conn` up to date from `since` (see
    /// [`Connection::join_room_from`](super::Connection::join_room_from)).
    pub(super) async fn join_from(
        &self,
        conn: &Arc<Conn>,
        room: &str,
        since: Option<StreamPosition>,
        lead: impl FnOnce(&Recovery) -> Option<PreparedMessage>,
    ) -> Result<Option<Recovery>, WebSocketError> {
        let Some(history) = self.history().filter(|h| h.config.for_room(room).is_some()) else {
            self.join_room(&conn.user_id, room).await;
            return Ok(None);
        };
        history
            .tracks()
            .entry(Arc::from(room))
            .or_default()
            .joining
            .insert(conn.id, Vec::new());
        self.join_room(&conn.user_id, room).await;
        let max = history.config.recovery_max;
        // Without a position only the top is needed.
        let after = since.as_ref().map_or(u64::MAX, |s| s.offset);
        let read = read(history, room, after, max + 1).await;

        let mut tracks = history.tracks();
        let track = tracks.entry(Arc::from(room)).or_default();
        let live = track.joining.remove(&conn.id).unwrap_or_default();
        let (recovery, replay) = match read {
            Ok(read) => {
                if track.last.is_none() && read.top.offset > 0 {
                    track.last = Some(read.top.clone());
                }
                merge_for_join(&read, since.as_ref(), live, max)
            }
            Err(e) => {
                tracing::warn!(room, error = %e, "history unreadable: join without recovery");
                let position = live
                    .last()
                    .and_then(|e| e.position.clone())
                    .or_else(|| track.last.clone())
                    .unwrap_or_default();
                let recovery = Recovery {
                    recovered: false,
                    position,
                    replayed: 0,
                };
                (recovery, live)
            }
        };
        metrics::counter!(
            "svc_ws_history_recoveries_total",
            "result" => if recovery.recovered { "recovered" } else { "not_recovered" }
        )
        .increment(u64::from(since.is_some()));
        let mut deferred = Deferred::default();
        let mut push = |message: &PreparedMessage| {
            if let Some((frame, _)) = message.frame_for(&conn.out, true) {
                let _ = conn.out.push_deferred(frame, &mut deferred);
            }
        };
        if let Some(first) = lead(&recovery) {
            push(&first);
        }
        for e in replay
            .iter()
            .filter(|e| e.exclude_user.as_deref() != Some(&*conn.user_id))
        {
            push(&PreparedMessage::from_frame(render(e)));
        }
        drop(tracks);
        self.inner.flush_queue.extend(deferred);
        Ok(Some(recovery))
    }

    /// Compares each room with history that has members here with the top of its stream,
    /// and catches up where the node is behind (a lost last publication of a quiet room);
    /// forgets the rooms without members here.
    async fn check_tops(&self, history: &History) {
        let rooms: Vec<(String, StreamPosition)> = {
            let mut tracks = history.tracks();
            let reg = self.read();
            tracks.retain(|room, t| reg.rooms.contains_key(room) || !t.joining.is_empty());
            tracks
                .iter()
                .filter(|(_, t)| t.catching_up.is_none())
                .filter_map(|(room, t)| Some((room.to_string(), t.last.clone()?)))
                .collect()
        };
        for (room, last) in rooms {
            let Ok(read) = read(history, &room, u64::MAX, 0).await else {
                continue;
            };
            let behind = read.top.epoch != last.epoch || read.top.offset > last.offset;
            if !behind || read.top.offset == 0 {
                continue;
            }
            let mut tracks = history.tracks();
            let Some(track) = tracks.get_mut(room.as_str()) else {
                continue;
            };
            if track.catching_up.is_none() && track.last.as_ref() == Some(&last) {
                metrics::counter!("svc_ws_history_gaps_total").increment(1);
                track.catching_up = Some(Vec::new());
                self.spawn_catch_up(&room, last);
            }
        }
    }
}

/// Reads `room`'s history within [`READ_TIMEOUT`].
async fn read(
    history: &History,
    room: &str,
    after: u64,
    limit: usize,
) -> Result<HistoryRead, HistoryError> {
    let read = history.store.read(&room_stream(room), after, limit);
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(HistoryError::Unavailable(
                "the store did not answer in time".into(),
            ))
        })
}

/// The publications of a read, as positioned envelopes.
fn positioned(read: &HistoryRead) -> impl Iterator<Item = Envelope> + '_ {
    read.publications.iter().map(|p| {
        let position = StreamPosition {
            offset: p.offset,
            epoch: read.top.epoch.clone(),
        };
        p.envelope.clone().positioned(position)
    })
}

/// Sorts publications of one epoch by offset and drops duplicates.
fn sorted(mut list: Vec<Envelope>) -> Vec<Envelope> {
    list.sort_by_key(|e| e.position.as_ref().map_or(0, |p| p.offset));
    list.dedup_by_key(|e| e.position.as_ref().map_or(0, |p| p.offset));
    list
}

/// What a joining connection gets: its history after `since` merged with the live
/// publications that arrived meanwhile, if that is provably complete; else only what came
/// after the top it is told about.
fn merge_for_join(
    read: &HistoryRead,
    since: Option<&StreamPosition>,
    live: Vec<Envelope>,
    max: usize,
) -> (Recovery, Vec<Envelope>) {
    let epoch = &read.top.epoch;
    let same_epoch = |e: &Envelope| e.position.as_ref().is_some_and(|p| &p.epoch == epoch);
    let after_top = |top: u64| {
        sorted(live.iter().filter(|e| same_epoch(e)).cloned().collect())
            .into_iter()
            .filter(move |e| e.position.as_ref().is_some_and(|p| p.offset > top))
    };
    let fresh = |recovered: bool| {
        let replay: Vec<Envelope> = after_top(read.top.offset).collect();
        let position = replay
            .last()
            .and_then(|e| e.position.clone())
            .unwrap_or_else(|| read.top.clone());
        (
            Recovery {
                recovered,
                position,
                replayed: 0,
            },
            replay,
        )
    };
    let Some(since) = since else {
        return fresh(true);
    };
    // Offset 0: the client had seen nothing, of whatever epoch.
    let epoch_ok = since.offset == 0 || &since.epoch == epoch;
    if !epoch_ok || read.publications.len() > max {
        return fresh(false);
    }
    let mut all: Vec<Envelope> = positioned(read).collect();
    all.extend(live.iter().filter(|e| same_epoch(e)).cloned());
    let all: Vec<Envelope> = sorted(all)
        .into_iter()
        .filter(|e| e.position.as_ref().is_some_and(|p| p.offset > since.offset))
        .collect();
    let contiguous = all
        .iter()
        .zip(since.offset + 1..)
        .all(|(e, want)| e.position.as_ref().is_some_and(|p| p.offset == want));
    let reaches_top = all
        .last()
        .and_then(|e| e.position.as_ref())
        .map_or(since.offset, |p| p.offset)
        >= read.top.offset;
    if !contiguous || !reaches_top || all.len() > max {
        return fresh(false);
    }
    let position = all
        .last()
        .and_then(|e| e.position.clone())
        .unwrap_or_else(|| StreamPosition {
            offset: since.offset.max(read.top.offset),
            epoch: epoch.clone(),
        });
    let replayed = all.len();
    (
        Recovery {
            recovered: true,
            position,
            replayed,
        },
        all,
    )
}

/// Brings a room up to date on this node after a gap: reads the history after `last`,
/// merges it with the live publications that waited, delivers them in order; says so to
/// the members when the history cannot fill the gap (or cannot be read).
async fn catch_up(inner: Weak<Inner>, room: String, mut last: StreamPosition) {
    loop {
        let Some(manager) = inner.upgrade().map(|inner| ConnectionManager { inner }) else {
            return;
        };
        let Some(history) = manager.history() else {
            return;
        };
        let max = history.config.recovery_max;
        let read = read(history, &room, last.offset, max).await;
        let mut tracks = history.tracks();
        let Some(track) = tracks.get_mut(room.as_str()) else {
            return;
        };
        let waiting = track.catching_up.take().unwrap_or_default();
        let conns = manager.read().room_connections(&room, None);
        let (list, lost) = match &read {
            Ok(read) if read.top.epoch == last.epoch => {
                let mut list: Vec<Envelope> = positioned(read).collect();
                list.extend(
                    waiting
                        .iter()
                        .filter(|e| e.position.as_ref().is_some_and(|p| p.epoch == last.epoch))
                        .cloned(),
                );
                let list = sorted(list);
                let first_missing = list
                    .iter()
                    .filter_map(|e| e.position.as_ref())
                    .find(|p| p.offset > last.offset)
                    .is_some_and(|p| p.offset > last.offset + 1);
                // The read was cut at `max` and more is kept: read on before delivering
                // the live ones that wait.
                let more = read.publications.len() == max
                    && read
                        .publications
                        .last()
                        .is_some_and(|p| p.offset < read.top.offset);
                if more && !first_missing {
                    let through = read.publications.last().map_or(last.offset, |p| p.offset);
                    let (now, later): (Vec<Envelope>, Vec<Envelope>) = list
                        .into_iter()
                        .partition(|e| e.position.as_ref().is_some_and(|p| p.offset <= through));
                    for e in &now {
                        deliver_one(&manager, track, &conns, e, &mut last);
                    }
                    track.catching_up = Some(later);
                    drop(tracks);
                    continue;
                }
                (list, first_missing)
            }
            // A new epoch: what was missed of the old one is lost; say so, and catch up
            // the new one from its beginning.
            Ok(read) if read.top.epoch != last.epoch && !read.top.epoch.is_empty() => {
                let start = StreamPosition {
                    offset: 0,
                    epoch: read.top.epoch.clone(),
                };
                manager.deliver_except(track, &conns, &loss_notice(&room, &start), None);
                last = start;
                track.last = Some(last.clone());
                track.catching_up = Some(waiting);
                drop(tracks);
                continue;
            }
            // An unreadable store: what was missed is lost.
            _ => (sorted(waiting), true),
        };
        if lost {
            if let Err(e) = &read {
                tracing::warn!(room, error = %e, "history unreadable: a gap is not recovered");
            }
            let now = list
                .first()
                .and_then(|e| e.position.clone())
                .map_or(last.clone(), |p| StreamPosition {
                    offset: p.offset.saturating_sub(1),
                    epoch: p.epoch,
                });
            manager.deliver_except(track, &conns, &loss_notice(&room, &now), None);
            last = now;
        }
        for e in &list {
            deliver_one(&manager, track, &conns, e, &mut last);
        }
        track.last = Some(last);
        return;
    }
}

/// Delivers one publication of a catch-up if it comes after `last` (and moves `last`).
fn deliver_one(
    manager: &ConnectionManager,
    track: &mut RoomTrack,
    conns: &[Arc<Conn>],
    envelope: &Envelope,
    last: &mut StreamPosition,
) {
    let Some(position) = &envelope.position else {
        return;
    };
    if position.epoch == last.epoch && position.offset <= last.offset {
        return;
    }
    let exclude = envelope.exclude_user.as_deref();
    let targets: Vec<Arc<Conn>> = conns
        .iter()
        .filter(|c| exclude != Some(&*c.user_id))
        .cloned()
        .collect();
    let message = PreparedMessage::from_frame(render(envelope));
    manager.deliver_except(track, &targets, &message, Some(envelope));
    *last = position.clone();
}

/// Compares the rooms with the tops of their streams every `check_every`; ends with the
/// manager.
pub(super) async fn check_tops(inner: Weak<Inner>) {
    loop {
        let Some(period) = inner
            .upgrade()
            .and_then(|i| i.history.as_ref().map(|h| h.check_every))
        else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let manager = ConnectionManager { inner };
        if let Some(history) = manager.history() {
            manager.check_tops(history).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_embedded_as_the_last_fields() {
        let position = StreamPosition {
            offset: 7,
            epoch: "e1".into(),
        };
        let frame = protocol::encode_frame(protocol::OP_TEXT, br#"{"type":"message","data":1}"#);
        let got = embed(&frame, &position).unwrap();
        assert_eq!(
            got,
            protocol::encode_frame(
                protocol::OP_TEXT,
                br#"{"type":"message","data":1,"offset":7,"epoch":"e1"}"#
            )
        );
        let empty = protocol::encode_frame(protocol::OP_TEXT, b"{ }");
        assert_eq!(
            embed(&empty, &position).unwrap(),
            protocol::encode_frame(protocol::OP_TEXT, br#"{ "offset":7,"epoch":"e1"}"#)
        );
        let not_object = protocol::encode_frame(protocol::OP_TEXT, b"[1]");
        assert_eq!(embed(&not_object, &position), None);
    }
}
