//! Rooms with history over real sockets: positions on every publication, joining from a
//! position (recovered, or told it is not), a publish storm during a recovering join,
//! concurrent publishers on two nodes, gaps on the live path caught up from the history,
//! a lost last publication noticed by the top check, an epoch change, size and TTL limits;
//! the same against a real Redis (the store's script), FLUSHALL and a restart included.

mod common;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, Query},
    response::Response,
    routing::get,
};
use common::{
    redis::RedisServer,
    server::{Client, assert_silent, connect, next_text, serve},
    within,
};
use serde::Deserialize;
use serde_json::{Value, json};
use svc_infra::websocket::{
    ConnectionManager, HistoryConfig, HistoryLimits, PreparedMessage, PublishOptions,
    StreamPosition, WebSocketConfig, WsManager, WsUpgrade, add_websocket_manager_with,
    backplane::{Envelope, InMemoryBackplane, Inbox, RedisBackplane},
    history::{HistoryRead, HistoryStore, MemoryHistory, StoreFuture},
};

#[derive(Deserialize)]
struct Join {
    room: String,
    offset: Option<u64>,
    epoch: Option<String>,
}

/// `/ws/{user}?room=R[&offset=N&epoch=E]`: registers, joins R from the position (if any),
/// first sends `{"type":"joined","recovered":…,"offset":…,"epoch":…,"replayed":…}`, then
/// stays until the client goes.
async fn ws(
    ws: WsUpgrade,
    Path(user): Path<String>,
    Query(join): Query<Join>,
    WsManager(manager): WsManager,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        let since = join.offset.map(|offset| StreamPosition {
            offset,
            epoch: join.epoch.unwrap_or_default(),
        });
        let joined = conn
            .join_room_from(&join.room, since, |r| {
                let answer = json!({
                    "type": "joined",
                    "recovered": r.recovered,
                    "offset": r.position.offset,
                    "epoch": r.position.epoch,
                    "replayed": r.replayed,
                });
                Some(PreparedMessage::text(&answer.to_string()))
            })
            .await;
        assert!(joined.is_ok(), "{joined:?}");
        while let Some(Ok(_)) = conn.recv().await {}
    })
}

const CHAT: HistoryLimits = HistoryLimits {
    size: 100,
    ttl: Duration::from_secs(300),
};

fn chat_history() -> HistoryConfig {
    HistoryConfig::default().prefix("chat:", Some(CHAT))
}

async fn start(manager: ConnectionManager) -> SocketAddr {
    let app = Router::new().route("/ws/{user}", get(ws));
    serve(add_websocket_manager_with(app, manager)).await
}

fn manager(history: HistoryConfig) -> ConnectionManager {
    ConnectionManager::builder(WebSocketConfig::default())
        .history(history)
        .build()
}

async fn next_json(ws: &mut Client) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// Connects `user` to `room` from `since`; returns the client and the `joined` answer.
async fn join(
    addr: SocketAddr,
    user: &str,
    room: &str,
    since: Option<&StreamPosition>,
) -> (Client, Value) {
    let query = match since {
        Some(p) => format!("?room={room}&offset={}&epoch={}", p.offset, p.epoch),
        None => format!("?room={room}"),
    };
    let mut ws = connect(addr, &format!("/ws/{user}{query}")).await;
    let joined = next_json(&mut ws).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    (ws, joined)
}

async fn publish(manager: &ConnectionManager, room: &str, n: u64) -> StreamPosition {
    let message = json!({"type": "message", "n": n}).to_string();
    let options = PublishOptions::default().embed_position();
    let position = manager.publish(room, message.as_str(), options).await;
    position.unwrap().expect("a room with history")
}

/// Reads messages until one with `n == last`; returns the offsets seen, in order.
async fn offsets_until(ws: &mut Client, last: u64) -> Vec<u64> {
    let mut offsets = Vec::new();
    loop {
        let m = next_json(ws).await;
        assert_eq!(m["type"], "message", "{m}");
        offsets.push(m["offset"].as_u64().unwrap());
        if m["n"] == last {
            return offsets;
        }
    }
}

