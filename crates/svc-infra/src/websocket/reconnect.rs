//! [`websocket_connect`]: a stream of connected clients that reconnects after every drop.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::{Stream, stream};

use super::{
    Result, WebSocketClient, WebSocketConfig, WebSocketError,
    client::{ClientBuilder, ClientWatch, CloseOrigin, Target},
};

/// Connects to a URL and keeps reconnecting: a [`Stream`] of connected
/// [`WebSocketClient`]s, one per connection.
///
/// `target` is a URL (`&str`/`String`) or a [`ClientBuilder`] with headers, subprotocols and
/// TLS roots. Without a config set on the builder, the configuration comes from the `WS_*`
/// environment variables ([`WebSocketConfig::from_env`]), as in svc-infra.
///
/// ```no_run
/// use futures_util::StreamExt;
/// use svc_infra::websocket::websocket_connect;
///
/// # async fn demo() {
/// let mut connections = websocket_connect("wss://stream.example.com/events");
/// while let Some(client) = connections.next().await {
///     let mut ws = match client {
///         Ok(ws) => ws,
///         Err(e) => { eprintln!("giving up: {e}"); break; }
///     };
///     while let Some(message) = ws.next().await {
///         match message {
///             Ok(m) => println!("{m}"),
///             Err(e) => eprintln!("connection lost: {e}"), // the next round reconnects
///         }
///     }
/// }
/// # }
/// ```
///
/// # The policy (DESIGN §2, `WS_RECONNECT_*`)
/// - **When a connection ends**, the next call to `next()` first waits until the previous
///   client's connection is fully closed (the client may still be held or already dropped),
///   then decides:
///   - a close the caller asked for ([`WebSocketClient::close`]) ends the stream (`None`);
///   - a close the peer sent with a code that is not worth retrying (1000, 1005, 1002, 4xxx,
///     …) or a failure we detected that is not (1009 message too big, 1007 invalid UTF-8)
///     ends the stream;
///   - an abnormal end (1006 dropped, 1011 keepalive timeout or server error, 1001, 1012,
///     1013, 1014) and a client dropped while still open are retried.
/// - **Retrying**: attempt *n* (0-based, counted from the last good connection) waits
///   `min(base * 2^n, max)` times a random factor in `[1 - jitter, 1 + jitter]`
///   ([`WebSocketConfig::jittered_backoff_delay`]); after a 1012 "service restart" (a
///   server closing its clients on purpose while it restarts) the first retry waits a
///   random time between 0 and the base instead. The first connection is tried at once;
///   after a drop the first retry already waits `base`, so a server that accepts and drops
///   at once is not hammered. A refusal with `Retry-After` (a server at its connection
///   limit: 503 or 429) makes the next attempt wait at least that long. Each retry is
///   logged (`tracing::warn!`) with its delay and cause.
/// - **Connect errors** that are retried: network errors (to the server or to a proxy),
///   timeouts, HTTP 5xx (and 408/429) from the server or from a proxy refusing the tunnel.
///   Never retried: 401/403 ([`Authentication`](WebSocketError::Authentication)), other 4xx
///   (a proxy's 407 and 403 too), an invalid URL, header or proxy URL (`socks5://`), a TLS
///   certificate or protocol failure, a WebSocket protocol violation, a bad config. Those
///   are yielded as the final `Err` item.
/// - **Limits**: after `reconnect_max_attempts` consecutive failed attempts (0 = never give
///   up) the last error is yielded and the stream ends. With `reconnect_enabled = false` the
///   stream tries once, yields the client (or the error), and ends when that connection
///   does.
/// - Everything is reset after a successful connection.
pub fn websocket_connect(target: impl Into<ClientBuilder>) -> Reconnect {
    let state = Reconnector {
        builder: target.into(),
        target: None,
        previous: None,
        done: false,
    };
    let inner = stream::unfold(state, |mut state| async move {
        let item = state.next_client().await?;
        Some((item, state))
    });
    Reconnect {
        inner: Box::pin(inner),
        ended: false,
    }
}

/// The stream returned by [`websocket_connect`]: yields `Ok(client)` per connection and, when
/// it gives up, one `Err` with the last error, then ends (and keeps returning `None`).
#[must_use = "streams do nothing unless polled"]
pub struct Reconnect {
    inner: Pin<Box<dyn Stream<Item = Result<WebSocketClient>> + Send>>,
    /// Keeps returning `None` once ended (the stream is fused).
    ended: bool,
}

