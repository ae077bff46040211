//! [`WebSocketConfig`]: timeouts, keepalive, limits and the reconnect policy.

use std::{fmt, time::Duration};

use super::backoff::Backoff;

/// Settings shared by the client and the server side.
///
/// Build one with [`WebSocketConfig::default`] (the documented defaults), with
/// [`WebSocketConfig::from_env`] (`WS_*` variables over the defaults) or with
/// [`get_default_config`], then adjust it with the `with_*` setters:
///
/// ```
/// use std::time::Duration;
/// use svc_infra::websocket::WebSocketConfig;
///
/// let config = WebSocketConfig::default()
///     .with_open_timeout(Duration::from_secs(30))
///     .with_ping_interval(Some(Duration::from_secs(10)))
///     .with_max_message_size(16 * 1024 * 1024) // 16 MiB for audio
///     .with_reconnect_max_attempts(10);
/// config.validate().unwrap();
/// ```
///
/// # Environment variables
///
/// [`WebSocketConfig::from_env`] reads these variables (names are matched
/// case-insensitively, values are trimmed; unknown `WS_*` variables are ignored):
///
/// | Variable | Default | Meaning | Accepted values |
/// |---|---|---|---|
/// | `WS_OPEN_TIMEOUT` | `10.0` | Connect + handshake timeout (seconds) | finite number > 0 |
/// | `WS_CLOSE_TIMEOUT` | `10.0` | Close handshake timeout (seconds) | finite number > 0 |
/// | `WS_PING_INTERVAL` | `20.0` | Keepalive ping interval (seconds) | finite number > 0; `none`, `null`, empty or `0` disable keepalive |
/// | `WS_PING_TIMEOUT` | `20.0` | Pong deadline after a ping (seconds) | finite number > 0; `none`, `null`, empty or `0` disable the deadline |
/// | `WS_MAX_MESSAGE_SIZE` | `1048576` | Largest message in either direction (bytes) | integer > 0 (`_` separators allowed) |
/// | `WS_MAX_QUEUE_SIZE` | `16` | Messages buffered per connection | integer > 0 |
/// | `WS_RECONNECT_ENABLED` | `true` | Reconnect after a drop ([`websocket_connect`](crate::websocket::websocket_connect)) | `true/false/1/0/yes/no/on/off/t/f/y/n` |
/// | `WS_RECONNECT_MAX_ATTEMPTS` | `5` | Failed attempts before giving up | integer ≥ 0; `0` = forever |
/// | `WS_RECONNECT_BACKOFF_BASE` | `1.0` | First retry delay (seconds) | finite number ≥ 0 |
/// | `WS_RECONNECT_BACKOFF_MAX` | `60.0` | Largest retry delay (seconds) | finite number ≥ base |
/// | `WS_RECONNECT_JITTER` | `0.1` | Random factor applied to each delay | number in `0..=1` |
/// | `WS_HANDSHAKE_TIMEOUT` | `10.0` | Server: time a connection has to send its upgrade request ([`serve`](crate::websocket::serve)) | finite number > 0 |
/// | `WS_MAX_CONNECTIONS` | `0` | Server: connections this node accepts (more get HTTP 503) | integer ≥ 0; `0` = no limit |
/// | `WS_MAX_CONNECTIONS_PER_USER` | `100` | Server: connections one user may hold on this node (more get HTTP 429) | integer ≥ 0; `0` = no limit |
/// | `WS_MAX_INCOMING_RATE` | `10000` | Server: frames per second one connection may send; beyond it the server reads more slowly (never closes, never drops) | integer ≥ 0; `0` = no limit |
/// | `WS_MAX_INCOMING_BURST` | `10000` | Server: frames a connection may send at once above that rate | integer > 0 |
/// | `WS_COMPRESSION` | `shared` | permessage-deflate (RFC 7692). `shared`: a server negotiates it when offered (no context takeover either way, one compressor per thread, a broadcast deflated once); a client offers it (`permessage-deflate; client_max_window_bits`) and uses what the server answers. `dedicated`: a server keeps context takeover, each connection compressing with its own window (better ratio on long one-to-one streams, at up to a few hundred KiB per connection that sends or receives compressed messages); a client behaves as with `shared`. `off`: a server never negotiates it, a client never offers it | `off`, `shared`, `dedicated` |
/// | `WS_COMPRESSION_MIN_SIZE` | `128` | Messages shorter than this many bytes are sent uncompressed | integer ≥ 0 |
/// | `WS_COMPRESSION_WINDOW_BITS` | `15` | Server: the largest window a client may compress with (offers that cannot be limited to it are declined) and the window of a `dedicated` connection's own compressor | integer `8..=15` |
/// | `WS_HISTORY_SIZE` | `0` | Server: publications each room keeps for recovery after a reconnect ([`HistoryConfig`](crate::websocket::HistoryConfig)); `0` keeps none | integer ≥ 0 |
/// | `WS_HISTORY_TTL` | `300` | Server: how long a kept publication stays (seconds) | finite number > 0 |
/// | `WS_HISTORY_RECOVERY_MAX` | `300` | Server: publications one recovery replays at most (further behind: `recovered: false`) | integer > 0 |
/// | `WS_ALLOWED_ORIGINS` | `*` | Browser origins the server accepts upgrades from (others get 403) | comma-separated exact origins (`https://app.example.com`), or `*` for any |
///
/// A value outside what the table allows is a [`ConfigError`] that names the variable, the
/// value and what is allowed; nothing is silently clamped.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// Time allowed for TCP connect, TLS and the opening handshake. Default 10 s.
    pub open_timeout: Duration,
    /// Time allowed for the closing handshake before the socket is dropped. Default 10 s.
    pub close_timeout: Duration,
    /// Interval between keepalive pings; `None` disables keepalive. Default 20 s.
    pub ping_interval: Option<Duration>,
    /// How long to wait for the pong before the connection is failed with 1011;
    /// `None` waits forever. Default 20 s.
    pub ping_timeout: Option<Duration>,
    /// Largest message accepted or sent, in bytes. Incoming messages over it close the
    /// connection with 1009; outgoing ones are refused before anything is sent. Default 1 MiB.
    pub max_message_size: usize,
    /// Messages buffered per connection (incoming on the client, outgoing on the server).
    /// Default 16.
    pub max_queue_size: usize,
    /// Whether `websocket_connect` reconnects after a drop. Default `true`.
    pub reconnect_enabled: bool,
    /// Consecutive failed attempts before `websocket_connect` gives up; 0 = never. Default 5.
    pub reconnect_max_attempts: u32,
    /// Delay before the first retry; attempt n waits `min(base * 2^n, max)`. Default 1 s.
    pub reconnect_backoff_base: Duration,
    /// Upper bound of the retry delay (before jitter). Default 60 s.
    pub reconnect_backoff_max: Duration,
    /// Each delay is multiplied by a random factor in `[1 - jitter, 1 + jitter]`. Default 0.1.
    pub reconnect_jitter: f64,
    /// Server side: the `Origin` values an upgrade may carry (exact, compared without
    /// regard to ASCII case); an upgrade from another origin gets HTTP 403 before it
    /// happens. `None` (the default, `WS_ALLOWED_ORIGINS=*`) accepts any. A request without
    /// an `Origin` header (not a browser) is always accepted: the check protects browsers'
    /// users from other sites, which is what an origin can tell.
    pub allowed_origins: Option<Vec<String>>,
    /// Server side: how long a new TCP connection has to complete its HTTP upgrade request
    /// before [`serve`](crate::websocket::serve) closes it (slowloris). Default 10 s.
    pub handshake_timeout: Duration,
    /// Server side: the most connections this node's manager holds; an upgrade beyond it is
    /// answered with HTTP 503 and `Retry-After`. 0 (the default) sets no limit: size it to
    /// what one node holds (`docs/scaling.md`).
    pub max_connections: usize,
    /// Server side: the most connections one user holds on this node; an upgrade beyond it
    /// is answered with HTTP 429 and `Retry-After`. 0 sets no limit. Default 100.
    pub max_connections_per_user: usize,
    /// Server side: frames per second one connection may send (its read budget). A
    /// connection over it is neither closed nor loses anything: the server stops reading
    /// its socket until the budget allows the next frame, so TCP slows the sender down and
    /// a flooding client costs the server no more than this rate. 0 sets no limit.
    /// Default 10,000.
    pub max_incoming_rate: u32,
    /// Server side: how many frames a connection may send at once above
    /// [`max_incoming_rate`](Self::max_incoming_rate). Default 10,000.
    pub max_incoming_burst: u32,
    /// permessage-deflate: whether a server negotiates it and a client offers it. Default
    /// [`Compression::Shared`].
    pub compression: Compression,
    /// Messages shorter than this (bytes) are sent uncompressed, by a server and a client
    /// alike: deflate would not shrink them enough to pay for itself. Default 128.
    pub compression_min_size: usize,
    /// Server side: the largest LZ77 window (bits, 8 to 15) a client may compress with:
    /// an offer that cannot be limited to it is declined (the connection goes on
    /// uncompressed). Also the window of a connection's own compressor in
    /// [`Compression::Dedicated`], whose memory it bounds. Default 15 (32 KiB).
    pub compression_window_bits: u8,
    /// Server side: publications each room keeps for recovery (0: none, the default); the
    /// manager's [`HistoryConfig`](crate::websocket::HistoryConfig) starts from it.
    pub history_size: usize,
    /// Server side: how long a kept publication stays. Default 300 s.
    pub history_ttl: Duration,
    /// Server side: publications one recovery replays at most. Default 300.
    pub history_recovery_max: usize,
}

