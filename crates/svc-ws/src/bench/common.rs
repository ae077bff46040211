//! Pieces shared by the three workloads: connecting with timeouts, the `/stats` probe, the
//! server's RSS, the open-file limit, latency summaries and connection pacing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Interval, MissedTickBehavior, timeout};
use tokio_tungstenite::WebSocketStream;

use super::raw::RawWs;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client WebSocket over plain TCP.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Options every workload takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CommonArgs {
    /// Server base URL (ws://HOST:PORT); the workloads add `/ws/{id}`, `/echo` and `/stats`.
    #[arg(long, default_value = "ws://127.0.0.1:3000")]
    pub(crate) url: String,
    /// Timeout of one connection attempt (TCP connect + WebSocket handshake), in ms.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connect_timeout_ms: u64,
    /// Timeout of one awaited read or write on an established connection, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) io_timeout_ms: u64,
    /// Handshakes in flight at once (keeps the server's accept backlog from overflowing).
    #[arg(long, default_value_t = 128)]
    pub(crate) connect_concurrency: usize,
    /// Cap on new connections per second (0 = no cap).
    #[arg(long, default_value_t = 0)]
    pub(crate) connect_rate: u64,
    /// Client read buffer per connection, in bytes (tungstenite's default is 128 KiB).
    #[arg(long, default_value_t = 4096)]
    pub(crate) client_read_buffer: usize,
    /// Print one final JSON line with every figure (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
    /// Where the server answers `{"connections": N}` (the gateway's is `/ws/stats`).
    #[arg(long, default_value = "/stats")]
    pub(crate) stats_path: String,
}

/// Where the server is.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    host: String,
    port: u16,
    connect_timeout: Duration,
    /// Timeout of one read or write.
    pub(crate) io_timeout: Duration,
    read_buffer: usize,
    stats_path: String,
}

