//! Shutting a manager down: stop admitting, close every connection (at once or spread over
//! a window), wait for the closing handshakes and the `on_disconnect` hooks.

use std::{sync::atomic::Ordering, time::Duration};

use super::manager::{ConnectionManager, Ended};

impl ConnectionManager {
    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Graceful shutdown: new connects fail from now on; every connection gets the close
    /// frame (`code`, `reason`, e.g. 1001 "server shutting down") after whatever is already
    /// queued for it; then this waits up to `drain_timeout` for the clients to finish the
    /// closing handshake. Connections still open after that are dropped. `on_disconnect`
    /// hooks have run when this returns.
    pub async fn shutdown(&self, code: u16, reason: &str, drain_timeout: Duration) {
        self.shutdown_over(code, reason, Duration::ZERO, drain_timeout)
            .await;
    }

    /// Stops admitting connections: from now on upgrades are answered with 503 and
    /// `Retry-After`, and registrations close with 1001; the connections already open stay.
    /// [`shutdown`](Self::shutdown) begins with this; call it first to stop taking clients
    /// while a load balancer notices that this node is going.
    pub fn stop_admitting(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    /// Like [`shutdown`](Self::shutdown), but closes the connections evenly over `spread`
    /// (the first at once, the last after `spread`), so that their clients come back to the
    /// other nodes as a ramp rather than all at once; `drain_timeout` counts from the last
    /// close frame.
    pub async fn shutdown_over(
        &self,
        code: u16,
        reason: &str,
        spread: Duration,
        drain_timeout: Duration,
    ) {
        /// How often the spread closes the connections that are due.
        const STEP: Duration = Duration::from_millis(10);
        self.stop_admitting();
        let all = self.snapshot();
        let n = all.len();
        let start = tokio::time::Instant::now();
        let mut closed = 0;
        while closed < n {
            let due = if spread.is_zero() {
                n
            } else {
                let share = start.elapsed().as_secs_f64() / spread.as_secs_f64();
                ((share * n as f64) as usize + 1).min(n)
            };
            for conn in &all[closed..due] {
                conn.out.kill(code, reason.to_owned());
            }
            closed = due;
            if closed < n {
                tokio::time::sleep(STEP).await;
            }
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        loop {
            let removed = self.inner.removed.notified();
            if self.local_connection_count() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, removed).await.is_err() {
                break;
            }
        }
        let left = self.snapshot();
        for conn in left.iter() {
            conn.out.release();
            self.remove(conn, true, Ended::elsewhere(Some((code, reason))));
        }
        self.inner.hook_tasks.close();
        let _ = tokio::time::timeout(drain_timeout, self.inner.hook_tasks.wait()).await;
    }
}