fn position_of(joined: &Value) -> StreamPosition {
    StreamPosition {
        offset: joined["offset"].as_u64().unwrap(),
        epoch: joined["epoch"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test]
async fn publications_carry_positions_and_a_join_from_one_replays_what_followed() {
    let manager = manager(chat_history());
    let addr = start(manager.clone()).await;
    let (mut alice, joined) = join(addr, "alice", "chat:lobby", None).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["offset"], 0);

    let mut positions = Vec::new();
    for n in 1..=5 {
        positions.push(publish(&manager, "chat:lobby", n).await);
    }
    let epoch = positions[0].epoch.clone();
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(positions.iter().all(|p| p.epoch == epoch));
    for n in 1..=5 {
        let m = next_json(&mut alice).await;
        assert_eq!(
            m,
            json!({"type": "message", "n": n, "offset": n, "epoch": epoch})
        );
    }

    // Bob saw up to 2: he gets 3, 4, 5 after the answer, then the live ones.
    let (mut bob, joined) = join(addr, "bob", "chat:lobby", Some(&positions[1])).await;
    assert_eq!(
        joined,
        json!({"type": "joined", "recovered": true, "offset": 5, "epoch": epoch, "replayed": 3})
    );
    assert_eq!(offsets_until(&mut bob, 5).await, [3, 4, 5]);
    publish(&manager, "chat:lobby", 6).await;
    assert_eq!(offsets_until(&mut bob, 6).await, [6]);
    assert_eq!(offsets_until(&mut alice, 6).await, [6]);

    // Up to date already: nothing replayed, recovered.
    let (mut carol, joined) = join(
        addr,
        "carol",
        "chat:lobby",
        Some(&position_of(&json!({"offset": 6, "epoch": epoch}))),
    )
    .await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["replayed"], 0);
    assert_silent(&mut carol, Duration::from_millis(100)).await;

    // A room without history: a plain join (no answer, no position).
    assert_eq!(
        manager
            .publish("lobby", "plain", PublishOptions::default())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_join_that_cannot_be_proven_complete_says_recovered_false() {
    let history = HistoryConfig::default()
        .prefix("chat:", Some(CHAT))
        .prefix(
            "short:",
            Some(HistoryLimits {
                size: 3,
                ttl: Duration::from_secs(300),
            }),
        )
        .recovery_max(4);
    let manager = manager(history);
    let addr = start(manager.clone()).await;
    let mut last = None;
    for n in 1..=6 {
        last = Some(publish(&manager, "short:r", n).await);
        publish(&manager, "chat:r", n).await;
    }
    let top = last.unwrap();

    // The history keeps 3: offsets 4–6. From 1, 2 and 3 are gone.
    let since = StreamPosition {
        offset: 1,
        epoch: top.epoch.clone(),
    };
    let (mut a, joined) = join(addr, "a", "short:r", Some(&since)).await;
    assert_eq!(
        joined,
        json!({"type": "joined", "recovered": false, "offset": 6, "epoch": top.epoch, "replayed": 0})
    );
    assert_silent(&mut a, Duration::from_millis(100)).await;
    // From 3: 4, 5, 6 are all there.
    let since = StreamPosition {
        offset: 3,
        epoch: top.epoch.clone(),
    };
    let (mut b, joined) = join(addr, "b", "short:r", Some(&since)).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(offsets_until(&mut b, 6).await, [4, 5, 6]);

    // Another epoch: not this stream.
    let stale = StreamPosition {
        offset: 5,
        epoch: "0000000000000000".into(),
    };
    let (_c, joined) = join(addr, "c", "short:r", Some(&stale)).await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["offset"], 6);

    // More missed than recovery_max (4): from 0 in a room that kept all 6.
    let zero = StreamPosition {
        offset: 0,
        epoch: String::new(),
    };
    let (_d, joined) = join(addr, "d", "chat:r", Some(&zero)).await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["replayed"], 0);
    // From 2 of 6: 4 missed, within the cap.
    let epoch = manager
        .history_of("chat:r", 0, 0)
        .await
        .unwrap()
        .unwrap()
        .0
        .epoch;
    let since = StreamPosition { offset: 2, epoch };
    let (mut e, joined) = join(addr, "e", "chat:r", Some(&since)).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(offsets_until(&mut e, 6).await, [3, 4, 5, 6]);
}

