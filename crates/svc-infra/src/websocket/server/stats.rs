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
}

/// The live counters behind [`ManagerStats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    connects: AtomicU64,
    disconnects: AtomicU64,
    frames_sent: AtomicU64,
    dropped: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    keepalive_timeouts: AtomicU64,
}

impl Counters {
    /// A connection was registered.
    pub(super) fn connected(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("svc_ws_connects_total").increment(1);
    }

    /// A connection was removed.
    pub(super) fn disconnected(&self) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("svc_ws_disconnects_total").increment(1);
    }

    /// A connection did not answer its keepalive ping in time.
    pub(super) fn keepalive_timeout(&self) {
        self.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("svc_ws_keepalive_timeouts_total").increment(1);
    }

    /// What sends did: one place for broadcasts and `Connection::send` alike.
    pub(super) fn sends(&self, sent: u64, dropped: u64, overflowed: u64) {
        self.frames_sent.fetch_add(sent, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
            metrics::counter!("svc_ws_messages_dropped_total").increment(dropped);
        }
        if overflowed > 0 {
            self.slow_consumer_disconnects
                .fetch_add(overflowed, Ordering::Relaxed);
            metrics::counter!("svc_ws_slow_consumer_disconnects_total").increment(overflowed);
        }
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
        }
    }
}
