//! [`RedisBackplane`]: the nodes of a cluster meet on a Redis server's pub/sub channels.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc, watch};

use super::{Backplane, BackplaneStatus, Envelope, Inbox, Interest, Presence, Topic};
use crate::websocket::{WebSocketError, backoff::Backoff};

/// How long any request to Redis may take: connecting (TCP, then the handshake's round trip),
/// a subscribe, a pipeline of publishes, a ping. A Redis that is stopped but not dead
/// completes TCP handshakes (the kernel does) and then answers nothing, so this is what
/// bounds every step against a hung Redis.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Both connections are pinged this often, whatever else flows on them: a pub/sub connection
/// that receives nothing may be idle or hung, and only an answer tells which.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Publishes waiting for the Redis task beyond this many are dropped (and counted).
const QUEUE: usize = 16 * 1024;
/// At most this many waiting publishes go to Redis in one pipeline.
const PIPELINE: u64 = 512;
/// At most this many channels per SUBSCRIBE or UNSUBSCRIBE, so that each such request of a
/// node with many users (all at once after a reconnect) stays well within the timeout.
const SUBSCRIBE_BATCH: usize = 1024;
/// Delays between connection attempts: 100 ms doubling to 500 ms, ±50%. The cap is low so
/// that a node is back within a second of Redis, however long Redis was away (a longer
/// cap would make a long outage cost more after its end); the wide jitter spreads the
/// attempts of a whole cluster, so that they neither arrive together at a Redis that comes
/// back nor stay in step while it is away (against a dead Redis, a thousand nodes make some
/// 2,000 attempts, 4,000 TCP connections, a second, which a Redis and its host absorb).
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500), 0.5);
/// While Redis stays away, one failed attempt in this many is logged as a warning (one every
/// minute or two); the others at debug level.
const WARN_EVERY: u32 = 100;

/// A [`Backplane`] over Redis pub/sub (feature `redis`).
///
/// Channels are `{prefix}:all`, `{prefix}:room:{room}` and `{prefix}:user:{user}`
/// (prefix `svc-ws` unless [`with_prefix`](Self::with_prefix)); a node subscribes to the
/// room and user channels of its own members and connections only. Messages travel as
/// [`Envelope::to_bytes`]; presence ([`Presence::to_bytes`]) on `{prefix}:presence`, which
/// every node reads.
///
/// Redis going away never stops local delivery: the node keeps serving its own
/// connections, nothing on the send path waits for Redis, and sends meant for other nodes
/// meanwhile are dropped and counted (`svc_ws_backplane_dropped_total`).
///
/// - **Detection.** Redis that dies closes the connections, which is noticed at once. Redis
///   that hangs (stopped, overloaded, a network that drops everything) leaves them open:
///   both connections, the pub/sub one included, are pinged every second whatever else
///   flows on them, and every request (connect, subscribe, a pipeline of publishes, ping)
///   must be answered within 1 s. So a hang is noticed within **2 s**, and
///   [`status`](Backplane::status) says [`BackplaneStatus::Disconnected`] from then on.
/// - **Resumption.** While disconnected, the backplane tries to connect again after
///   100 ms, then doubling to at most 500 ms between attempts, ±50% jitter (so at most
///   750 ms, however long the outage; the jitter keeps a cluster's nodes from moving in
///   step). An attempt in flight against a hung Redis waits in its socket and is answered as
///   soon as Redis runs again; one that is lost (its connection did not fit in a stopped
///   Redis's full accept queue) gives up after 1 s. So cross-node delivery resumes within
///   **750 ms of Redis answering again, plus the connect and subscribe round trips**
///   (1.75 s plus those if the attempt in flight was lost), whatever the outage's length.
///   The backplane subscribes again to everything its node needs and reports
///   [`BackplaneStatus::Connected`] once it has.
pub struct RedisBackplane {
    shared: Arc<Shared>,
    publish: mpsc::Sender<(String, Bytes)>,
    /// Taken by `attach`, which starts the task that owns the Redis connections.
    start: Mutex<Option<mpsc::Receiver<(String, Bytes)>>>,
}

