//! What the manager counts: [`ManagerStats`] for callers, the `metrics` facade for
//! exporters, updated in one place.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters of what the manager did, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ManagerStats {
    /// Connections registered.
    pub connects: u64,
    /// Connections removed.
    pub disconnects: u64,
    /// Frames handed to connections (written or queued).
    pub frames_sent: u64,
    /// Messages dropped by the slow-consumer policy (`DropNewest` / `DropOldest`).
    pub dropped: u64,
    /// Connections closed with 1013 because their queue was full.
    pub slow_consumer_disconnects: u64,
    /// Connections closed with 1011 because they did not answer keepalive pings.
    pub keepalive_timeouts: u64,
    /// Messages deflated (permessage-deflate): once per broadcast whatever the number of
    /// recipients, once per send to a connection; counted even when deflate did not make the
    /// message smaller (it then went plain).
    pub deflated: u64,
}

/// The live counters behind [`ManagerStats`], and the handles of the `metrics` series they
/// feed (taken once, when the manager is built: an exporter installed later sees nothing).
#[derive(Debug)]
pub(super) struct Counters {
    connects: AtomicU64,
    disconnects: AtomicU64,
    frames_sent: AtomicU64,
    dropped: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    keepalive_timeouts: AtomicU64,
    deflated: AtomicU64,
    m: Handles,
}

#[derive(Debug)]
struct Handles {
    connects: metrics::Counter,
    disconnects: metrics::Counter,
    keepalive_timeouts: metrics::Counter,
    messages_sent: metrics::Counter,
    bytes_sent: metrics::Counter,
    messages_received: metrics::Counter,
    bytes_received: metrics::Counter,
    dropped: metrics::Counter,
    slow_consumer_disconnects: metrics::Counter,
    deflated: metrics::Counter,
    broadcast_duration: metrics::Histogram,
}

impl Counters {
    pub(super) fn new() -> Self {
        Self {
            connects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            slow_consumer_disconnects: AtomicU64::new(0),
            keepalive_timeouts: AtomicU64::new(0),
            deflated: AtomicU64::new(0),
            m: Handles {
                connects: metrics::counter!("svc_ws_connects_total"),
                disconnects: metrics::counter!("svc_ws_disconnects_total"),
                keepalive_timeouts: metrics::counter!("svc_ws_keepalive_timeouts_total"),
                messages_sent: metrics::counter!("svc_ws_messages_sent_total"),
                bytes_sent: metrics::counter!("svc_ws_bytes_sent_total"),
                messages_received: metrics::counter!("svc_ws_messages_received_total"),
                bytes_received: metrics::counter!("svc_ws_bytes_received_total"),
                dropped: metrics::counter!("svc_ws_messages_dropped_total"),
                slow_consumer_disconnects: metrics::counter!(
                    "svc_ws_slow_consumer_disconnects_total"
                ),
                deflated: metrics::counter!("svc_ws_messages_deflated_total"),
                broadcast_duration: metrics::histogram!("svc_ws_broadcast_duration_seconds"),
            },
        }
    }

    /// A connection was registered.
    pub(super) fn connected(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.m.connects.increment(1);
    }

    /// A connection was removed.
    pub(super) fn disconnected(&self) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        self.m.disconnects.increment(1);
    }

    /// A connection did not answer its keepalive ping in time.
    pub(super) fn keepalive_timeout(&self) {
        self.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
        self.m.keepalive_timeouts.increment(1);
    }

    /// What sends of one message did (`bytes`: the frames handed over, all recipients
    /// together): one place for broadcasts and `Connection::send` alike.
    pub(super) fn sends(&self, sent: u64, bytes: u64, dropped: u64, overflowed: u64) {
        if sent > 0 {
            self.frames_sent.fetch_add(sent, Ordering::Relaxed);
            self.m.messages_sent.increment(sent);
            self.m.bytes_sent.increment(bytes);
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
            self.m.dropped.increment(dropped);
        }
        if overflowed > 0 {
            self.slow_consumer_disconnects
                .fetch_add(overflowed, Ordering::Relaxed);
            self.m.slow_consumer_disconnects.increment(overflowed);
        }
    }

    /// A message was deflated (permessage-deflate).
    pub(super) fn deflated(&self) {
        self.deflated.fetch_add(1, Ordering::Relaxed);
        self.m.deflated.increment(1);
    }

    /// A message of `len` payload bytes arrived from a registered connection.
    pub(super) fn received(&self, len: usize) {
        self.m.messages_received.increment(1);
        self.m.bytes_received.increment(len as u64);
    }

    /// How long a delivery to this node's connections took.
    pub(super) fn delivered_in(&self, took: std::time::Duration) {
        self.m.broadcast_duration.record(took);
    }

    /// The counters now.
    pub(super) fn snapshot(&self) -> ManagerStats {
        ManagerStats {
            connects: self.connects.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            slow_consumer_disconnects: self.slow_consumer_disconnects.load(Ordering::Relaxed),
            keepalive_timeouts: self.keepalive_timeouts.load(Ordering::Relaxed),
            deflated: self.deflated.load(Ordering::Relaxed),
        }
    }
}