/// Whether and how connections compress messages (permessage-deflate, RFC 7692).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Never negotiated: a client offers nothing, a server accepts no offer, every message
    /// goes plain.
    Off,
    /// Negotiated when the peer offers it (every browser does). A server answers with
    /// `server_no_context_takeover` and `client_no_context_takeover`: no connection keeps
    /// codec state between messages, one compressor and one decompressor per thread serve
    /// them all, idle connections cost nothing more, and a broadcast is deflated once and
    /// the same bytes go to every recipient.
    ///
    /// A client offers `permessage-deflate; client_max_window_bits` (as browsers and
    /// Python's `websockets` do) and takes what the server answers: with our server (or
    /// any that answers the `no_context_takeover` parameters) it also uses the per-thread
    /// compressor and decompressor and holds no codec state; with a server that keeps
    /// context takeover, the connection gets its own decompressor and compressor (windows
    /// as the server named them), allocated on the first compressed message.
    #[default]
    Shared,
    /// A server keeps context takeover when the client allows it: each connection gets its
    /// own compressor (window [`compression_window_bits`](WebSocketConfig::compression_window_bits))
    /// and decompressor, allocated on the first compressed message it sends or receives and
    /// kept while it lives. Long one-to-one streams of similar messages compress better,
    /// at the price of memory per connection (measured in `docs/compression.md`) and of a
    /// deflate per recipient: a broadcast goes to such connections plain and each deflates
    /// it as it is written. A client behaves as with [`Shared`](Self::Shared).
    Dedicated,
}

