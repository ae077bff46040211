//! [`GatewayConfig`]: what the gateway serves, who may connect, and which cluster it joins.

use std::time::Duration;

use super::GatewayError;
use crate::{
    auth::WsAuthConfig,
    websocket::{ConfigError, WebSocketConfig, redact_url},
};

/// The settings of a [`Gateway`](super::Gateway).
///
/// Start from [`from_env`](Self::from_env) (the usual way: every variable is in the table
/// there), from [`from_vars`](Self::from_vars) (tests), or from [`GatewayConfig::default`] and
/// the `with_*` setters:
///
/// ```
/// use svc_infra::{auth::WsAuthConfig, gateway::GatewayConfig, websocket::WebSocketConfig};
///
/// let config = GatewayConfig::default()
///     .with_websocket(WebSocketConfig::default().with_max_message_size(64 * 1024))
///     .with_auth(WsAuthConfig::default().with_secret("a-long-random-secret-of-at-least-32-bytes"))
///     .with_redis_url("redis://127.0.0.1:6379")
///     .with_broadcast_scope("announce");
/// config.validate()?;
/// # Ok::<(), svc_infra::gateway::GatewayError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Limits and keepalive of the connections (`WS_*`). Default
    /// [`WebSocketConfig::default`].
    pub websocket: WebSocketConfig,
    /// Token and API-key verification (`AUTH_JWT_*`, `WS_API_KEYS`, `APP_ENV`). Default
    /// [`WsAuthConfig::default`]: no key, so anonymous connections are allowed (see
    /// [`anonymous`](Self::anonymous)) and every token is refused.
    pub auth: WsAuthConfig,
    /// The Redis server whose pub/sub joins several gateways into one cluster
    /// (`redis://host:port/db`). Default `None`: a single node, in memory.
    pub redis_url: Option<String>,
    /// Whether `/ws` accepts connections without credentials (the user id then comes from
    /// `?user=`, else a random `anon-…`). Default `None`: only when [`auth`](Self::auth) has
    /// no JWT key and is not production-like. A token that is given must be valid either way.
    pub anonymous: Option<bool>,
    /// The scope a user needs for the `broadcast` request. Default `"broadcast"`.
    pub broadcast_scope: String,
    /// The scope a JWT needs for `POST /api/publish` (API keys need none). Default `"admin"`.
    pub admin_scope: String,
    /// Whether `GET /metrics` serves Prometheus text. The first gateway built in a process
    /// installs the process-wide `metrics` recorder; if the application already installed
    /// another one, `/metrics` answers 404 (with a warning in the log). `false`: no recorder is
    /// installed and `/metrics` answers 404. Default `true`.
    pub metrics: bool,
    /// On shutdown, how long the connections get to finish the closing handshake after the
    /// last close frame (1012 "service restart") before they are dropped. Default 5 s.
    pub shutdown_timeout: Duration,
    /// On shutdown, how long the gateway goes on serving its connections after it stopped
    /// being ready (`/health/ready` 503, new upgrades 503), so that a load balancer notices
    /// before any connection closes (`WS_SHUTDOWN_GRACE`, seconds). Set it to what your
    /// readiness probe needs to see a node go (period × failure threshold). Default 0.
    pub shutdown_grace: Duration,
    /// On shutdown, the window over which the connections are closed (1012), evenly, so the
    /// other nodes see their clients come back as a ramp, not all at once
    /// (`WS_SHUTDOWN_SPREAD`, seconds). Default 5 s.
    pub shutdown_spread: Duration,
    /// Whether `/health/ready` says not ready while a configured backplane is disconnected
    /// (`WS_GATEWAY_READY_REQUIRES_BACKPLANE`): a node cut off from the others then gets no
    /// new clients. Default `false`: it still serves its own users, and says `degraded`.
    pub ready_requires_backplane: bool,
    /// The most rooms one user may be in at once (across their connections on this node); a
    /// `join` beyond it gets an `error` answer. 0 sets no limit. Default 1,000.
    pub max_rooms_per_user: usize,
    /// Requests per second one `/ws` connection may send, on average. A request over the
    /// rate gets an `error` answer; a connection that keeps sending at more than twice the
    /// rate (a further [`request_burst`](Self::request_burst) of refused requests) is closed
    /// with 1008 "rate limit exceeded". Default 500.
    pub request_rate: f64,
    /// Requests a connection may send at once above the rate (a reconnecting client that
    /// joins its rooms again, or a burst written before reading any answer). Default 5,000.
    pub request_burst: u32,
}