/// A store whose reads answer 20 ms late (a remote store's round trip): publications made
/// meanwhile are not in what a read returns.
#[derive(Clone, Default)]
struct SlowReads(MemoryHistory);

impl HistoryStore for SlowReads {
    fn attach(&self, inbox: Inbox) {
        self.0.attach(inbox);
    }

    fn publish(
        &self,
        stream: &str,
        envelope: Envelope,
        limits: HistoryLimits,
    ) -> StoreFuture<'_, StreamPosition> {
        self.0.publish(stream, envelope, limits)
    }

    fn read(&self, stream: &str, after: u64, limit: usize) -> StoreFuture<'_, HistoryRead> {
        let read = self.0.read(stream, after, limit);
        Box::pin(async move {
            let read = read.await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            read
        })
    }
}

/// Publications that arrive while a joining connection's history is read (the store
/// answers 20 ms late) wait, and are merged by offset: none lost, none doubled, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_storm_during_a_recovering_join_gives_no_gap_and_no_duplicate() {
    // A burst of 400 unpaced publications: queues long enough for it, and a history and
    // a recovery cap that hold it.
    let manager = ConnectionManager::builder(WebSocketConfig::default().with_max_queue_size(1024))
        .history(
            HistoryConfig::default()
                .prefix("chat:", Some(HistoryLimits { size: 1000, ..CHAT }))
                .recovery_max(1000),
        )
        .history_store(SlowReads::default())
        .build();
    let addr = start(manager.clone()).await;
    let first = publish(&manager, "chat:storm", 0).await;
    let storm = {
        let manager = manager.clone();
        tokio::spawn(async move {
            for n in 1..=400 {
                publish(&manager, "chat:storm", n).await;
                if n % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    // Joins from the first publication while the storm goes on; several times, so that
    // some joins land in the middle of it.
    let mut clients = Vec::new();
    let mut during = 0;
    for i in 0..8 {
        let (ws, joined) = join(addr, &format!("u{i}"), "chat:storm", Some(&first)).await;
        assert_eq!(joined["recovered"], true, "{joined}");
        during += usize::from(joined["offset"].as_u64() < Some(401));
        clients.push(ws);
    }
    within("the storm", storm).await.unwrap();
    assert!(during > 0, "no join landed during the storm");
    for ws in &mut clients {
        let offsets = offsets_until(ws, 400).await;
        let want: Vec<u64> = (2..=401).collect();
        assert_eq!(
            offsets, want,
            "every publication after the first, once, in order"
        );
    }
}

/// Two nodes publish 200 each to `chat:both` at once: the offsets they get are 1–400, each
/// once; then one more, and each member (one per node) got offsets 1–401 in order.
async fn both_publish_at_once(
    a: &ConnectionManager,
    b: &ConnectionManager,
    members: [&mut Client; 2],
) {
    let publisher = |m: ConnectionManager, base: u64| {
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..200 {
                offsets.push(publish(&m, "chat:both", base + n).await.offset);
            }
            offsets
        })
    };
    let (pa, pb) = (publisher(a.clone(), 1000), publisher(b.clone(), 2000));
    let (mut offsets, ob) = (pa.await.unwrap(), pb.await.unwrap());
    offsets.extend(ob);
    offsets.sort_unstable();
    let want: Vec<u64> = (1..=400).collect();
    assert_eq!(offsets, want, "no offset given twice or skipped");
    publish(b, "chat:both", 9999).await;
    for ws in members {
        assert_eq!(
            offsets_until(ws, 9999).await,
            (1..=401).collect::<Vec<u64>>()
        );
    }
}

/// Two nodes publishing to one room at once: contiguous offsets, every member of either
/// node gets them all in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes_give_contiguous_offsets() {
    let hub = InMemoryBackplane::new();
    let build = |hub: &InMemoryBackplane| {
        // Two bursts of 200 unpaced publications: queues long enough for them.
        ConnectionManager::builder(WebSocketConfig::default().with_max_queue_size(1024))
            .backplane(hub.clone())
            .history(chat_history())
            .build()
    };
    let (a, b) = (build(&hub), build(&hub));
    let (addr_a, addr_b) = (start(a.clone()).await, start(b.clone()).await);
    let (mut on_a, _) = join(addr_a, "x", "chat:both", None).await;
    let (mut on_b, _) = join(addr_b, "y", "chat:both", None).await;
    both_publish_at_once(&a, &b, [&mut on_a, &mut on_b]).await;
}

