//! [`RedisHistory`]: rooms' history in Redis, published through the [`RedisBackplane`]'s
//! channels in the same atomic step (DESIGN §7).
//!
//! Each stream has two keys: `{prefix}:history:{stream}` (a Redis stream whose entry ids are
//! the offsets, `N-0`) and `{prefix}:history-meta:{stream}` (a hash: `e` the epoch, `s` the
//! top offset). Publishing is one Lua script, one round trip: create the epoch if the meta
//! is gone (and drop a stale stream), `HINCRBY` the offset, `XADD` the positioned envelope
//! with its expiry, trim by size and by age, refresh the TTLs, and `PUBLISH` the same bytes
//! on the room's channel. Redis runs scripts one at a time, so two nodes publishing to one
//! room at once never share or skip an offset, and every subscriber receives the room's
//! publications in offset order. A `FLUSHALL`, or a Redis restarted without persistence,
//! loses the meta: the next publication starts a new epoch.
//!
//! [`RedisBackplane`]: super::RedisBackplane

use std::{fmt, sync::Arc, time::Duration};

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::{Envelope, Inbox, redis_pubsub::channel};
use crate::websocket::history::{
    HistoryError, HistoryLimits, HistoryRead, HistoryStore, Publication, StoreFuture,
    StreamPosition, new_epoch,
};

/// How long one request to Redis may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stream's meta (its epoch and top offset) outlives its last publication.
const META_TTL_SECS: u64 = 30 * 24 * 3600;