/// The name `WS_COMPRESSION` takes: `off`, `shared` or `dedicated`.
impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Shared => "shared",
            Self::Dedicated => "dedicated",
        })
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            open_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Some(Duration::from_secs(20)),
            max_message_size: 1024 * 1024,
            max_queue_size: 16,
            reconnect_enabled: true,
            reconnect_max_attempts: 5,
            reconnect_backoff_base: Duration::from_secs(1),
            reconnect_backoff_max: Duration::from_secs(60),
            reconnect_jitter: 0.1,
            allowed_origins: None,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 0,
            max_connections_per_user: 100,
            max_incoming_rate: 10_000,
            max_incoming_burst: 10_000,
            compression: Compression::Shared,
            compression_min_size: 128,
            compression_window_bits: 15,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            history_recovery_max: 300,
        }
    }
}

/// The configuration from the environment (`WS_*`) over the defaults.
///
/// Same as [`WebSocketConfig::from_env`]; named after the Python function.
pub fn get_default_config() -> Result<WebSocketConfig, ConfigError> {
    WebSocketConfig::from_env()
}

/// A configuration value that is not allowed: the one "bad setting" error of the crate, used by
/// [`WebSocketConfig`] and, wrapped in `AuthConfigError::Invalid`, by the auth configuration.
///
/// Displays as ``invalid WS_PING_TIMEOUT="-1": expected a finite number > 0 (seconds)``, or
/// without the value (``invalid AUTH_JWT__OLD_SECRETS: expected …``) when it is secret.
/// `variable` is an environment variable only when the value came from the environment
/// (`from_env`, `from_vars`); otherwise it names the field or argument (`reconnect_jitter`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}{}: expected {expected}", value.as_ref().map(|v| format!("={v:?}")).unwrap_or_default())]
#[non_exhaustive]
pub struct ConfigError {
    /// The variable, field or argument that holds the bad value, e.g. `WS_PING_TIMEOUT`.
    pub variable: String,
    /// The value as given; `None` when it is secret (or not text, like a PEM bundle).
    pub value: Option<String>,
    /// What would have been accepted.
    pub expected: String,
}

impl ConfigError {
    /// A bad `value` of `variable`; `expected` says what is accepted.
    pub fn new(variable: &str, value: impl fmt::Display, expected: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            value: Some(value.to_string()),
            expected: expected.into(),
        }
    }

    /// A bad value of `variable` that must not be shown (a secret, key material).
    pub fn hidden(variable: &str, expected: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            value: None,
            expected: expected.into(),
        }
    }
}

