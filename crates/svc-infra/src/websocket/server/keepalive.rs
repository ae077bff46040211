//! Keepalive: one task and one timer per manager pings the connections that have been
//! quiet and closes those that do not answer, instead of a timer per connection.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use super::{
    clock::{now_ms, now_us},
    flush::Deferred,
    manager::{ConnectionManager, Ended, Inner},
    outbound::ping_frame,
};

impl ConnectionManager {
    /// Starts the one keepalive task of this manager (a single timer for all connections).
    pub(super) fn start_keepalive(&self) {
        let Some(interval) = self.inner.config.ping_interval else {
            return;
        };
        if self.inner.keepalive_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let timeout = self.inner.config.ping_timeout;
        tokio::spawn(keepalive(weak, interval, timeout));
    }
}

/// The close reason of a connection that did not answer a ping in time (code 1011).
const KEEPALIVE_TIMEOUT: &str = "keepalive ping timeout";

/// Pings connections that have been quiet for `interval`, and closes with 1011 those that
/// did not answer within `timeout`. One task per manager; it ends with the manager.
async fn keepalive(inner: Weak<Inner>, interval: Duration, timeout: Option<Duration>) {
    let tick = timeout
        .map_or(interval, |t| t.min(interval))
        .div_f64(4.0)
        .max(Duration::from_millis(5));
    let ping = ping_frame();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let manager = ConnectionManager { inner };
        let now = now_ms();
        let now_micros = now_us();
        let mut deferred = Deferred::default();
        for conn in manager.snapshot().iter() {
            let sent = conn.out.ping_sent.load(Ordering::Relaxed);
            if let Some(t) = timeout
                && sent != 0
                && now_micros.saturating_sub(sent) > t.as_micros() as u64
            {
                manager.inner.counters.keepalive_timeout();
                conn.out.kill(1011, KEEPALIVE_TIMEOUT);
                manager.remove(
                    conn,
                    true,
                    Ended::elsewhere(Some((1011, KEEPALIVE_TIMEOUT))),
                );
                continue;
            }
            let quiet = now.saturating_sub(conn.out.last_seen.load(Ordering::Relaxed));
            if sent == 0 && quiet >= interval.as_millis() as u64 {
                conn.out.send_ping(&ping, &mut deferred);
            }
        }
        manager.inner.flush_queue.extend(deferred);
    }
}
