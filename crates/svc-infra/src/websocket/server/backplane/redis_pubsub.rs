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

/// How long one Redis operation (connect, subscribe, publish, ping) may take.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Publishes waiting for the Redis task beyond this many are dropped (and counted).
const QUEUE: usize = 16 * 1024;
/// At most this many waiting publishes go to Redis in one pipeline.
const PIPELINE: u64 = 512;
/// A connection that has been quiet this long is pinged.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Reconnect delays: 100 ms doubling to 5 s, ±20%.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.2);

/// A [`Backplane`] over Redis pub/sub (feature `redis`).
///
/// Channels are `{prefix}:all`, `{prefix}:room:{room}` and `{prefix}:user:{user}`
/// (prefix `svc-ws` unless [`with_prefix`](Self::with_prefix)); a node subscribes to the
/// room and user channels of its own members and connections only. Messages travel as
/// [`Envelope::to_bytes`]; presence ([`Presence::to_bytes`]) on `{prefix}:presence`, which
/// every node reads.
///
/// Redis going away never stops local delivery: the node keeps serving its own
/// connections, sends meant for other nodes meanwhile are dropped and counted
/// (`svc_ws_backplane_dropped_total`), and the backplane reconnects with exponential
/// backoff (100 ms doubling to 5 s, ±20% jitter), subscribes again to everything its node
/// needs, and reports [`BackplaneStatus::Connected`] once it has. Every Redis operation
/// has a timeout of 3 s; a connection that stops answering is treated as lost.
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

fn channel(prefix: &str, topic: &Topic) -> String {
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
/// and on any failure start over after a backoff.
async fn run(shared: Arc<Shared>, mut publish: mpsc::Receiver<(String, Bytes)>) {
    let mut failures: u32 = 0;
    loop {
        let lost = match session(&shared, &mut publish).await {
            Ok(()) => return, // the backplane was dropped
            Err(e) => e,
        };
        if *shared.connected.borrow() {
            failures = 0; // it was connected: the first retry after a loss waits the base delay
        }
        shared.connected.send_replace(false);
        metrics::gauge!("svc_ws_backplane_connected").set(0.0);
        let delay = BACKOFF.jittered(failures);
        failures = failures.saturating_add(1);
        tracing::warn!(error = %lost, retry_in = ?delay, "Redis backplane disconnected");
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
    let timed = |what: &'static str| move |_| format!("{what} timed out after {OP_TIMEOUT:?}");
    let mut conn =
        tokio::time::timeout(OP_TIMEOUT, shared.client.get_multiplexed_async_connection())
            .await
            .map_err(timed("connect"))?
            .map_err(|e| format!("connect: {e}"))?;
    let (mut sink, mut messages) =
        tokio::time::timeout(OP_TIMEOUT, shared.client.get_async_pubsub())
            .await
            .map_err(timed("connect (pub/sub)"))?
            .map_err(|e| format!("connect (pub/sub): {e}"))?
            .split();
    let presence = presence_channel(&shared.prefix);
    let mut subscribed = HashSet::new();
    sync(shared, &mut sink, &mut subscribed).await?;
    shared.connected.send_replace(true);
    metrics::gauge!("svc_ws_backplane_connected").set(1.0);
    tracing::info!(channels = subscribed.len(), "Redis backplane connected");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
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
                let published: Result<(), _> =
                    tokio::time::timeout(OP_TIMEOUT, pipe.query_async(&mut conn))
                        .await
                        .map_err(timed("publish"))?;
                if let Err(e) = published {
                    metrics::counter!("svc_ws_backplane_dropped_total").increment(n);
                    return Err(format!("publish: {e}"));
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
                let pong: Result<String, _> = tokio::time::timeout(OP_TIMEOUT, redis::cmd("PING").query_async(&mut conn))
                    .await
                    .map_err(timed("ping"))?;
                pong.map_err(|e| format!("ping: {e}"))?;
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
    if !add.is_empty() {
        tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&add))
            .await
            .map_err(|_| "subscribe timed out".to_owned())?
            .map_err(|e| format!("subscribe: {e}"))?;
    }
    if !remove.is_empty() {
        tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(&remove))
            .await
            .map_err(|_| "unsubscribe timed out".to_owned())?
            .map_err(|e| format!("unsubscribe: {e}"))?;
    }
    *subscribed = wanted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