/// The Redis URL shows without its password ([`redact_url`]), the auth settings as
/// [`WsAuthConfig`]'s `Debug` shows them (secrets by length).
impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("websocket", &self.websocket)
            .field("auth", &self.auth)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("anonymous", &self.anonymous)
            .field("broadcast_scope", &self.broadcast_scope)
            .field("admin_scope", &self.admin_scope)
            .field("metrics", &self.metrics)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("shutdown_spread", &self.shutdown_spread)
            .field("ready_requires_backplane", &self.ready_requires_backplane)
            .field("max_rooms_per_user", &self.max_rooms_per_user)
            .field("request_rate", &self.request_rate)
            .field("request_burst", &self.request_burst)
            .finish()
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            websocket: WebSocketConfig::default(),
            auth: WsAuthConfig::default(),
            redis_url: None,
            anonymous: None,
            broadcast_scope: "broadcast".to_owned(),
            admin_scope: "admin".to_owned(),
            metrics: true,
            shutdown_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::ZERO,
            shutdown_spread: Duration::from_secs(5),
            ready_requires_backplane: false,
            max_rooms_per_user: 1_000,
            request_rate: 500.0,
            request_burst: 5_000,
        }
    }
}

impl GatewayConfig {
    /// The configuration from the process environment. Library code reads the environment
    /// here (and in the two `from_env` it calls) and nowhere else.
    ///
    /// | Variable | Default | Meaning |
    /// |---|---|---|
    /// | `WS_*` | see [`WebSocketConfig`] | Message size, queue, keepalive ([`websocket`](Self::websocket), read by [`WebSocketConfig::from_env`]) |
    /// | `AUTH_JWT_*`, `WS_API_KEYS`, `APP_ENV` | see [`WsAuthConfig::from_env`] | Token verification ([`auth`](Self::auth)) |
    /// | `REDIS_URL` | unset | Join the other gateways on this Redis ([`redis_url`](Self::redis_url)) |
    /// | `WS_GATEWAY_ANONYMOUS` | unset (see [`anonymous`](Self::anonymous)) | `true` or `false` (also `1/0/yes/no/on/off`, any case): accept connections without credentials |
    /// | `WS_GATEWAY_BROADCAST_SCOPE` | `broadcast` | The scope `broadcast` needs |
    /// | `WS_GATEWAY_ADMIN_SCOPE` | `admin` | The scope a JWT needs for `POST /api/publish` |
    /// | `WS_GATEWAY_MAX_ROOMS_PER_USER` | `1000` | Rooms one user may be in; `0` = no limit ([`max_rooms_per_user`](Self::max_rooms_per_user)) |
    /// | `WS_GATEWAY_REQUEST_RATE` | `500` | Requests per second per connection ([`request_rate`](Self::request_rate)) |
    /// | `WS_GATEWAY_REQUEST_BURST` | `5000` | Requests at once above the rate ([`request_burst`](Self::request_burst)) |
    /// | `WS_SHUTDOWN_GRACE` | `0` | Seconds between not ready and the first close on shutdown ([`shutdown_grace`](Self::shutdown_grace)) |
    /// | `WS_SHUTDOWN_SPREAD` | `5` | Seconds over which the connections are closed on shutdown ([`shutdown_spread`](Self::shutdown_spread)) |
    /// | `WS_GATEWAY_READY_REQUIRES_BACKPLANE` | `false` | Not ready while Redis is away ([`ready_requires_backplane`](Self::ready_requires_backplane)) |
    ///
    /// Empty values count as unset. The address to listen on is not here: the caller binds
    /// the listener it hands to [`Gateway::serve`](super::Gateway::serve) (`svc-ws serve`
    /// reads `HOST` and `PORT`).
    pub fn from_env() -> Result<Self, GatewayError> {
        Self::from_vars(std::env::vars_os().filter_map(|(k, v)| {
            // Non-UTF-8 names cannot be ours; a non-UTF-8 value of ours is reported as invalid.
            let k = k.into_string().ok()?;
            Some((k, v.to_string_lossy().into_owned()))
        }))
    }