const POSITIVE_SECS: &str = "a finite number > 0 (seconds)";
const OPTIONAL_SECS: &str = "a finite number > 0 (seconds), or none/null/empty/0 to disable";

impl WebSocketConfig {
    /// The defaults overridden by any `WS_*` environment variables (see the table on
    /// [`WebSocketConfig`]), validated.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars_os().filter_map(|(k, v)| {
            // Non-UTF-8 names cannot be ours; a non-UTF-8 value of ours is reported below.
            let k = k.into_string().ok()?;
            Some((k, v.to_string_lossy().into_owned()))
        }))
    }

    /// Like [`from_env`](Self::from_env), from the given `(name, value)` pairs instead of the
    /// process environment. Handy for tests and for configuration read from elsewhere.
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut config = Self::default();
        for (name, value) in vars {
            let upper = name.as_ref().to_ascii_uppercase();
            let Some(field) = upper.strip_prefix("WS_") else {
                continue;
            };
            let raw = value.as_ref();
            let var = upper.as_str();
            match field {
                "OPEN_TIMEOUT" => config.open_timeout = parse_secs(var, raw)?,
                "CLOSE_TIMEOUT" => config.close_timeout = parse_secs(var, raw)?,
                "PING_INTERVAL" => config.ping_interval = parse_optional_secs(var, raw)?,
                "PING_TIMEOUT" => config.ping_timeout = parse_optional_secs(var, raw)?,
                "MAX_MESSAGE_SIZE" => config.max_message_size = parse_positive(var, raw)?,
                "MAX_QUEUE_SIZE" => config.max_queue_size = parse_positive(var, raw)?,
                "HANDSHAKE_TIMEOUT" => config.handshake_timeout = parse_secs(var, raw)?,
                "HISTORY_SIZE" => config.history_size = parse_uint(var, raw, "an integer ≥ 0")?,
                "HISTORY_TTL" => config.history_ttl = parse_secs(var, raw)?,
                "HISTORY_RECOVERY_MAX" => {
                    config.history_recovery_max = parse_uint(var, raw, "an integer > 0")?;
                    if config.history_recovery_max == 0 {
                        return Err(ConfigError::new(var, raw, "an integer > 0"));
                    }
                }
                "MAX_CONNECTIONS" => {
                    config.max_connections = parse_uint(var, raw, "an integer ≥ 0 (0 = no limit)")?;
                }
                "MAX_CONNECTIONS_PER_USER" => {
                    config.max_connections_per_user =
                        parse_uint(var, raw, "an integer ≥ 0 (0 = no limit)")?;
                }
                "MAX_INCOMING_RATE" => {
                    config.max_incoming_rate =
                        parse_uint(var, raw, "an integer ≥ 0 (0 = no limit)")?;
                }
                "MAX_INCOMING_BURST" => {
                    config.max_incoming_burst = parse_uint(var, raw, "an integer > 0")?;
                }
                "ALLOWED_ORIGINS" => config.allowed_origins = parse_origins(var, raw)?,
                "COMPRESSION" => {
                    config.compression = match raw.trim().to_ascii_lowercase().as_str() {
                        "off" => Compression::Off,
                        "shared" => Compression::Shared,
                        "dedicated" => Compression::Dedicated,
                        _ => return Err(ConfigError::new(var, raw, "off, shared or dedicated")),
                    };
                }
                "COMPRESSION_MIN_SIZE" => {
                    config.compression_min_size = parse_uint(var, raw, "an integer ≥ 0")?;
                }
                "COMPRESSION_WINDOW_BITS" => {
                    const ALLOWED: &str = "an integer from 8 to 15";
                    let bits: u8 = parse_uint(var, raw, ALLOWED)?;
                    if !(8..=15).contains(&bits) {
                        return Err(ConfigError::new(var, raw, ALLOWED));
                    }
                    config.compression_window_bits = bits;
                }
                "RECONNECT_ENABLED" => config.reconnect_enabled = parse_bool(var, raw)?,
                "RECONNECT_MAX_ATTEMPTS" => {
                    config.reconnect_max_attempts = parse_uint(var, raw, "an integer ≥ 0")?;
                }
                "RECONNECT_BACKOFF_BASE" => {
                    config.reconnect_backoff_base =
                        parse_non_negative_secs(var, raw, "a finite number ≥ 0 (seconds)")?;
                }
                "RECONNECT_BACKOFF_MAX" => {
                    config.reconnect_backoff_max = parse_non_negative_secs(
                        var,
                        raw,
                        "a finite number ≥ WS_RECONNECT_BACKOFF_BASE (seconds)",
                    )?;
                }
                "RECONNECT_JITTER" => {
                    let jitter = raw
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|j| (0.0..=1.0).contains(j));
                    config.reconnect_jitter =
                        jitter.ok_or_else(|| ConfigError::new(var, raw, "a number in 0..=1"))?;
                }
                _ => {} // unknown WS_* variables are ignored, as env config usually is
            }
        }
        config.validate_as_env()?;
        Ok(config)
    }

    /// Checks every invariant; the error names the field that breaks one.
    ///
    /// Durations must be non-zero (the backoff base may be zero), sizes non-zero,
    /// `reconnect_backoff_max ≥ reconnect_backoff_base` and `reconnect_jitter` in `0..=1`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(|field| field.to_owned())
    }

    fn validate_as_env(&self) -> Result<(), ConfigError> {
        self.check(|field| format!("WS_{}", field.to_ascii_uppercase()))
    }

    fn check(&self, name: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        let err = |field: &str, value: &dyn fmt::Debug, expected: &str| {
            Err(ConfigError::new(
                &name(field),
                format!("{value:?}"),
                expected,
            ))
        };
        if self.open_timeout.is_zero() {
            return err("open_timeout", &self.open_timeout, POSITIVE_SECS);
        }
        if self.close_timeout.is_zero() {
            return err("close_timeout", &self.close_timeout, POSITIVE_SECS);
        }
        if self.handshake_timeout.is_zero() {
            return err("handshake_timeout", &self.handshake_timeout, POSITIVE_SECS);
        }
        if self.ping_interval.is_some_and(|d| d.is_zero()) {
            return err("ping_interval", &self.ping_interval, "None or > 0");
        }
        if self.ping_timeout.is_some_and(|d| d.is_zero()) {
            return err("ping_timeout", &self.ping_timeout, "None or > 0");
        }
        if self.max_message_size == 0 {
            return err("max_message_size", &self.max_message_size, "> 0");
        }
        if self.max_queue_size == 0 {
            return err("max_queue_size", &self.max_queue_size, "> 0");
        }
        if self.max_incoming_burst == 0 {
            return err("max_incoming_burst", &self.max_incoming_burst, "> 0");
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_base {
            return err(
                "reconnect_backoff_max",
                &self.reconnect_backoff_max,
                "≥ reconnect_backoff_base",
            );
        }
        if !(0.0..=1.0).contains(&self.reconnect_jitter) {
            return err(
                "reconnect_jitter",
                &self.reconnect_jitter,
                "a number in 0..=1",
            );
        }
        Ok(())
    }

    /// Sets [`open_timeout`](Self::open_timeout).
    pub fn with_open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }
    /// Sets [`close_timeout`](Self::close_timeout).
    pub fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
    /// Sets [`ping_interval`](Self::ping_interval); `None` disables keepalive.
    pub fn with_ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }
    /// Sets [`ping_timeout`](Self::ping_timeout); `None` waits forever for the pong.
    pub fn with_ping_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.ping_timeout = timeout;
        self
    }
    /// Sets [`max_message_size`](Self::max_message_size) in bytes.
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// Sets [`max_queue_size`](Self::max_queue_size).
    pub fn with_max_queue_size(mut self, messages: usize) -> Self {
        self.max_queue_size = messages;
        self
    }
    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
    /// Sets [`max_connections`](Self::max_connections); 0 = no limit.
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }
    /// Sets [`max_connections_per_user`](Self::max_connections_per_user); 0 = no limit.
    pub fn with_max_connections_per_user(mut self, connections: usize) -> Self {
        self.max_connections_per_user = connections;
        self
    }
    /// Sets [`max_incoming_rate`](Self::max_incoming_rate) (frames per second; 0 = no
    /// limit) and [`max_incoming_burst`](Self::max_incoming_burst).
    pub fn with_max_incoming_rate(mut self, per_second: u32, burst: u32) -> Self {
        self.max_incoming_rate = per_second;
        self.max_incoming_burst = burst;
        self
    }
    /// Sets [`compression`](Self::compression).
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }
    /// Sets [`compression_min_size`](Self::compression_min_size).
    pub fn with_compression_min_size(mut self, bytes: usize) -> Self {
        self.compression_min_size = bytes;
        self
    }
    /// Sets [`compression_window_bits`](Self::compression_window_bits), clamped to 8..=15.
    pub fn with_compression_window_bits(mut self, bits: u8) -> Self {
        self.compression_window_bits = bits.clamp(8, 15);
        self
    }
    /// Sets [`allowed_origins`](Self::allowed_origins) to exactly these origins.
    pub fn with_allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }
    /// Whether an upgrade carrying `origin` (its `Origin` header, if any) is accepted.
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        match (&self.allowed_origins, origin) {
            (None, _) | (Some(_), None) => true,
            (Some(list), Some(origin)) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
    /// Sets [`reconnect_enabled`](Self::reconnect_enabled).
    pub fn with_reconnect_enabled(mut self, enabled: bool) -> Self {
        self.reconnect_enabled = enabled;
        self
    }
    /// Sets [`reconnect_max_attempts`](Self::reconnect_max_attempts); 0 = forever.
    pub fn with_reconnect_max_attempts(mut self, attempts: u32) -> Self {
        self.reconnect_max_attempts = attempts;
        self
    }
    /// Sets [`reconnect_backoff_base`](Self::reconnect_backoff_base).
    pub fn with_reconnect_backoff_base(mut self, base: Duration) -> Self {
        self.reconnect_backoff_base = base;
        self
    }
    /// Sets [`reconnect_backoff_max`](Self::reconnect_backoff_max).
    pub fn with_reconnect_backoff_max(mut self, max: Duration) -> Self {
        self.reconnect_backoff_max = max;
        self
    }
    /// Sets [`reconnect_jitter`](Self::reconnect_jitter) (`0..=1`).
    pub fn with_reconnect_jitter(mut self, jitter: f64) -> Self {
        self.reconnect_jitter = jitter;
        self
    }

    /// The delay before retry number `attempt` (0-based), before jitter:
    /// `min(base * 2^attempt, max)`.
    pub fn backoff_delay(&self, attempt: u32) -> Duration {
        self.backoff().delay(attempt)
    }

    /// [`backoff_delay`](Self::backoff_delay) times a random factor in
    /// `[1 - jitter, 1 + jitter]`.
    pub fn jittered_backoff_delay(&self, attempt: u32) -> Duration {
        self.backoff().jittered(attempt)
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            self.reconnect_backoff_base,
            self.reconnect_backoff_max,
            self.reconnect_jitter,
        )
    }
}