/// A store that loses chosen publications on their way to the nodes (what a Redis blink
/// does to pub/sub), while keeping them in the history.
#[derive(Clone, Default)]
struct Lossy {
    inner: MemoryHistory,
    inboxes: Arc<Mutex<Vec<Inbox>>>,
    lose: Arc<Mutex<HashSet<u64>>>,
}

impl HistoryStore for Lossy {
    fn attach(&self, inbox: Inbox) {
        self.inboxes.lock().unwrap().push(inbox);
    }

    fn publish(
        &self,
        stream: &str,
        envelope: Envelope,
        limits: HistoryLimits,
    ) -> StoreFuture<'_, StreamPosition> {
        let stream = stream.to_owned();
        Box::pin(async move {
            // The inner store has no node attached: it only keeps and numbers.
            let position = self
                .inner
                .publish(&stream, envelope.clone(), limits)
                .await?;
            if !self.lose.lock().unwrap().contains(&position.offset) {
                let positioned = envelope.positioned(position.clone());
                for inbox in self.inboxes.lock().unwrap().iter() {
                    inbox.deliver(&positioned);
                }
            }
            Ok(position)
        })
    }

    fn read(&self, stream: &str, after: u64, limit: usize) -> StoreFuture<'_, HistoryRead> {
        self.inner.read(stream, after, limit)
    }
}

#[tokio::test]
async fn a_gap_on_the_live_path_is_caught_up_from_the_history() {
    let store = Lossy::default();
    store.lose.lock().unwrap().extend([3, 4, 7]);
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .history(chat_history())
        .history_store(store.clone())
        .history_check(Duration::from_millis(100))
        .build();
    let addr = start(manager.clone()).await;
    let (mut ws, _) = join(addr, "u", "chat:gap", None).await;
    for n in 1..=6 {
        publish(&manager, "chat:gap", n).await;
    }
    // 3 and 4 never arrived live: 5 shows the gap, the node reads them from the history.
    assert_eq!(offsets_until(&mut ws, 6).await, [1, 2, 3, 4, 5, 6]);
    // 7 is lost and nothing follows: the top check notices.
    publish(&manager, "chat:gap", 7).await;
    assert_eq!(offsets_until(&mut ws, 7).await, [7]);
}

/// The stream started over (Redis flushed) and the first publications of the new epoch did
/// not arrive live (this node was not subscribed again yet): the members are told the old
/// stream is gone, then get the new one from its beginning, from the history.
#[tokio::test]
async fn a_new_epoch_is_caught_up_from_its_beginning() {
    let store = Lossy::default();
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .history(chat_history())
        .history_store(store.clone())
        .build();
    let addr = start(manager.clone()).await;
    let (mut ws, _) = join(addr, "u", "chat:n", None).await;
    publish(&manager, "chat:n", 1).await;
    assert_eq!(offsets_until(&mut ws, 1).await, [1]);
    store.inner.clear();
    store.lose.lock().unwrap().extend([1, 2]);
    for n in 2..=4 {
        publish(&manager, "chat:n", n).await;
    }
    let notice = next_json(&mut ws).await;
    assert_eq!(
        (notice["type"].as_str(), notice["offset"].as_u64()),
        (Some("recovery"), Some(0)),
        "{notice}"
    );
    assert_eq!(offsets_until(&mut ws, 4).await, [1, 2, 3]);
}

#[tokio::test]
async fn a_new_epoch_is_announced_before_its_first_publication() {
    let store = MemoryHistory::default();
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .history(chat_history())
        .history_store(store.clone())
        .build();
    let addr = start(manager.clone()).await;
    let (mut ws, _) = join(addr, "u", "chat:e", None).await;
    let old = publish(&manager, "chat:e", 1).await;
    assert_eq!(offsets_until(&mut ws, 1).await, [1]);
    store.clear(); // the store lost its past (a restart, FLUSHALL)
    let new = publish(&manager, "chat:e", 2).await;
    assert_ne!(new.epoch, old.epoch);
    assert_eq!(new.offset, 1);
    let notice = next_json(&mut ws).await;
    assert_eq!(
        notice,
        json!({"type": "recovery", "room": "chat:e", "recovered": false, "offset": 0, "epoch": new.epoch})
    );
    let m = next_json(&mut ws).await;
    assert_eq!((m["n"].as_u64(), m["offset"].as_u64()), (Some(2), Some(1)));
    // Recovering from the old epoch: not this stream.
    let (_ws, joined) = join(addr, "v", "chat:e", Some(&old)).await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(position_of(&joined), new);
}