    /// Like [`from_env`](Self::from_env), from the given `(name, value)` pairs instead of the
    /// process environment. Names are matched exactly (upper case).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, GatewayError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let get = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        let mut config = Self {
            websocket: WebSocketConfig::from_vars(vars.iter().map(|(k, v)| (k, v)))
                .map_err(GatewayError::WebSocket)?,
            auth: WsAuthConfig::from_vars(vars.iter().map(|(k, v)| (k, v)))
                .map_err(GatewayError::Auth)?,
            ..Self::default()
        };
        config.redis_url = get("REDIS_URL").map(str::to_owned);
        if let Some(raw) = get("WS_GATEWAY_ANONYMOUS") {
            config.anonymous = Some(parse_bool(raw).ok_or_else(|| {
                GatewayError::Invalid(ConfigError::new(
                    "WS_GATEWAY_ANONYMOUS",
                    raw,
                    "true or false",
                ))
            })?);
        }
        if let Some(raw) = get("WS_GATEWAY_READY_REQUIRES_BACKPLANE") {
            config.ready_requires_backplane = parse_bool(raw).ok_or_else(|| {
                GatewayError::Invalid(ConfigError::new(
                    "WS_GATEWAY_READY_REQUIRES_BACKPLANE",
                    raw,
                    "true or false",
                ))
            })?;
        }
        if let Some(scope) = get("WS_GATEWAY_BROADCAST_SCOPE") {
            config.broadcast_scope = scope.to_owned();
        }
        if let Some(scope) = get("WS_GATEWAY_ADMIN_SCOPE") {
            config.admin_scope = scope.to_owned();
        }
        let number = |name: &'static str, expected: &'static str| {
            get(name)
                .map(|raw| {
                    raw.replace('_', "")
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .ok_or_else(|| GatewayError::Invalid(ConfigError::new(name, raw, expected)))
                })
                .transpose()
        };
        const COUNT: &str = "an integer ≥ 0 (0 = no limit)";
        if let Some(v) = number("WS_GATEWAY_MAX_ROOMS_PER_USER", COUNT)? {
            config.max_rooms_per_user = whole(v, "WS_GATEWAY_MAX_ROOMS_PER_USER", COUNT)?;
        }
        if let Some(v) = number(
            "WS_GATEWAY_REQUEST_RATE",
            "a number > 0 (requests per second)",
        )? {
            config.request_rate = v;
        }
        const BURST: &str = "an integer ≥ 1";
        if let Some(v) = number("WS_GATEWAY_REQUEST_BURST", BURST)? {
            config.request_burst = whole(v, "WS_GATEWAY_REQUEST_BURST", BURST)?;
        }
        const SECS: &str = "a number of seconds ≥ 0";
        if let Some(v) = number("WS_SHUTDOWN_GRACE", SECS)? {
            config.shutdown_grace = Duration::from_secs_f64(v);
        }
        if let Some(v) = number("WS_SHUTDOWN_SPREAD", SECS)? {
            config.shutdown_spread = Duration::from_secs_f64(v);
        }
        config.validate_as_env()?;
        Ok(config)
    }

    /// Checks every setting that can be checked without connecting anywhere; the error names
    /// the part that is wrong. [`Gateway::new`](super::Gateway::new) calls it.
    ///
    /// The WebSocket and auth settings must pass their own `validate`, the scopes must not be
    /// empty and the shutdown timeout must not be zero.
    pub fn validate(&self) -> Result<(), GatewayError> {
        self.check(|field| field.to_owned())
    }

    fn validate_as_env(&self) -> Result<(), GatewayError> {
        self.check(|field| format!("WS_GATEWAY_{}", field.to_ascii_uppercase()))
    }

    fn check(&self, name: impl Fn(&str) -> String) -> Result<(), GatewayError> {
        if !(self.request_rate.is_finite() && self.request_rate > 0.0) {
            return Err(ConfigError::new(
                &name("request_rate"),
                self.request_rate,
                "a number > 0 (requests per second)",
            )
            .into());
        }
        if self.request_burst == 0 {
            return Err(ConfigError::new(&name("request_burst"), 0, "an integer ≥ 1").into());
        }
        self.websocket.validate().map_err(GatewayError::WebSocket)?;
        self.auth.validate().map_err(GatewayError::Auth)?;
        for (field, scope) in [
            ("broadcast_scope", &self.broadcast_scope),
            ("admin_scope", &self.admin_scope),
        ] {
            if scope.trim().is_empty() {
                return Err(ConfigError::new(field, scope, "a non-empty scope name").into());
            }
        }
        if self.shutdown_timeout.is_zero() {
            return Err(ConfigError::new("shutdown_timeout", "0s", "a duration > 0").into());
        }
        Ok(())
    }

    /// Whether `/ws` will accept connections without credentials: [`anonymous`](Self::anonymous)
    /// if set, else whether [`auth`](Self::auth) has no JWT key and is not production-like.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous
            .unwrap_or(!self.auth.has_jwt_keys() && !self.auth.production)
    }

    /// Sets [`websocket`](Self::websocket).
    pub fn with_websocket(mut self, websocket: WebSocketConfig) -> Self {
        self.websocket = websocket;
        self
    }

    /// Sets [`auth`](Self::auth).
    pub fn with_auth(mut self, auth: WsAuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Sets [`redis_url`](Self::redis_url): join the other gateways on this Redis.
    pub fn with_redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Sets [`anonymous`](Self::anonymous), overriding the default that depends on the keys.
    pub fn with_anonymous(mut self, anonymous: bool) -> Self {
        self.anonymous = Some(anonymous);
        self
    }

    /// Sets [`broadcast_scope`](Self::broadcast_scope).
    pub fn with_broadcast_scope(mut self, scope: impl Into<String>) -> Self {
        self.broadcast_scope = scope.into();
        self
    }

    /// Sets [`admin_scope`](Self::admin_scope).
    pub fn with_admin_scope(mut self, scope: impl Into<String>) -> Self {
        self.admin_scope = scope.into();
        self
    }

    /// Sets [`metrics`](Self::metrics).
    pub fn with_metrics(mut self, metrics: bool) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets [`max_rooms_per_user`](Self::max_rooms_per_user); 0 = no limit.
    pub fn with_max_rooms_per_user(mut self, rooms: usize) -> Self {
        self.max_rooms_per_user = rooms;
        self
    }

    /// Sets [`request_rate`](Self::request_rate) (per second) and
    /// [`request_burst`](Self::request_burst).
    pub fn with_request_rate(mut self, per_second: f64, burst: u32) -> Self {
        self.request_rate = per_second;
        self.request_burst = burst;
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace) and
    /// [`shutdown_spread`](Self::shutdown_spread).
    pub fn with_shutdown_ramp(mut self, grace: Duration, spread: Duration) -> Self {
        self.shutdown_grace = grace;
        self.shutdown_spread = spread;
        self
    }

    /// Sets [`ready_requires_backplane`](Self::ready_requires_backplane).
    pub fn with_ready_requires_backplane(mut self, required: bool) -> Self {
        self.ready_requires_backplane = required;
        self
    }

    /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}