fn parse_f64(raw: &str) -> Option<f64> {
    raw.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn parse_secs(var: &str, raw: &str) -> Result<Duration, ConfigError> {
    parse_f64(raw)
        .filter(|v| *v > 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| ConfigError::new(var, raw, POSITIVE_SECS))
}

fn parse_non_negative_secs(var: &str, raw: &str, expected: &str) -> Result<Duration, ConfigError> {
    parse_f64(raw)
        .filter(|v| *v >= 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| ConfigError::new(var, raw, expected))
}

fn parse_optional_secs(var: &str, raw: &str) -> Result<Option<Duration>, ConfigError> {
    let trimmed = raw.trim();
    if trimmed.is_empty()
        || trimmed.eq_ignore_ascii_case("none")
        || trimmed.eq_ignore_ascii_case("null")
    {
        return Ok(None);
    }
    match parse_f64(trimmed) {
        Some(0.0) => Ok(None),
        Some(v) if v > 0.0 && Duration::try_from_secs_f64(v).is_ok() => {
            Ok(Some(Duration::from_secs_f64(v)))
        }
        _ => Err(ConfigError::new(var, raw, OPTIONAL_SECS)),
    }
}

fn parse_uint<T: std::str::FromStr>(
    var: &str,
    raw: &str,
    expected: &str,
) -> Result<T, ConfigError> {
    let digits: String = raw.trim().chars().filter(|c| *c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::new(var, raw, expected));
    }
    digits
        .parse::<T>()
        .map_err(|_| ConfigError::new(var, raw, expected))
}