impl Target {
    pub(crate) fn from_args(args: &CommonArgs) -> anyhow::Result<Self> {
        let rest = args
            .url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("--url must start with ws:// (got {})", args.url))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("--url needs an explicit port (got {})", args.url))?;
        let port = port
            .parse()
            .with_context(|| format!("bad port in --url {}", args.url))?;
        if host.is_empty() {
            bail!("--url has no host: {}", args.url);
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            connect_timeout: Duration::from_millis(args.connect_timeout_ms.max(1)),
            io_timeout: Duration::from_millis(args.io_timeout_ms.max(1)),
            read_buffer: args.client_read_buffer.max(256),
            stats_path: args.stats_path.clone(),
        })
    }

    /// Opens a WebSocket to `path`, bounded by the connect timeout.
    pub(crate) async fn connect(&self, path: &str) -> anyhow::Result<Ws> {
        Ok(self.connect_offering(path, None).await?.0)
    }

    /// [`connect`](Self::connect) with `extensions` as `Sec-WebSocket-Extensions`; also says
    /// whether the server accepted an extension. The
    /// connection cannot read a compressed message (tungstenite has no permessage-deflate):
    /// for connections that only hold (the idle workload), to measure what a negotiated
    /// extension costs the server.
    pub(crate) async fn connect_offering(
        &self,
        path: &str,
        extensions: Option<&str>,
    ) -> anyhow::Result<(Ws, bool)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = format!("ws://{}:{}{path}", self.host, self.port);
        let config = WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(0);
        let attempt = async {
            let mut request = url.as_str().into_client_request()?;
            if let Some(offer) = extensions {
                request
                    .headers_mut()
                    .insert("sec-websocket-extensions", offer.parse()?);
            }
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            let (ws, response) =
                tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
            let accepted = response.headers().contains_key("sec-websocket-extensions");
            anyhow::Ok((ws, accepted))
        };
        timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| {
                anyhow!(
                    "connect to {url} timed out after {:?}",
                    self.connect_timeout
                )
            })?
            .with_context(|| format!("connect to {url}"))
    }

    /// A plain TCP connection to the server, bounded by the connect timeout.
    pub(crate) async fn tcp(&self) -> anyhow::Result<TcpStream> {
        let addr = (self.host.as_str(), self.port);
        timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("TCP connect timed out after {:?}", self.connect_timeout))?
            .with_context(|| format!("TCP connect to {}:{}", self.host, self.port))
    }

    /// The HTTP upgrade request for `path` (a fixed key, as RFC 6455 §1.3's example).
    pub(crate) fn upgrade_request(&self, path: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.host, self.port
        )
    }

    /// Opens a [`RawWs`] (a subscriber's lean reader) to `path`, bounded by the connect timeout.
    pub(crate) async fn connect_raw(&self, path: &str) -> anyhow::Result<RawWs> {
        self.connect_raw_offering(path, false).await
    }

    /// [`connect_raw`](Self::connect_raw), offering permessage-deflate when `deflate`.
    pub(crate) async fn connect_raw_offering(
        &self,
        path: &str,
        deflate: bool,
    ) -> anyhow::Result<RawWs> {
        let offer = deflate.then_some(svc_infra::websocket::protocol::deflate::CLIENT_OFFER);
        Ok(RawWs::connect_timed(
            &self.host,
            self.port,
            path,
            self.read_buffer,
            self.connect_timeout,
            offer,
        )
        .await?
        .0)
    }

    /// [`connect_raw`](Self::connect_raw), also returning how long the TCP connect took.
    pub(crate) async fn connect_raw_timed(&self, path: &str) -> anyhow::Result<(RawWs, Duration)> {
        RawWs::connect_timed(
            &self.host,
            self.port,
            path,
            self.read_buffer,
            self.connect_timeout,
            None,
        )
        .await
    }

    /// `GET /stats` (or `--stats-path`) → the `connections` figure.
    pub(crate) async fn stats(&self) -> anyhow::Result<u64> {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n\r\n",
            self.stats_path, self.host, self.port
        );
        let exchange = async {
            let mut tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.write_all(request.as_bytes()).await?;
            let mut response = Vec::with_capacity(512);
            // Read until the JSON object is complete or the server closes.
            let mut chunk = [0_u8; 1024];
            loop {
                let n = tcp.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                response.extend_from_slice(&chunk[..n]);
                if body_object(&response).is_some() || response.len() > 64 * 1024 {
                    break;
                }
            }
            anyhow::Ok(response)
        };
        let response = timeout(self.io_timeout, exchange)
            .await
            .map_err(|_| anyhow!("GET {} timed out", self.stats_path))?
            .with_context(|| {
                format!("GET http://{}:{}{}", self.host, self.port, self.stats_path)
            })?;
        let status_ok =
            response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200");
        let body = body_object(&response).ok_or_else(|| {
            anyhow!(
                "GET {}: no JSON body in {:?}",
                self.stats_path,
                String::from_utf8_lossy(&response)
            )
        })?;
        if !status_ok {
            bail!(
                "GET {}: {}",
                self.stats_path,
                String::from_utf8_lossy(&response)
            );
        }
        let value: serde_json::Value = serde_json::from_slice(body).context("the stats body")?;
        value
            .get("connections")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| anyhow!("GET /stats: no numeric \"connections\" in {value}"))
    }

    /// Polls `/stats` until it reports at least `want` connections, or `within` passes.
    pub(crate) async fn wait_for_connections(
        &self,
        want: u64,
        within: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.stats().await?;
            if seen >= want {
                return Ok(seen);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("/stats shows {seen} connections, expected {want}, after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `{...}` after the HTTP header block, once it is complete.
fn body_object(response: &[u8]) -> Option<&[u8]> {
    let header_end = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let body = &response[header_end..];
    let start = body.iter().position(|&b| b == b'{')?;
    let end = body.iter().rposition(|&b| b == b'}')?;
    (end >= start).then(|| &body[start..=end])
}

/// Gate for opening many connections: at most `concurrency` handshakes in flight and, if set,
/// at most `rate` starts per second.
#[derive(Debug)]
pub(crate) struct ConnectGate {
    permits: Arc<Semaphore>,
    pace: Option<Interval>,
}

impl ConnectGate {
    pub(crate) fn new(args: &CommonArgs) -> Self {
        let pace = (args.connect_rate > 0).then(|| {
            let mut every =
                tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.connect_rate));
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            every
        });
        Self {
            permits: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
            pace,
        }
    }

    /// Waits for the next start slot; drop the permit once the handshake is done.
    pub(crate) async fn admit(&mut self) -> anyhow::Result<OwnedSemaphorePermit> {
        if let Some(pace) = &mut self.pace {
            pace.tick().await;
        }
        Ok(Arc::clone(&self.permits).acquire_owned().await?)
    }
}

/// Nanoseconds since the Unix epoch (the shared clock of publisher and subscribers).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A latency histogram in nanoseconds (1 ns ..= 1 h, 3 significant figures).
pub(crate) fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?)
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |ns: u64| round3(ns as f64 / 1e6);
        Self {
            count: h.len(),
            mean_ms: round3(h.mean() / 1e6),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (mean {:.3} ms, n={})",
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.mean_ms,
            self.count
        )
    }
}

/// Rounds to 3 decimals (keeps the JSON line readable).
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// VmRSS of a process, in KiB, from `/proc/PID/status`.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS line in {path}"))
}

/// CPU time a process used over a window, from `/proc/PID/stat` (utime + stime).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMeter {
    pid: Option<u32>,
    ticks: Option<u64>,
    started: Instant,
}

/// Clock ticks per second of `/proc/*/stat` (`CLK_TCK`, 100 on Linux x86-64 and arm64).
const CLK_TCK: f64 = 100.0;

impl CpuMeter {
    /// Starts measuring `pid` (this process when `None`).
    pub(crate) fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            ticks: cpu_ticks(pid),
            started: Instant::now(),
        }
    }

    /// Busy share of one core since `start`, in percent (None if unreadable).
    pub(crate) fn busy_percent(&self) -> Option<f64> {
        let used = cpu_ticks(self.pid)?.checked_sub(self.ticks?)?;
        let wall = self.started.elapsed().as_secs_f64();
        (wall > 0.0).then(|| (used as f64 / CLK_TCK / wall * 1000.0).round() / 10.0)
    }
}

