//! Flusher tasks: they exist only while some connection has more to send than its socket
//! took at once, so neither the handler nor a task per connection watches for writability.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
};

use super::outbound::Outbound;

/// Connections holding frames their socket did not take at once (most often because the
/// sending task's cooperative budget ran out after 128 writes, not because the socket is
/// full). Dropping it starts one task that writes them all, in order; a
/// [`FlushQueue`] takes them instead when many senders should share one such task.
#[derive(Debug, Default)]
pub(crate) struct Deferred(Vec<Arc<Outbound>>);

impl Deferred {
    /// Adds a connection whose queue holds what its socket did not take.
    pub(super) fn push(&mut self, out: Arc<Outbound>) {
        self.0.push(out);
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let outs = std::mem::take(&mut self.0);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(flush(outs))),
            Err(_) => fail(&outs),
        }
    }
}

/// Without a runtime to wait for writability, connections with queued frames fail.
fn fail(outs: &[Arc<Outbound>]) {
    for out in outs {
        let mut st = out.lock();
        st.broken = true;
        st.finish_flush(true);
    }
}

/// One first-in, first-out line of connections waiting to be flushed, worked by at most
/// one task at a time (started when the line fills, ended when it empties).
///
/// The manager's broadcasts share one, so that when broadcasts come faster than the
/// sockets can be written, the oldest frames go out first (several tasks taking turns
/// would delay every broadcast's last recipients behind the newer broadcasts), and a
/// connection still waiting when the next broadcast arrives gets both in one write. The
/// task yields whenever its budget is spent, so new broadcasts are read meanwhile.
#[derive(Debug, Default)]
pub(crate) struct FlushQueue {
    line: Mutex<Line>,
    /// Connections in the line or in the batch being worked (the gauge
    /// `svc_ws_flush_queue_connections`).
    pending: AtomicUsize,
}

#[derive(Debug, Default)]
struct Line {
    waiting: VecDeque<Arc<Outbound>>,
    /// A task is working the line.
    running: bool,
}

impl FlushQueue {
    /// Connections waiting to be flushed.
    pub(crate) fn len(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Puts `deferred`'s connections at the end of the line.
    pub(crate) fn extend(self: &Arc<Self>, mut deferred: Deferred) {
        if deferred.0.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return fail(&std::mem::take(&mut deferred.0));
        };
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.fetch_add(deferred.0.len(), Ordering::Relaxed);
        line.waiting.extend(deferred.0.drain(..));
        if !line.running {
            line.running = true;
            drop(runtime.spawn(self.clone().work()));
        }
    }

    async fn work(self: Arc<Self>) {
        /// Marks the line idle when the task ends, however it ends (a runtime shutting
        /// down drops it mid-way), so the next `extend` starts a new one.
        struct Idle<'a>(&'a FlushQueue);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                let mut line = self.0.line.lock().unwrap_or_else(|p| p.into_inner());
                line.running = false;
            }
        }
        let _idle = Idle(&self);
        let mut batch = VecDeque::new();
        loop {
            if batch.is_empty() {
                let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
                if line.waiting.is_empty() {
                    return;
                }
                std::mem::swap(&mut batch, &mut line.waiting);
            }
            if let Some(out) = batch.pop_front() {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                flush_one(out, true).await;
            }
        }
    }
}

/// Writes what is queued on each connection, in order, then ends. The task lives only
/// while some connection has more to send than its socket took at once, so neither the
/// handler nor a task per connection has to watch for writability.
async fn flush(outs: Vec<Arc<Outbound>>) {
    let last = outs.len().saturating_sub(1);
    for (i, out) in outs.into_iter().enumerate() {
        flush_one(out, i < last).await;
    }
}

/// Writes `out`'s queue. When this task's budget runs out it yields and carries on; a
/// socket that is really full is waited for here, or, with `hand_over`, by a task of its
/// own so that it holds up no one behind it.
async fn flush_one(out: Arc<Outbound>, hand_over: bool) {
    let mut handed_over = false;
    std::future::poll_fn(|cx| {
        let mut st = out.lock();
        match st.poll_drain(cx) {
            Poll::Ready(result) => {
                st.finish_flush(result.is_err());
                Poll::Ready(())
            }
            Poll::Pending if hand_over && tokio::task::coop::has_budget_remaining() => {
                handed_over = true;
                Poll::Ready(())
            }
            Poll::Pending => {
                st.flusher = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
    if handed_over {
        drop(Deferred(vec![out]));
    }
}