impl fmt::Debug for Reconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnect").finish_non_exhaustive()
    }
}

impl Stream for Reconnect {
    type Item = Result<WebSocketClient>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = item {
            self.ended = true;
        }
        item
    }
}

struct Reconnector {
    builder: ClientBuilder,
    /// Checked once, at the first poll.
    target: Option<Arc<Target>>,
    previous: Option<ClientWatch>,
    done: bool,
}

impl Reconnector {
    /// The builder's target, with the config from `WS_*` if the builder has none.
    fn prepare(&self) -> Result<Arc<Target>> {
        let builder = if self.builder.config_is_set() {
            self.builder.clone()
        } else {
            self.builder.clone().config(WebSocketConfig::from_env()?)
        };
        Ok(Arc::new(builder.target()?))
    }

    async fn next_client(&mut self) -> Option<Result<WebSocketClient>> {
        if self.done {
            return None;
        }
        let target = match &self.target {
            Some(t) => Arc::clone(t),
            None => match self.prepare() {
                Ok(t) => {
                    self.target = Some(Arc::clone(&t));
                    t
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            },
        };
        let config = &target.config;

        // Why we are about to retry, if we are: logged with the delay.
        let mut cause = None;
        if let Some(previous) = self.previous.take() {
            cause = why_reconnect(previous, &target).await;
            if cause.is_none() {
                self.done = true;
                return None;
            }
        }

        let max = config.reconnect_max_attempts;
        let mut retry: u32 = 0;
        let mut failures: u32 = 0;
        // The server's `Retry-After` on the last refusal: the next attempt waits at least that.
        let mut asked = None;
        loop {
            if let Some((cause, restart)) = cause.take() {
                let delay = if restart && retry == 0 {
                    config.reconnect_backoff_base.mul_f64(rand::random::<f64>())
                } else {
                    config.jittered_backoff_delay(retry)
                }
                .max(asked.take().unwrap_or_default());
                retry = retry.saturating_add(1);
                tracing::warn!(
                    url = %super::redact_url(&target.url),
                    attempt = failures + 1,
                    max_attempts = max,
                    ?delay,
                    %cause,
                    "websocket reconnecting in {delay:?}"
                );
                tokio::time::sleep(delay).await;
            }
            match WebSocketClient::open(&target).await {
                Ok(client) => {
                    self.previous = Some(client.watch());
                    return Some(Ok(client));
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let exhausted = max > 0 && failures >= max;
                    if !config.reconnect_enabled || exhausted || !e.is_retryable() {
                        tracing::warn!(
                            url = %super::redact_url(&target.url),
                            attempts = failures,
                            error = %e,
                            "websocket connect failed; giving up"
                        );
                        self.done = true;
                        return Some(Err(e));
                    }
                    asked = e.retry_after();
                    cause = Some((e.to_string(), false));
                }
            }
        }
    }
}

/// Waits for the previous client to end, then says why to connect again; `None` when not
/// to (reconnect off, a close the caller asked for, a close that is final).
/// Why to reconnect, if at all, and whether the server said it restarts (1012 "service
/// restart": it closes its clients over a window on purpose, and any other node takes them, so
/// the first retry goes at once, after a random pause of up to the backoff base).
async fn why_reconnect(previous: ClientWatch, target: &Target) -> Option<(String, bool)> {
    previous.closed().await;
    if !target.config.reconnect_enabled {
        return None;
    }
    match previous.close_record() {
        Some(r) if r.origin == CloseOrigin::User => None,
        Some(r) if r.origin == CloseOrigin::Dropped => Some((
            "the previous client was dropped while connected".to_owned(),
            false,
        )),
        Some(r) => {
            let ended = WebSocketError::closed(r.code, r.reason);
            if !ended.is_retryable() {
                tracing::info!(
                    url = %super::redact_url(&target.url),
                    cause = %ended,
                    "websocket closed; not reconnecting"
                );
                return None;
            }
            Some((ended.to_string(), r.code == 1012))
        }
        None => Some(("the connection ended".to_owned(), false)),
    }
}