struct Shared {
    client: redis::Client,
    prefix: String,
    /// The channels this node's connections need.
    wanted: Mutex<Interest<String>>,
    /// The wanted set changed.
    changed: Notify,
    connected: watch::Sender<bool>,
    inbox: OnceLock<Inbox>,
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("prefix", &self.shared.prefix)
            .field("connected", &*self.shared.connected.borrow())
            .finish_non_exhaustive()
    }
}

impl RedisBackplane {
    /// A backplane for the Redis server at `url` (`redis://host:port/db`, `rediss://` with
    /// TLS is not enabled in this build). Nothing connects until a manager attaches it
    /// ([`ManagerBuilder::backplane`](crate::websocket::ManagerBuilder::backplane),
    /// inside a tokio runtime); a Redis server that is not there yet is waited for.
    pub fn new(url: &str) -> Result<Self, WebSocketError> {
        let client = redis::Client::open(url).map_err(|e| {
            // Names the argument, not REDIS_URL: the URL may come from anywhere (svc-ws adds
            // the variable's name). A URL with credentials is not repeated.
            let expected = format!("a redis://host:port/db URL for the Redis backplane ({e})");
            WebSocketError::Config(if has_userinfo(url) {
                crate::websocket::ConfigError::hidden("url", expected)
            } else {
                crate::websocket::ConfigError::new("url", url, expected)
            })
        })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                prefix: "svc-ws".to_owned(),
                wanted: Mutex::new(Interest::default()),
                changed: Notify::new(),
                connected: watch::Sender::new(false),
                inbox: OnceLock::new(),
            }),
            publish: tx,
            start: Mutex::new(Some(rx)),
        })
    }

    /// Uses `prefix` for channel names, so that several clusters can share one Redis.
    /// Call before attaching.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.prefix = prefix.into();
        }
        self
    }

    /// Waits until the backplane is connected (and subscribed), at most `within`. Returns
    /// whether it is.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let mut rx = self.shared.connected.subscribe();
        tokio::time::timeout(within, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn channel(&self, topic: &Topic) -> String {
        channel(&self.shared.prefix, topic)
    }

    fn queue(&self, channel: String, payload: Bytes) {
        if !*self.shared.connected.borrow() || self.publish.try_send((channel, payload)).is_err() {
            metrics::counter!("svc_ws_backplane_dropped_total").increment(1);
        }
    }
}

/// Whether `url` carries a user or password (`redis://:secret@host`), which must not be logged.
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

fn presence_channel(prefix: &str) -> String {
    format!("{prefix}:presence")
}

pub(super) fn channel(prefix: &str, topic: &Topic) -> String {
    match topic {
        Topic::All => format!("{prefix}:all"),
        Topic::Room(r) => format!("{prefix}:room:{r}"),
        Topic::User(u) => format!("{prefix}:user:{u}"),
    }
}

impl Backplane for RedisBackplane {
    fn attach(&self, inbox: Inbox) {
        if self.shared.inbox.set(inbox).is_err() {
            tracing::warn!("RedisBackplane attached twice; keeping the first manager");
            return;
        }
        self.shared
            .wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(presence_channel(&self.shared.prefix));
        let rx = self.start.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (rx, tokio::runtime::Handle::try_current()) {
            (Some(rx), Ok(runtime)) => drop(runtime.spawn(run(self.shared.clone(), rx))),
            (_, Err(_)) => tracing::error!(
                "RedisBackplane attached outside a tokio runtime: it stays disconnected"
            ),
            (None, Ok(_)) => {}
        }
    }

    fn publish(&self, envelope: Envelope) {
        self.queue(self.channel(&envelope.topic), envelope.to_bytes());
    }

    fn publish_presence(&self, presence: Presence) {
        self.queue(presence_channel(&self.shared.prefix), presence.to_bytes());
    }

    fn subscribe(&self, topic: &Topic) {
        let channel = self.channel(topic);
        let mut wanted = self.shared.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if wanted.add(channel) {
            self.shared.changed.notify_one();
        }
    }

    fn unsubscribe(&self, topic: &Topic) {
        let channel = self.channel(topic);
        let mut wanted = self.shared.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if wanted.remove(&channel) {
            self.shared.changed.notify_one();
        }
    }

    fn history_store(&self) -> Option<Arc<dyn crate::websocket::history::HistoryStore>> {
        Some(Arc::new(super::RedisHistory::new(
            self.shared.client.clone(),
            self.shared.prefix.clone(),
        )))
    }