/// Rooms `ttl:*` keep 10 for 300 ms, rooms `size:*` keep 2 for a minute.
fn size_and_ttl() -> HistoryConfig {
    HistoryConfig::default()
        .prefix(
            "ttl:",
            Some(HistoryLimits {
                size: 10,
                ttl: Duration::from_millis(300),
            }),
        )
        .prefix(
            "size:",
            Some(HistoryLimits {
                size: 2,
                ttl: Duration::from_secs(60),
            }),
        )
}

#[tokio::test]
async fn history_keeps_its_size_and_ttl() {
    let store = MemoryHistory::new(1 << 20);
    let history = size_and_ttl();
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .history(history)
        .history_store(store.clone())
        .build();
    for n in 1..=5 {
        publish(&manager, "size:r", n).await;
        publish(&manager, "ttl:r", n).await;
    }
    let (top, kept) = manager.history_of("size:r", 0, 100).await.unwrap().unwrap();
    assert_eq!(top.offset, 5);
    assert_eq!(
        kept.iter().map(|(p, _)| p.offset).collect::<Vec<_>>(),
        [4, 5]
    );
    let (_, kept) = manager.history_of("ttl:r", 0, 100).await.unwrap().unwrap();
    assert_eq!(kept.len(), 5);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (top, kept) = manager.history_of("ttl:r", 0, 100).await.unwrap().unwrap();
    assert!(kept.is_empty(), "expired");
    // The stream is forgotten with its last publication: the next one starts an epoch.
    assert_eq!(top.offset, 0);
    let next = publish(&manager, "ttl:r", 6).await;
    assert_eq!(next.offset, 1);
    // The frames kept are what members got: the position embedded.
    let (_, kept) = manager.history_of("size:r", 4, 1).await.unwrap().unwrap();
    let text = std::str::from_utf8(&kept[0].1[2..]).unwrap();
    let m: Value = serde_json::from_str(text).unwrap();
    assert_eq!(m["offset"], 5);

    // The byte budget: 1 MiB of 10 KiB publications keeps about 100, whatever the rooms.
    let small = MemoryHistory::new(100 * 10_300);
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .history(HistoryConfig::default().all_rooms(Some(CHAT)))
        .history_store(small.clone())
        .build();
    let big = "x".repeat(10_000);
    for i in 0..300 {
        let room = format!("r{}", i % 7);
        manager
            .publish(&room, big.as_str(), PublishOptions::default())
            .await
            .unwrap();
    }
    assert!(small.bytes() <= 100 * 10_300, "{}", small.bytes());
    assert!((95..=102).contains(&small.len()), "{}", small.len());
}

// ---------------------------------------------------------------------------------------
// The Redis store: a real redis-server on a free port.

fn redis_node(redis: &RedisServer, history: HistoryConfig) -> ConnectionManager {
    ConnectionManager::builder(WebSocketConfig::default().with_max_queue_size(1024))
        .backplane(RedisBackplane::new(&redis.url()).unwrap())
        .history(history)
        .history_check(Duration::from_millis(200))
        .build()
}

async fn flushall(redis: &RedisServer) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = within("connect", client.get_multiplexed_async_connection())
        .await
        .unwrap();
    let ok: String = within("FLUSHALL", redis::cmd("FLUSHALL").query_async(&mut conn))
        .await
        .unwrap();
    assert_eq!(ok, "OK");
}