/// "client 93.0% server 100.0%" (of one core each).
pub(crate) fn cpu_line(client: Option<f64>, server: Option<f64>) -> String {
    let show = |x: Option<f64>| x.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.1}%"));
    format!(
        "client {} server {} (of one core)",
        show(client),
        show(server)
    )
}

fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |pid| format!("/proc/{pid}/stat"),
    );
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Raises RLIMIT_NOFILE so that `want` sockets fit and grows the descriptor table to hold
/// them; returns the soft limit now in force.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    let soft = raise_nofile_limit(want);
    #[cfg(target_os = "linux")]
    grow_descriptor_table(want.min(soft));
    soft
}

/// Grows this process's descriptor table to hold `entries` now. Linux grows it by doubling
/// when a new descriptor does not fit, and in a multi-threaded process each growth blocks
/// the thread opening the descriptor for an RCU grace period (12 to 41 ms measured): six
/// stalls of every connect in flight on the way to 10,000 connections, counted in every
/// handshake time. A duplicate of `/dev/null` at `entries - 1` sizes the table once; it is
/// closed at once and the table stays.
#[cfg(target_os = "linux")]
fn grow_descriptor_table(entries: u64) {
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return;
    };
    let highest = i32::try_from(entries.saturating_sub(1)).unwrap_or(i32::MAX);
    let _ = rustix::io::fcntl_dupfd_cloexec(&null, highest);
}

fn raise_nofile_limit(want: u64) -> u64 {
    use rlimit::Resource;
    if let Ok((soft, hard)) = Resource::NOFILE.get() {
        if hard < want {
            // Only root may raise the hard limit; ignore the refusal and use what we have.
            let _ = Resource::NOFILE.set(want, want);
        } else if soft < want {
            let _ = Resource::NOFILE.set(want, hard);
        }
    }
    match Resource::NOFILE.get() {
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// `n` bytes of padding.
pub(crate) fn pad(n: usize) -> String {
    "x".repeat(n)
}

/// About `n` bytes of realistic JSON: chat messages shaped like a chat API's message objects
/// (ids, channel, author, content of common words, an ISO timestamp, mentions, reactions),
/// varied by `seed` so that no two broadcasts are alike. Random ids and numbers keep it from
/// deflating better than real traffic; [`pad`]'s repeated byte would deflate to nothing.
pub(crate) fn realistic_json(n: usize, seed: u64) -> String {
    const WORDS: [&str; 32] = [
        "the", "room", "message", "hello", "order", "shipped", "price", "update", "team",
        "meeting", "today", "tomorrow", "please", "review", "merged", "deploy", "green", "failed",
        "retry", "latency", "users", "online", "thanks", "done", "is", "to", "and", "we", "can",
        "on", "for", "this",
    ];
    const NAMES: [&str; 8] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    const EMOJI: [&str; 4] = ["thumbsup", "tada", "eyes", "rocket"];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut out = String::with_capacity(n + 400);
    out.push('[');
    while out.len() < n {
        let mut content = String::new();
        for _ in 0..(4 + next(10)) {
            content.push_str(WORDS[next(WORDS.len() as u64) as usize]);
            content.push(' ');
        }
        let name = NAMES[next(NAMES.len() as u64) as usize];
        out.push_str(&format!(
            concat!(
                r#"{{"id":"{}","channel_id":"{}","author":{{"id":"{}","username":"{}","#,
                r#""display_name":"{}","bot":false}},"content":"{}","#,
                r#""timestamp":"2026-11-30T{:02}:{:02}:{:02}.{:03}Z","edited":null,"#,
                r#""mentions":[],"reactions":[{{"emoji":"{}","count":{}}}]}},"#
            ),
            1_180_000_000_000_000_000 + next(1_000_000_000_000),
            1_180_000_000_000_000_000 + next(100),
            1_170_000_000_000_000_000 + next(1_000_000),
            name,
            name,
            content.trim_end(),
            next(24),
            next(60),
            next(60),
            next(1000),
            EMOJI[next(EMOJI.len() as u64) as usize],
            1 + next(20),
        ));
    }
    out.pop();
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_object_waits_for_complete_json() {
        assert_eq!(
            body_object(b"HTTP/1.1 200 OK\r\n\r\n{\"connections\""),
            None
        );
        assert_eq!(
            body_object(b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n{\"connections\":3}"),
            Some(&b"{\"connections\":3}"[..])
        );
    }

    #[test]
    fn target_parses_ws_urls() {
        let args = CommonArgs {
            url: "ws://127.0.0.1:4567/".to_owned(),
            connect_timeout_ms: 1,
            io_timeout_ms: 1,
            connect_concurrency: 1,
            connect_rate: 0,
            client_read_buffer: 4096,
            json: false,
            stats_path: "/stats".to_owned(),
        };
        let target = Target::from_args(&args).expect("valid url");
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 4567));
        let bad = CommonArgs {
            url: "http://127.0.0.1:1".to_owned(),
            ..args
        };
        assert!(Target::from_args(&bad).is_err());
    }
}
