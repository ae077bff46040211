//! The gateway: WebSocket rooms, direct messages, broadcasts and presence over a small JSON
//! protocol, for teams that do not write Rust. `svc-ws serve` is this module behind a command
//! line.
//!
//! A [`Gateway`] is built from a [`GatewayConfig`] (usually [`GatewayConfig::from_env`]:
//! `WS_*`, `AUTH_JWT_*`, `REDIS_URL`, `WS_GATEWAY_*`) and serves:
//!
//! - `GET /ws`: the WebSocket (token by `?token=`, `Authorization: Bearer` or the
//!   `["bearer", token]` subprotocol, or an API key), speaking the protocol of
//!   `docs/protocol.md`: `join`, `leave`, `publish`, `send`, `broadcast`, `echo`, `presence`;
//!   an `id` on a request is answered with an `ack`, a bad request gets an `error` and the
//!   connection stays open;
//! - `POST /api/publish`: other services push to a user, a room or everyone (an API key or a
//!   JWT with the admin scope);
//! - `GET /health`, `GET /ws/stats`, `GET /metrics` (Prometheus);
//! - `GET /`: a demo page (chat rooms and live stats) for a browser;
//! - `GET /client.js`: the JavaScript client (`clients/js/svc-ws.js`, an ES module that
//!   reconnects, re-joins its rooms from the last position it saw and drops what it saw
//!   already), with its TypeScript types at `GET /client.d.ts`.
//!
//! In memory, a single node, by default; with a Redis URL every gateway on that Redis is one
//! cluster (`docs/scaling.md`).
//!
//! # Serving it on its own
//!
//! [`Gateway::serve`] takes a bound listener and a shutdown future, so the caller picks the
//! address (port 0 in tests) and the signal:
//!
//! ```no_run
//! use svc_infra::gateway::{Gateway, GatewayConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let gateway = Gateway::new(GatewayConfig::from_env()?)?;
//!     let listener = svc_infra::websocket::bind("127.0.0.1:8000").await?;
//!     let shutdown = async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     };
//!     // On Ctrl-C every connection gets close 1001 "server shutting down".
//!     gateway.serve(listener, shutdown).await?;
//!     Ok(())
//! }
//! ```
//!
//! `Gateway::serve_tls` (feature `tls`) serves the same over TLS (`wss://`, `https://`) with a
//! `ServerTls` certificate that can be reloaded meanwhile.
//!
//! # Beside an application's own routes
//!
//! [`Gateway::router`] is a plain axum [`Router`]; merge it into the application's. The
//! application then closes the gateway's connections on its own shutdown with
//! [`Gateway::shutdown`], and can reach them through [`Gateway::manager`]:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use svc_infra::gateway::{Gateway, GatewayConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Gateway::new(GatewayConfig::default().with_anonymous(true))?;
//! let app = Router::new()
//!     .route("/hello", get(|| async { "hello" }))
//!     .merge(gateway.router());
//! let listener = svc_infra::websocket::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         gateway.shutdown().await;
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    routing::{get, post},
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

#[cfg(feature = "tls")]
use crate::websocket::ServerTls;
use crate::{
    auth::{WsAuth, ws_optional_router, ws_protected_router},
    websocket::{ConnectionManager, Serve, add_websocket_manager_with, backplane::RedisBackplane},
};

mod config;
mod error;
mod http;
mod protocol;
mod rate;

use crate::websocket::metrics::{MetricKind, MetricSeries};
pub use config::GatewayConfig;
pub use error::GatewayError;
pub(crate) use protocol::answer;

/// The gateway's own series, beside the library's
/// ([`websocket::metrics::SERIES`](crate::websocket::metrics::SERIES)); `/metrics` lists both,
/// at zero from the start (`docs/operations.md`).
pub const METRICS: &[MetricSeries] = &[
    MetricSeries::new(
        "svc_ws_gateway_requests_total",
        MetricKind::Counter,
        "Requests on /ws handled, by type (invalid: not a request) and outcome (error: an error answer); those refused by the request rate are counted apart.",
        &[
            ("type", protocol::REQUEST_TYPES),
            ("outcome", &["ok", "error"]),
        ],
    ),
    MetricSeries::new(
        "svc_ws_gateway_rate_limited_total",
        MetricKind::Counter,
        "Requests on /ws refused with an error answer because the connection was over WS_GATEWAY_REQUEST_RATE.",
        &[],
    ),
    MetricSeries::new(
        "svc_ws_gateway_rate_limit_closes_total",
        MetricKind::Counter,
        "Connections closed with 1008 for staying far over WS_GATEWAY_REQUEST_RATE.",
        &[],
    ),
    MetricSeries::new(
        "svc_ws_gateway_room_limit_total",
        MetricKind::Counter,
        "Joins refused because the user was in WS_GATEWAY_MAX_ROOMS_PER_USER rooms.",
        &[],
    ),
    MetricSeries::new(
        "svc_ws_http_publishes_total",
        MetricKind::Counter,
        "POST /api/publish requests, by HTTP status of the answer.",
        &[("status", http::PUBLISH_STATUSES)],
    ),
    MetricSeries::new(
        "svc_ws_http_publish_duration_seconds",
        MetricKind::Histogram,
        "From a POST /api/publish request's headers to its answer (local delivery included).",
        &[],
    ),
];