/// `*` (any origin: `None`) or a comma-separated list of exact origins.
fn parse_origins(var: &str, raw: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let raw = raw.trim();
    if raw == "*" {
        return Ok(None);
    }
    let list: Vec<String> = raw
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    let valid = |o: &String| {
        (o.starts_with("http://") || o.starts_with("https://"))
            && !o[o.find("//").unwrap_or(0) + 2..].contains('/')
    };
    if list.is_empty() || !list.iter().all(valid) {
        return Err(ConfigError::new(
            var,
            raw,
            "`*`, or a comma-separated list of origins such as https://app.example.com",
        ));
    }
    Ok(Some(list))
}

fn parse_positive(var: &str, raw: &str) -> Result<usize, ConfigError> {
    let expected = "an integer > 0";
    match parse_uint::<usize>(var, raw, expected)? {
        0 => Err(ConfigError::new(var, raw, expected)),
        n => Ok(n),
    }
}

fn parse_bool(var: &str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err(ConfigError::new(
            var,
            raw,
            "one of true/false/1/0/yes/no/on/off/t/f/y/n",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<WebSocketConfig, ConfigError> {
        WebSocketConfig::from_vars(pairs.iter().copied())
    }

    #[test]
    fn defaults_match_the_seed_table() {
        let c = WebSocketConfig::default();
        assert_eq!(c.open_timeout, Duration::from_secs(10));
        assert_eq!(c.close_timeout, Duration::from_secs(10));
        assert_eq!(c.ping_interval, Some(Duration::from_secs(20)));
        assert_eq!(c.ping_timeout, Some(Duration::from_secs(20)));
        assert_eq!(c.max_message_size, 1_048_576);
        assert_eq!(c.max_queue_size, 16);
        assert!(c.reconnect_enabled);
        assert_eq!(c.reconnect_max_attempts, 5);
        assert_eq!(c.reconnect_backoff_base, Duration::from_secs(1));
        assert_eq!(c.reconnect_backoff_max, Duration::from_secs(60));
        assert_eq!(c.reconnect_jitter, 0.1);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 0);
        assert_eq!(c.max_connections_per_user, 100);
        assert_eq!(env(&[]).unwrap(), c);
        c.validate().unwrap();
    }

    #[test]
    fn every_variable_good_values() {
        let c = env(&[
            ("WS_OPEN_TIMEOUT", " 30 "),
            ("WS_CLOSE_TIMEOUT", "2.5"),
            ("WS_PING_INTERVAL", "10"),
            ("ws_ping_timeout", "5"), // names are case-insensitive
            ("WS_MAX_MESSAGE_SIZE", "16_777_216"),
            ("WS_MAX_QUEUE_SIZE", "64"),
            ("WS_RECONNECT_ENABLED", "off"),
            ("WS_RECONNECT_MAX_ATTEMPTS", "0"),
            ("WS_RECONNECT_BACKOFF_BASE", "0.5"),
            ("WS_RECONNECT_BACKOFF_MAX", "8"),
            ("WS_RECONNECT_JITTER", "1"),
            ("WS_HANDSHAKE_TIMEOUT", "0.25"),
            ("WS_MAX_CONNECTIONS", "50_000"),
            ("WS_MAX_CONNECTIONS_PER_USER", "0"),
            ("WS_SOMETHING_ELSE", "ignored"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(c.open_timeout, Duration::from_secs(30));
        assert_eq!(c.close_timeout, Duration::from_millis(2500));
        assert_eq!(c.ping_interval, Some(Duration::from_secs(10)));
        assert_eq!(c.ping_timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.max_message_size, 16 * 1024 * 1024);
        assert_eq!(c.max_queue_size, 64);
        assert!(!c.reconnect_enabled);
        assert_eq!(c.reconnect_max_attempts, 0);
        assert_eq!(c.reconnect_backoff_base, Duration::from_millis(500));
        assert_eq!(c.reconnect_backoff_max, Duration::from_secs(8));
        assert_eq!(c.reconnect_jitter, 1.0);
        assert_eq!(c.handshake_timeout, Duration::from_millis(250));
        assert_eq!(c.max_connections, 50_000);
        assert_eq!(c.max_connections_per_user, 0);
    }

    #[test]
    fn compression_settings() {
        let c = WebSocketConfig::default();
        assert_eq!(
            (c.compression, c.compression_min_size),
            (Compression::Shared, 128)
        );
        let c = env(&[
            ("WS_COMPRESSION", " OFF "),
            ("WS_COMPRESSION_MIN_SIZE", "0"),
        ])
        .unwrap();
        assert_eq!(
            (c.compression, c.compression_min_size),
            (Compression::Off, 0)
        );
        assert_eq!(
            env(&[("WS_COMPRESSION", "shared")]).unwrap().compression,
            Compression::Shared
        );
        let c = env(&[
            ("WS_COMPRESSION", "Dedicated"),
            ("WS_COMPRESSION_WINDOW_BITS", "10"),
        ])
        .unwrap();
        assert_eq!(
            (c.compression, c.compression_window_bits),
            (Compression::Dedicated, 10)
        );
        assert_eq!(WebSocketConfig::default().compression_window_bits, 15);
        for (var, bad) in [
            ("WS_COMPRESSION", "gzip"),
            ("WS_COMPRESSION", ""),
            ("WS_COMPRESSION_MIN_SIZE", "-1"),
            ("WS_COMPRESSION_WINDOW_BITS", "7"),
            ("WS_COMPRESSION_WINDOW_BITS", "16"),
            ("WS_COMPRESSION_WINDOW_BITS", "x"),
        ] {
            let e = env(&[(var, bad)]).unwrap_err().to_string();
            assert!(e.contains(var), "{e}");
        }
        assert_eq!(Compression::Off.to_string(), "off");
        assert_eq!(Compression::Shared.to_string(), "shared");
        assert_eq!(Compression::Dedicated.to_string(), "dedicated");
    }

    #[test]
    fn ping_can_be_disabled_from_env() {
        for off in ["none", "None", "NULL", "", "  ", "0", "0.0"] {
            let c = env(&[("WS_PING_INTERVAL", off), ("WS_PING_TIMEOUT", off)]).unwrap();
            assert_eq!(c.ping_interval, None, "{off:?}");
            assert_eq!(c.ping_timeout, None, "{off:?}");
        }
    }

    #[test]
    fn bools() {
        for (raw, want) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("on", true),
            ("t", true),
            ("Y", true),
            ("false", false),
            ("0", false),
            ("no", false),
            ("off", false),
            ("f", false),
            ("n", false),
        ] {
            let c = env(&[("WS_RECONNECT_ENABLED", raw)]).unwrap();
            assert_eq!(c.reconnect_enabled, want, "{raw}");
        }
    }

    #[test]
    fn bad_values_name_variable_value_and_rule() {
        let cases = [
            ("WS_OPEN_TIMEOUT", "abc"),
            ("WS_OPEN_TIMEOUT", "-1"),
            ("WS_OPEN_TIMEOUT", "0"),
            ("WS_OPEN_TIMEOUT", "inf"),
            ("WS_CLOSE_TIMEOUT", "nan"),
            ("WS_PING_INTERVAL", "-5"),
            ("WS_PING_INTERVAL", "soon"),
            ("WS_PING_TIMEOUT", "-0.1"),
            ("WS_MAX_MESSAGE_SIZE", "0"),
            ("WS_MAX_MESSAGE_SIZE", "-1"),
            ("WS_HANDSHAKE_TIMEOUT", "0"),
            ("WS_MAX_CONNECTIONS", "-1"),
            ("WS_MAX_CONNECTIONS_PER_USER", "many"),
            ("WS_MAX_MESSAGE_SIZE", "1.5"),
            ("WS_MAX_MESSAGE_SIZE", "1e6"),
            ("WS_MAX_QUEUE_SIZE", "0"),
            ("WS_MAX_QUEUE_SIZE", ""),
            ("WS_RECONNECT_ENABLED", "maybe"),
            ("WS_RECONNECT_ENABLED", "2"),
            ("WS_RECONNECT_MAX_ATTEMPTS", "-1"),
            ("WS_RECONNECT_MAX_ATTEMPTS", "99999999999"),
            ("WS_RECONNECT_BACKOFF_BASE", "-1"),
            ("WS_RECONNECT_BACKOFF_MAX", "x"),
            ("WS_RECONNECT_JITTER", "5"),
            ("WS_RECONNECT_JITTER", "-0.1"),
        ];
        for (var, raw) in cases {
            let e = env(&[(var, raw)]).expect_err(&format!("{var}={raw:?} must fail"));
            assert_eq!(e.variable, var);
            assert_eq!(e.value.as_deref(), Some(raw));
            let shown = e.to_string();
            assert!(shown.contains(var) && shown.contains("expected"), "{shown}");
        }
    }

    #[test]
    fn cross_field_rule_names_the_variable() {
        let e = env(&[
            ("WS_RECONNECT_BACKOFF_BASE", "10"),
            ("WS_RECONNECT_BACKOFF_MAX", "5"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "WS_RECONNECT_BACKOFF_MAX");
        let e = WebSocketConfig::default()
            .with_reconnect_jitter(1.5)
            .validate()
            .unwrap_err();
        assert_eq!(e.variable, "reconnect_jitter");
        assert!(
            WebSocketConfig::default()
                .with_open_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = WebSocketConfig::default();
        let secs: Vec<f64> = (0..8).map(|n| c.backoff_delay(n).as_secs_f64()).collect();
        assert_eq!(secs, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]);
        assert_eq!(c.backoff_delay(u32::MAX), Duration::from_secs(60));
        for n in 0..10 {
            let d = c.jittered_backoff_delay(n).as_secs_f64();
            let base = c.backoff_delay(n).as_secs_f64();
            assert!(d >= base * 0.9 - 1e-9 && d <= base * 1.1 + 1e-9, "{n}: {d}");
        }
        let exact = c.with_reconnect_jitter(0.0);
        assert_eq!(exact.jittered_backoff_delay(3), Duration::from_secs(8));
    }
}
