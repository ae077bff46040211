//! [`serve`]: `axum::serve` with a handshake timeout, so a client that never finishes its
//! HTTP request (slowloris) cannot hold a connection open.

use std::{
    future::{Future, IntoFuture},
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tower_service::Service;

#[cfg(feature = "tls")]
use super::ServerTls;
use crate::websocket::WebSocketConfig;

/// Serves `router` on `listener` over HTTP/1.1 with upgrades, as `axum::serve` does, but
/// with a **handshake timeout**: a connection whose request headers are not complete within
/// [`handshake_timeout`](Serve::handshake_timeout) of its arrival (or, on a kept-alive HTTP
/// connection, of the end of the previous response) is closed and counted in
/// `svc_ws_handshake_timeouts_total`. `axum::serve` has no such timeout: a client that sends
/// its headers one byte at a time, or nothing at all, holds a connection and its memory for
/// as long as it likes.
///
/// The timeout ends with the request's headers: an upgraded WebSocket is then governed by its
/// keepalive (`WS_PING_INTERVAL`), an HTTP handler by its own deadlines. Requests carry
/// [`ConnectInfo<SocketAddr>`] with the peer's address, as with
/// `into_make_service_with_connect_info`. Take the listener from [`bind`](super::bind).
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use svc_infra::websocket::{WebSocketConfig, bind, serve};
///
/// # async fn run() -> std::io::Result<()> {
/// let config = WebSocketConfig::from_env().expect("WS_* settings");
/// let app: Router = Router::new().route("/", get(|| async { "hi" }));
/// // An accept queue for reconnect storms (tokio's `TcpListener::bind` has 128).
/// let listener = bind("0.0.0.0:8000").await?;
/// serve(listener, app)
///     .config(&config) // WS_HANDSHAKE_TIMEOUT
///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
///     .await
/// # }
/// ```
pub fn serve(listener: TcpListener, router: Router) -> Serve {
    Serve {
        listener,
        router,
        handshake_timeout: WebSocketConfig::default().handshake_timeout,
        signal: Box::pin(std::future::pending()),
        #[cfg(feature = "tls")]
        tls: None,
    }
}

/// The future of [`serve`]; set the handshake timeout and a shutdown signal, then `.await` it.
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve {
    listener: TcpListener,
    router: Router,
    handshake_timeout: Duration,
    signal: Pin<Box<dyn Future<Output = ()> + Send>>,
    #[cfg(feature = "tls")]
    tls: Option<ServerTls>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut f = f.debug_struct("Serve");
        f.field("listener", &self.listener)
            .field("handshake_timeout", &self.handshake_timeout);
        #[cfg(feature = "tls")]
        f.field("tls", &self.tls);
        f.finish_non_exhaustive()
    }
}

impl Serve {
    /// How long a connection may take to send its request headers. Default 10 s
    /// (`WebSocketConfig::default().handshake_timeout`).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Takes the handshake timeout from `config` (`WS_HANDSHAKE_TIMEOUT`).
    pub fn config(self, config: &WebSocketConfig) -> Self {
        self.handshake_timeout(config.handshake_timeout)
    }

    /// Stops accepting when `signal` completes, lets each HTTP connection finish the request
    /// it is serving, and returns once they are done. Upgraded WebSockets are not waited
    /// for: close them with [`ConnectionManager::shutdown`](super::ConnectionManager::shutdown).
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.signal = Box::pin(signal);
        self
    }

    /// Serves `https://` and `wss://` instead, with `tls`'s certificate (feature `tls`).
    ///
    /// The TLS handshake runs in the connection's own task, so a slow one holds up no other,
    /// and has the [handshake timeout](Self::handshake_timeout): a client that does not
    /// finish it in time (one that opens TCP and sends nothing, say) is closed and counted in
    /// `svc_ws_handshake_timeouts_total`. Its request headers then have the handshake timeout
    /// again, as on a plain connection. Nothing answers plain HTTP on this listener.
    ///
    /// ```no_run
    /// use axum::{Router, routing::get};
    /// use svc_infra::websocket::{ServerTls, bind, serve};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let tls = ServerTls::from_pem_files("fullchain.pem", "privkey.pem")?;
    /// let app: Router = Router::new().route("/", get(|| async { "hi" }));
    /// // After a renewal, `tls.reload()` (on SIGHUP, say) presents the new certificate.
    /// serve(bind("0.0.0.0:8443").await?, app).tls(tls.clone()).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    async fn run(self) -> io::Result<()> {
        let Self {
            listener,
            router,
            handshake_timeout,
            mut signal,
            #[cfg(feature = "tls")]
            tls,
        } = self;
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(handshake_timeout);
        let http = Arc::new(http);
        // Every connection task holds a receiver: shutdown waits for the last one to drop.
        let (stop, _) = watch::channel(false);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                },
                () = &mut signal => break,
            };
            let _ = tcp.set_nodelay(true);
            let router = router.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().call(req.map(Body::new))
            });
            let stopping = stop.subscribe();
            #[cfg(feature = "tls")]
            if let Some(tls) = &tls {
                let (tls, http) = (tls.clone(), http.clone());
                tokio::spawn(async move {
                    let mut stopping = stopping;
                    let stream = tokio::select! {
                        stream = tls.accept(tcp, handshake_timeout, peer) => stream,
                        _ = stopping.changed() => None,
                    };
                    if let Some(stream) = stream {
                        let conn = http
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades();
                        run_connection(conn, stopping, peer).await;
                    }
                });
                continue;
            }
            let conn = http
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::spawn(run_connection(conn, stopping, peer));
        }
        drop(listener);
        let _ = stop.send(true);
        stop.closed().await;
        Ok(())
    }
}

/// Serves one connection (TCP, or TLS over it); on shutdown, lets it finish the request in
/// progress.
async fn run_connection<I, S>(
    conn: http1::UpgradeableConnection<I, S>,
    mut stopping: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // Set once, to true, after every receiver was made.
        _ = stopping.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics::counter!("svc_ws_handshake_timeouts_total").increment(1);
            tracing::debug!(%peer, "connection closed: request headers not complete in time");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Errors of `accept` that concern one connection are skipped; running out of file
/// descriptors (or memory) is logged and waited out briefly, as the kernel keeps the
/// others queued meanwhile.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 50 ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