    fn status(&self) -> BackplaneStatus {
        if *self.shared.connected.borrow() {
            BackplaneStatus::Connected
        } else {
            BackplaneStatus::Disconnected
        }
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        // The task ends when the publish channel closes; wake it if it waits elsewhere.
        self.shared.changed.notify_one();
    }
}

/// Owns the Redis connections for the backplane's whole life: connect, subscribe, relay,
/// and on any failure start over after a short delay (see [`RETRY`]).
async fn run(shared: Arc<Shared>, mut publish: mpsc::Receiver<(String, Bytes)>) {
    // Failed attempts since the backplane was last connected.
    let mut failures: u32 = 0;
    loop {
        let lost = match session(&shared, &mut publish).await {
            Ok(()) => return, // the backplane was dropped
            Err(e) => e,
        };
        if shared.connected.send_replace(false) {
            failures = 0; // it was connected: the first retry after a loss waits the base delay
            metrics::gauge!("svc_ws_backplane_connected").set(0.0);
            tracing::warn!(
                redis = %shared.client.get_connection_info().addr(),
                error = %lost,
                "Redis backplane disconnected: local delivery goes on, sends to other nodes \
                 are dropped until it is back"
            );
        } else if failures.is_multiple_of(WARN_EVERY) {
            tracing::warn!(error = %lost, failures, "Redis backplane still disconnected");
        } else {
            tracing::debug!(error = %lost, failures, "Redis backplane still disconnected");
        }
        let delay = RETRY.jittered(failures);
        failures = failures.saturating_add(1);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                sent = publish.recv() => match sent {
                    None => return,
                    Some(_) => metrics::counter!("svc_ws_backplane_dropped_total").increment(1),
                },
            }
        }
        metrics::counter!("svc_ws_backplane_reconnects_total").increment(1);
        if Arc::strong_count(&shared) == 1 {
            return;
        }
    }
}

/// One connected stretch. `Ok` when the backplane was dropped, `Err` when Redis was lost.
async fn session(
    shared: &Arc<Shared>,
    publish: &mut mpsc::Receiver<(String, Bytes)>,
) -> Result<(), String> {
    let timed = |what: &'static str| move |_| format!("{what} timed out after {REQUEST_TIMEOUT:?}");
    // Every request below has a timeout of its own; the crate's (500 ms on requests, 1 s on
    // connecting by default) would be a second, hidden set.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(None);
    let (conn, pubsub) = tokio::time::timeout(REQUEST_TIMEOUT, async {
        tokio::join!(
            shared
                .client
                .get_multiplexed_async_connection_with_config(&config),
            shared.client.get_async_pubsub(),
        )
    })
    .await
    .map_err(timed("connect"))?;
    let mut conn = conn.map_err(|e| format!("connect: {e}"))?;
    let (mut sink, mut messages) = pubsub
        .map_err(|e| format!("connect (pub/sub): {e}"))?
        .split();
    let presence = presence_channel(&shared.prefix);
    let mut subscribed = HashSet::new();
    sync(shared, &mut sink, &mut subscribed).await?;
    shared.connected.send_replace(true);
    metrics::gauge!("svc_ws_backplane_connected").set(1.0);
    // The address only (host:port): never the URL, which may hold a password.
    tracing::info!(
        redis = %shared.client.get_connection_info().addr(),
        channels = subscribed.len(),
        "Redis backplane connected"
    );
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            sent = publish.recv() => {
                let Some(first) = sent else { return Ok(()) };
                // Everything waiting goes in one pipeline: one round trip, not one per send.
                let mut pipe = redis::pipe();
                let mut n: u64 = 0;
                let mut next = Some(first);
                while let Some((channel, payload)) = next {
                    pipe.publish(channel, payload.as_ref()).ignore();
                    n += 1;
                    next = if n < PIPELINE { publish.try_recv().ok() } else { None };
                }
                let published = tokio::time::timeout(REQUEST_TIMEOUT, pipe.query_async::<()>(&mut conn))
                    .await
                    .map_err(timed("publish"))
                    .and_then(|r| r.map_err(|e| format!("publish: {e}")));
                if let Err(e) = published {
                    metrics::counter!("svc_ws_backplane_dropped_total").increment(n);
                    return Err(e);
                }
                metrics::counter!("svc_ws_backplane_published_total").increment(n);
            }
            () = shared.changed.notified() => {
                if Arc::strong_count(shared) == 1 {
                    return Ok(());
                }
                sync(shared, &mut sink, &mut subscribed).await?;
            }
            message = messages.next() => {
                let Some(message) = message else {
                    return Err("the subscription connection closed".to_owned());
                };
                let Some(inbox) = shared.inbox.get() else { continue };
                let payload = message.get_payload_bytes();
                let received = if message.get_channel_name() == presence {
                    Presence::from_bytes(payload).map(|p| inbox.presence(&p))
                } else {
                    Envelope::from_bytes(payload).map(|e| {
                        inbox.deliver(&e);
                    })
                };
                if let Err(e) = received {
                    metrics::counter!("svc_ws_backplane_malformed_total").increment(1);
                    tracing::warn!(channel = %message.get_channel_name(), "{e}");
                }
            }
            _ = ping.tick() => {
                // Both at once: the pub/sub connection, which may legitimately receive
                // nothing for a long time, and the one that publishes.
                let pings = async {
                    tokio::try_join!(
                        async {
                            redis::cmd("PING")
                                .query_async::<()>(&mut conn)
                                .await
                                .map_err(|e| format!("ping: {e}"))
                        },
                        async {
                            sink.ping::<()>()
                                .await
                                .map_err(|e| format!("ping (pub/sub): {e}"))
                        },
                    )
                };
                tokio::time::timeout(REQUEST_TIMEOUT, pings)
                    .await
                    .map_err(timed("ping"))??;
            }
        }
    }
}