/// Two nodes publishing to one room at once through Redis: the script gives contiguous
/// offsets, and both nodes' members get every publication once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_publishers_on_two_nodes_give_contiguous_offsets() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (
        redis_node(&redis, chat_history()),
        redis_node(&redis, chat_history()),
    );
    let (addr_a, addr_b) = (start(a.clone()).await, start(b.clone()).await);
    let (mut on_a, _) = join(addr_a, "x", "chat:both", None).await;
    let (mut on_b, _) = join(addr_b, "y", "chat:both", None).await;
    redis.subscribers(&["room:chat:both"], 2).await;
    both_publish_at_once(&a, &b, [&mut on_a, &mut on_b]).await;
    // A member who missed some recovers them from Redis on the other node.
    let since = StreamPosition {
        offset: 395,
        epoch: a
            .history_of("chat:both", 0, 0)
            .await
            .unwrap()
            .unwrap()
            .0
            .epoch,
    };
    let (mut late, joined) = join(addr_b, "z", "chat:both", Some(&since)).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(
        offsets_until(&mut late, 9999).await,
        [396, 397, 398, 399, 400, 401]
    );
}

/// FLUSHALL, or a Redis restarted without persistence, loses the streams: the next
/// publication starts a new epoch, members are told, and recovering from the old epoch
/// answers `recovered: false`. While Redis is down a publication fails: nothing is lost
/// silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushall_and_restart_change_the_epoch() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let node = redis_node(&redis, chat_history());
    let addr = start(node.clone()).await;
    let (mut ws, _) = join(addr, "u", "chat:r", None).await;
    redis.subscribers(&["room:chat:r"], 1).await;
    let first = publish(&node, "chat:r", 1).await;
    publish(&node, "chat:r", 2).await;
    assert_eq!(offsets_until(&mut ws, 2).await, [1, 2]);

    flushall(&redis).await;
    let after_flush = publish(&node, "chat:r", 3).await;
    assert_ne!(after_flush.epoch, first.epoch);
    assert_eq!(after_flush.offset, 1);
    let notice = next_json(&mut ws).await;
    assert_eq!(notice["type"], "recovery", "{notice}");
    assert_eq!(notice["recovered"], false);
    assert_eq!(offsets_until(&mut ws, 3).await, [1]);
    let (_old, joined) = join(addr, "v", "chat:r", Some(&first)).await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(position_of(&joined), after_flush);

    redis.kill();
    let failed = node
        .publish(
            "chat:r",
            r#"{"n":4}"#,
            PublishOptions::default().embed_position(),
        )
        .await;
    assert!(
        matches!(
            failed,
            Err(svc_infra::websocket::WebSocketError::History(_))
        ),
        "{failed:?}"
    );
    redis.restart().await;
    redis.subscribers(&["room:chat:r"], 1).await;
    let after_restart = publish(&node, "chat:r", 5).await;
    assert_ne!(after_restart.epoch, after_flush.epoch);
    let notice = next_json(&mut ws).await;
    assert_eq!(notice["type"], "recovery", "{notice}");
    assert_eq!(offsets_until(&mut ws, 5).await, [1]);
}

#[tokio::test]
async fn redis_history_keeps_its_size_and_ttl() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let history = size_and_ttl();
    let node = redis_node(&redis, history);
    for n in 1..=5 {
        publish(&node, "size:r", n).await;
        publish(&node, "ttl:r", n).await;
    }
    let (top, kept) = node.history_of("size:r", 0, 100).await.unwrap().unwrap();
    assert_eq!(top.offset, 5);
    assert_eq!(
        kept.iter().map(|(p, _)| p.offset).collect::<Vec<_>>(),
        [4, 5]
    );
    let (_, kept) = node.history_of("size:r", 4, 100).await.unwrap().unwrap();
    assert_eq!(kept.iter().map(|(p, _)| p.offset).collect::<Vec<_>>(), [5]);
    let text = std::str::from_utf8(&kept[0].1[2..]).unwrap();
    let m: Value = serde_json::from_str(text).unwrap();
    assert_eq!((m["n"].as_u64(), m["offset"].as_u64()), (Some(5), Some(5)));
    let (_, kept) = node.history_of("ttl:r", 0, 100).await.unwrap().unwrap();
    assert_eq!(kept.len(), 5);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (top, kept) = node.history_of("ttl:r", 0, 100).await.unwrap().unwrap();
    assert!(kept.is_empty(), "expired");
    // The epoch and the offsets outlive the publications: a client at 5 is told its
    // history is gone, not matched against a new stream.
    assert_eq!(top.offset, 5);
    assert_eq!(publish(&node, "ttl:r", 6).await.offset, 6);
}