/// `v` as a whole number of type `T`, or the error that names `name`.
fn whole<T: TryFrom<u64>>(v: f64, name: &str, expected: &str) -> Result<T, GatewayError> {
    if v.fract() == 0.0
        && v <= u64::MAX as f64
        && let Ok(n) = T::try_from(v as u64)
    {
        return Ok(n);
    }
    Err(ConfigError::new(name, v, expected).into())
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = GatewayConfig::default();
        assert_eq!(c.redis_url, None);
        assert_eq!(c.anonymous, None);
        assert_eq!(c.broadcast_scope, "broadcast");
        assert_eq!(c.admin_scope, "admin");
        assert!(c.metrics);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.max_rooms_per_user, 1000);
        assert_eq!(c.request_rate, 500.0);
        assert_eq!(c.request_burst, 5000);
        assert!(c.allows_anonymous(), "no key, not production");
        c.validate().unwrap();
    }

    #[test]
    fn from_vars_reads_every_variable() {
        let c = GatewayConfig::from_vars([
            ("WS_MAX_QUEUE_SIZE", "7"),
            (
                "AUTH_JWT__SECRET",
                "a-long-random-secret-of-at-least-32-bytes",
            ),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("WS_GATEWAY_ANONYMOUS", "TRUE"),
            ("WS_GATEWAY_BROADCAST_SCOPE", "announce"),
            ("WS_GATEWAY_ADMIN_SCOPE", " ops "),
            ("WS_GATEWAY_MAX_ROOMS_PER_USER", "50"),
            ("WS_GATEWAY_REQUEST_RATE", "2.5"),
            ("WS_GATEWAY_REQUEST_BURST", "1_000"),
        ])
        .unwrap();
        assert_eq!(c.max_rooms_per_user, 50);
        assert_eq!(c.request_rate, 2.5);
        assert_eq!(c.request_burst, 1000);
        assert_eq!(c.websocket.max_queue_size, 7);
        assert!(c.auth.has_jwt_keys());
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:1"));
        assert_eq!(c.anonymous, Some(true));
        assert!(c.allows_anonymous(), "explicitly, despite the key");
        assert_eq!((&*c.broadcast_scope, &*c.admin_scope), ("announce", "ops"));
    }

    #[test]
    fn empty_values_are_unset_and_a_key_means_credentials() {
        let c = GatewayConfig::from_vars([
            (
                "AUTH_JWT__SECRET",
                "a-long-random-secret-of-at-least-32-bytes",
            ),
            ("REDIS_URL", ""),
            ("WS_GATEWAY_ANONYMOUS", " "),
            ("WS_GATEWAY_ADMIN_SCOPE", ""),
        ])
        .unwrap();
        assert_eq!(c.redis_url, None);
        assert_eq!(c.anonymous, None);
        assert_eq!(c.admin_scope, "admin");
        assert!(!c.allows_anonymous());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = GatewayConfig::from_vars([("WS_GATEWAY_ANONYMOUS", "maybe")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid WS_GATEWAY_ANONYMOUS="maybe": expected true or false"#
        );
        for (name, bad) in [
            ("WS_GATEWAY_MAX_ROOMS_PER_USER", "-1"),
            ("WS_GATEWAY_MAX_ROOMS_PER_USER", "1.5"),
            ("WS_GATEWAY_REQUEST_RATE", "0"),
            ("WS_GATEWAY_REQUEST_RATE", "fast"),
            ("WS_GATEWAY_REQUEST_BURST", "0"),
        ] {
            let e = GatewayConfig::from_vars([(name, bad)]).unwrap_err();
            assert!(e.to_string().starts_with(&format!("invalid {name}")), "{e}");
        }
        let e = GatewayConfig::from_vars([("WS_PING_TIMEOUT", "-1")]).unwrap_err();
        assert!(matches!(e, GatewayError::WebSocket(_)), "{e:?}");
        let e = GatewayConfig::from_vars([("AUTH_JWT__LEEWAY", "x")]).unwrap_err();
        assert!(matches!(e, GatewayError::Auth(_)), "{e:?}");
        let e = GatewayConfig::default()
            .with_broadcast_scope("")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("broadcast_scope"), "{e}");
    }
}