/// Brings the subscriptions of the pub/sub connection in line with what the node wants.
async fn sync(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    subscribed: &mut HashSet<String>,
) -> Result<(), String> {
    let wanted: HashSet<String> = shared
        .wanted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    let add: Vec<&String> = wanted.difference(subscribed).collect();
    let remove: Vec<&String> = subscribed.difference(&wanted).collect();
    for batch in add.chunks(SUBSCRIBE_BATCH) {
        tokio::time::timeout(REQUEST_TIMEOUT, sink.subscribe(batch))
            .await
            .map_err(|_| format!("subscribe timed out after {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| format!("subscribe: {e}"))?;
    }
    for batch in remove.chunks(SUBSCRIBE_BATCH) {
        tokio::time::timeout(REQUEST_TIMEOUT, sink.unsubscribe(batch))
            .await
            .map_err(|_| format!("unsubscribe timed out after {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| format!("unsubscribe: {e}"))?;
    }
    *subscribed = wanted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds the docs promise follow from the constants.
    #[test]
    fn detection_and_resumption_bounds() {
        // A Redis that stops answering is noticed this long after at the latest.
        const DETECTION: Duration = Duration::from_secs(2);
        // A hang: the next ping starts within PING_EVERY unless a request is in flight, and
        // whichever request is the first unanswered fails REQUEST_TIMEOUT after it started.
        assert!(PING_EVERY + REQUEST_TIMEOUT <= DETECTION);
        // Resumption: at most 750 ms between attempts, however many have failed.
        for n in [0, 3, 10, 1_000, u32::MAX] {
            for _ in 0..100 {
                assert!(RETRY.jittered(n) <= Duration::from_millis(750));
            }
        }
        assert!(RETRY.jittered(0) <= Duration::from_millis(150));
    }

    #[test]
    fn a_bad_url_is_named_as_the_argument_and_credentials_stay_hidden() {
        let e = RedisBackplane::new("http://127.0.0.1:6379").unwrap_err();
        let WebSocketError::Config(c) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(c.variable, "url");
        assert_eq!(c.value.as_deref(), Some("http://127.0.0.1:6379"));
        let shown = e.to_string();
        assert!(!shown.contains("REDIS_URL"), "{shown}");
        assert!(shown.contains("redis://"), "{shown}");

        let e = RedisBackplane::new("http://:hunter2@127.0.0.1/").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(has_userinfo("redis://user:pw@h:1/0"));
        assert!(!has_userinfo("redis://h:1/0?x=a@b"));
    }
}