/// Publishes: KEYS stream, meta; ARGV head, tail, size, ttl (ms), new epoch, channel,
/// meta TTL (s). Returns `{offset, epoch}`.
const PUBLISH: &str = r#"
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('hget', meta, 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', meta, 'e', epoch)
  redis.call('del', stream)
end
local offset = redis.call('hincrby', meta, 's', 1)
redis.call('expire', meta, ARGV[7])
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local off = string.format('%d', offset)
local payload = ARGV[1] .. string.char(#off) .. off .. string.char(#epoch) .. epoch .. ARGV[2]
local ttl = tonumber(ARGV[4])
redis.call('xadd', stream, 'MAXLEN', ARGV[3], off .. '-0', 'x', string.format('%d', now + ttl), 'd', payload)
for _ = 1, 100 do
  local first = redis.call('xrange', stream, '-', '+', 'COUNT', 1)[1]
  if not first or tonumber(first[2][2]) > now then break end
  redis.call('xdel', stream, first[1])
end
redis.call('pexpire', stream, ttl)
redis.call('publish', ARGV[6], payload)
return {off, epoch}
"#;

/// Reads: KEYS stream, meta; ARGV after (an offset), limit. Returns `{top, epoch, payload…}`
/// with the unexpired publications after `after`, oldest first; `{'0', ''}` for a stream
/// that does not exist.
const READ: &str = r#"
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('hget', meta, 'e')
if not epoch then return {'0', ''} end
local out = {redis.call('hget', meta, 's') or '0', epoch}
local limit = tonumber(ARGV[2])
if limit > 0 then
  local t = redis.call('time')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local entries = redis.call('xrange', stream, '(' .. ARGV[1] .. '-0', '+', 'COUNT', limit)
  for _, e in ipairs(entries) do
    if tonumber(e[2][2]) > now then out[#out + 1] = e[2][4] end
  end
end
return out
"#;

/// A [`HistoryStore`] in Redis that goes with a [`RedisBackplane`](super::RedisBackplane):
/// what [`Backplane::history_store`](super::Backplane::history_store) gives a manager with
/// rooms that keep history.
#[derive(Clone)]
pub struct RedisHistory {
    inner: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    prefix: String,
    /// The connection and the SHA1s of the two scripts loaded on it; `None` until the first
    /// request, and again after a failure.
    conn: Mutex<Option<Loaded>>,
}

#[derive(Clone)]
struct Loaded {
    conn: MultiplexedConnection,
    publish: String,
    read: String,
}

impl fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHistory")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl fmt::Display) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

impl RedisHistory {
    pub(super) fn new(client: redis::Client, prefix: String) -> Self {
        Self {
            inner: Arc::new(Shared {
                client,
                prefix,
                conn: Mutex::new(None),
            }),
        }
    }

    fn keys(&self, stream: &str) -> (String, String) {
        let prefix = &self.inner.prefix;
        (
            format!("{prefix}:history:{stream}"),
            format!("{prefix}:history-meta:{stream}"),
        )
    }

    /// The connection, made (and the scripts loaded) if there is none.
    async fn connection(&self) -> Result<Loaded, HistoryError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(loaded) = &*slot {
            return Ok(loaded.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let connect = async {
            let mut conn = self
                .inner
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let publish: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(PUBLISH)
                .query_async(&mut conn)
                .await?;
            let read: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(READ)
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(Loaded {
                conn,
                publish,
                read,
            })
        };
        let loaded = tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| unavailable("connecting to Redis timed out"))?
            .map_err(unavailable)?;
        *slot = Some(loaded.clone());
        Ok(loaded)
    }

    /// Runs one script (by its SHA1) within the timeout; a failure drops the connection, so
    /// that the next request makes a new one (and loads the scripts again: a Redis that
    /// restarted has forgotten them).
    async fn run(&self, cmd: redis::Cmd) -> Result<redis::Value, HistoryError> {
        let mut loaded = self.connection().await?;
        let result = tokio::time::timeout(REQUEST_TIMEOUT, cmd.query_async(&mut loaded.conn)).await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                *self.inner.conn.lock().await = None;
                Err(unavailable(e))
            }
            Err(_) => {
                *self.inner.conn.lock().await = None;
                Err(unavailable("Redis did not answer in time"))
            }
        }
    }
}

fn text(value: &redis::Value) -> Result<String, HistoryError> {
    match value {
        redis::Value::BulkString(bytes) => {
            String::from_utf8(bytes.clone()).map_err(|_| HistoryError::Protocol("not UTF-8".into()))
        }
        redis::Value::SimpleString(s) => Ok(s.clone()),
        redis::Value::Int(n) => Ok(n.to_string()),
        other => Err(HistoryError::Protocol(format!("unexpected {other:?}"))),
    }
}

fn offset(value: &redis::Value) -> Result<u64, HistoryError> {
    text(value)?
        .parse()
        .map_err(|_| HistoryError::Protocol("an offset that is not a number".into()))
}

fn items(value: redis::Value) -> Result<Vec<redis::Value>, HistoryError> {
    match value {
        redis::Value::Array(items) => Ok(items),
        other => Err(HistoryError::Protocol(format!("unexpected {other:?}"))),
    }
}

impl HistoryStore for RedisHistory {
    /// Nothing to do: publications reach the nodes through their backplanes' channels.
    fn attach(&self, _inbox: Inbox) {}

    fn publish(
        &self,
        stream: &str,
        envelope: Envelope,
        limits: HistoryLimits,
    ) -> StoreFuture<'_, StreamPosition> {
        let (key, meta) = self.keys(stream);
        let channel = channel(&self.inner.prefix, &envelope.topic);
        let (head, tail) = envelope.positioned_parts();
        Box::pin(async move {
            let sha = self.connection().await?.publish;
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha)
                .arg(2)
                .arg(key)
                .arg(meta)
                .arg(head.as_ref())
                .arg(tail.as_ref())
                .arg(limits.size)
                .arg(limits.ttl.as_millis().max(1) as u64)
                .arg(new_epoch())
                .arg(channel)
                .arg(META_TTL_SECS);
            let answer = items(self.run(cmd).await?)?;
            let [off, epoch] = answer.as_slice() else {
                return Err(HistoryError::Protocol("publish answered badly".into()));
            };
            Ok(StreamPosition {
                offset: offset(off)?,
                epoch: text(epoch)?,
            })
        })
    }

    fn read(&self, stream: &str, after: u64, limit: usize) -> StoreFuture<'_, HistoryRead> {
        let (key, meta) = self.keys(stream);
        Box::pin(async move {
            let sha = self.connection().await?.read;
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha).arg(2).arg(key).arg(meta).arg(after).arg(limit);
            let answer = items(self.run(cmd).await?)?;
            let [top, epoch, payloads @ ..] = answer.as_slice() else {
                return Err(HistoryError::Protocol("read answered badly".into()));
            };
            let top = StreamPosition {
                offset: offset(top)?,
                epoch: text(epoch)?,
            };
            let mut publications = Vec::with_capacity(payloads.len());
            for payload in payloads {
                let redis::Value::BulkString(bytes) = payload else {
                    return Err(HistoryError::Protocol(
                        "a publication that is not bytes".into(),
                    ));
                };
                let envelope = Envelope::from_bytes(bytes)
                    .map_err(|e| HistoryError::Protocol(e.to_string()))?;
                let Some(position) = &envelope.position else {
                    return Err(HistoryError::Protocol(
                        "a publication without position".into(),
                    ));
                };
                publications.push(Publication {
                    offset: position.offset,
                    envelope,
                });
            }
            Ok(HistoryRead { top, publications })
        })
    }
}