/// The close code every connection gets on shutdown (1012, service restart: come back, to
/// any node, soon).
const SHUTDOWN_CODE: u16 = 1012;
/// The close reason every connection gets on shutdown.
const SHUTDOWN_REASON: &str = "service restart";

/// A gateway: its connections, its authenticator and its routes. Cheap to clone (the clones
/// share everything).
///
/// Build it with [`new`](Self::new), then either [`serve`](Self::serve) it on a listener or
/// mount its [`router`](Self::router) in an application.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    manager: ConnectionManager,
    auth: WsAuth,
    anonymous: bool,
    broadcast_scope: String,
    admin_scope: String,
    /// Whether a backplane was configured (so that its absence is `degraded`).
    backplane: bool,
    metrics: Option<PrometheusHandle>,
    shutdown_timeout: std::time::Duration,
    shutdown_grace: std::time::Duration,
    shutdown_spread: std::time::Duration,
    ready_requires_backplane: bool,
    /// Shutdown has begun: not ready any more.
    draining: std::sync::atomic::AtomicBool,
    max_rooms_per_user: usize,
    rate: rate::Rate,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("manager", &self.inner.manager)
            .field("anonymous", &self.inner.anonymous)
            .field("backplane", &self.inner.backplane)
            .field("metrics", &self.inner.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Validates `config` and builds the gateway: the authenticator, the connection manager
    /// and, with a Redis URL, its backplane (which connects in the background; a Redis that is
    /// not there yet is waited for, and `/health` says `degraded` meanwhile).
    ///
    /// Call it inside a tokio runtime when a Redis URL is set: the backplane's tasks start
    /// here.
    pub fn new(config: GatewayConfig) -> Result<Self, GatewayError> {
        config.validate()?;
        if config.auth.production && config.websocket.allowed_origins.is_none() {
            tracing::warn!(
                "WS_ALLOWED_ORIGINS is not set in a production-like environment: any web \
                 page may open a WebSocket to this gateway in its visitors' names; set it to \
                 your sites' origins"
            );
        }
        let anonymous = config.allows_anonymous();
        let auth = config.auth.clone().build().map_err(GatewayError::Auth)?;
        // The recorder first: the manager takes its metric handles when it is built.
        let metrics = if config.metrics {
            http::prometheus()
        } else {
            None
        };
        crate::websocket::metrics::describe(METRICS);
        let manager = build_manager(&config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                manager,
                auth,
                anonymous,
                broadcast_scope: config.broadcast_scope,
                admin_scope: config.admin_scope,
                backplane: config.redis_url.is_some(),
                metrics,
                shutdown_timeout: config.shutdown_timeout,
                shutdown_grace: config.shutdown_grace,
                shutdown_spread: config.shutdown_spread,
                ready_requires_backplane: config.ready_requires_backplane,
                draining: std::sync::atomic::AtomicBool::new(false),
                max_rooms_per_user: config.max_rooms_per_user,
                rate: rate::Rate {
                    per_second: config.request_rate,
                    burst: f64::from(config.request_burst),
                },
            }),
        })
    }

    /// The routes: `GET /ws`, `POST /api/publish`, `GET /health`, `GET /ws/stats`,
    /// `GET /metrics`, the demo page at `GET /` and the JavaScript client at `GET /client.js`
    /// (types at `GET /client.d.ts`). Merge it into an application's router, or nest it under
    /// a prefix (the demo page then connects to the wrong `/ws`: it assumes the root).
    pub fn router(&self) -> Router {
        let ws_routes = if self.inner.anonymous {
            ws_optional_router("", self.inner.auth.clone()).ws("/ws", protocol::ws)
        } else {
            ws_protected_router("", self.inner.auth.clone()).ws("/ws", protocol::ws)
        };
        let routes = Router::new()
            .merge(ws_routes.into_router())
            .route("/", get(http::demo))
            .route("/client.js", get(http::client_js))
            .route("/client.d.ts", get(http::client_types))
            .route("/api/publish", post(http::publish))
            .route("/health", get(http::health))
            .route("/health/live", get(http::live))
            .route("/health/ready", get(http::ready))
            .route("/ws/stats", get(http::stats))
            .route("/metrics", get(http::metrics))
            .with_state(self.clone());
        // Installed like any application's manager, so `WsUpgrade` gives the sockets its
        // limits (`WS_MAX_MESSAGE_SIZE`, queue, keepalive, origins) and its policy.
        add_websocket_manager_with(routes, self.inner.manager.clone())
    }

    /// Serves [`router`](Self::router) on `listener` (with [`serve`](crate::websocket::serve):
    /// a connection that does not complete its request within `WS_HANDSHAKE_TIMEOUT` is
    /// closed) until `shutdown` completes, then closes
    /// every connection with 1001 "server shutting down" (after what is already queued for
    /// it), waits up to [`shutdown_timeout`](GatewayConfig::shutdown_timeout) for the closing
    /// handshakes, and returns once the HTTP connections are done.
    ///
    /// The listener is bound by the caller, so tests use `127.0.0.1:0` and read the port from
    /// it. Returns an error only when the listener fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let server = crate::websocket::serve(listener, self.router());
        self.run(server, shutdown).await
    }

    /// [`serve`](Self::serve) over TLS: `wss://…/ws`, `https://…/health` and the rest, with
    /// `tls`'s certificate ([`Serve::tls`](crate::websocket::Serve::tls): the TLS handshake
    /// too must finish within `WS_HANDSHAKE_TIMEOUT`). Keep a clone of `tls` to
    /// [`reload`](ServerTls::reload) it while this serves.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: ServerTls,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let server = crate::websocket::serve(listener, self.router()).tls(tls);
        self.run(server, shutdown).await
    }

    async fn run(
        self,
        server: Serve,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let config = self.inner.manager.config().clone();
        server
            .config(&config)
            .with_graceful_shutdown(async move {
                shutdown.await;
                self.shutdown().await;
            })
            .await
            .map_err(GatewayError::Serve)
    }

    /// The rolling-restart sequence: at once, `/health/ready` turns 503 and new upgrades
    /// get 503 with `Retry-After`; after [`shutdown_grace`](GatewayConfig::shutdown_grace)
    /// (for the load balancer to notice) every connection is closed with 1012 "service
    /// restart", after what is already queued for it, evenly over
    /// [`shutdown_spread`](GatewayConfig::shutdown_spread); then this waits up to
    /// [`shutdown_timeout`](GatewayConfig::shutdown_timeout) for the closing handshakes.
    /// [`serve`](Self::serve) calls it (the HTTP server keeps answering meanwhile, so probes
    /// see the node go); an application that mounts [`router`](Self::router) itself calls it
    /// from its own shutdown.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        inner.manager.stop_admitting();
        tracing::info!(
            connections = inner.manager.local_connection_count(),
            grace = ?inner.shutdown_grace,
            spread = ?inner.shutdown_spread,
            "shutting down: not ready; closing the connections with 1012 after the grace, over the spread"
        );
        tokio::time::sleep(inner.shutdown_grace).await;
        inner
            .manager
            .shutdown_over(
                SHUTDOWN_CODE,
                SHUTDOWN_REASON,
                inner.shutdown_spread,
                inner.shutdown_timeout,
            )
            .await;
    }

    /// Whether the gateway takes new connections: not once shutdown began, and, with
    /// [`ready_requires_backplane`](GatewayConfig::ready_requires_backplane), not while its
    /// backplane is disconnected. `/health/ready` answers this.
    pub fn is_ready(&self) -> Result<(), &'static str> {
        let inner = &self.inner;
        if inner.draining.load(std::sync::atomic::Ordering::Acquire) {
            return Err("shutting down");
        }
        if inner.ready_requires_backplane
            && inner.backplane
            && inner.manager.backplane_status()
                != Some(crate::websocket::backplane::BackplaneStatus::Connected)
        {
            return Err("backplane disconnected");
        }
        Ok(())
    }

    /// The connection manager behind `/ws`: send to its users and rooms from the
    /// application's own code, read its stats, or add hooks.
    pub fn manager(&self) -> &ConnectionManager {
        &self.inner.manager
    }

    /// Whether `/ws` accepts connections without credentials
    /// ([`GatewayConfig::allows_anonymous`]).
    pub fn allows_anonymous(&self) -> bool {
        self.inner.anonymous
    }

    /// Whether this gateway was configured with a backplane (a Redis URL), i.e. is a node of
    /// a cluster rather than a single node in memory.
    pub fn has_backplane(&self) -> bool {
        self.inner.backplane
    }
}

/// The gateway's connection manager, built in this one place: limits and keepalive from the
/// config and, with a Redis URL, the backplane.
fn build_manager(config: &GatewayConfig) -> Result<ConnectionManager, GatewayError> {
    let mut builder = ConnectionManager::builder(config.websocket.clone());
    if let Some(url) = &config.redis_url {
        builder = builder.backplane(RedisBackplane::new(url).map_err(GatewayError::Redis)?);
    }
    Ok(builder.build())
}
