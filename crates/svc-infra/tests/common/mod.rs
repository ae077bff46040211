//! The fixtures of every integration test, one module per concern. Each test file says
//! `mod common;` and uses the parts it needs:
//!
//! - this module: the one [`STEP`] timeout for a single await, [`within`] and [`step`] to put
//!   it on an await, [`eventually`] to poll a condition, [`init_tracing`];
//! - [`server`]: axum apps served on 127.0.0.1:0 and tokio-tungstenite clients against them;
//! - [`client_server`]: the axum echo server the client tests talk to (axum's own
//!   `WebSocketUpgrade`, independent of our server side);
//! - [`raw`]: raw TCP peers and frames (built and read with `svc_infra::websocket::protocol`);
//! - [`proxy`] (feature `client`): an HTTP `CONNECT` proxy that records what it is asked,
//!   and a `wss://` echo server with a self-signed certificate;
//! - [`auth`] (feature `auth`): tokens, keys and the auth test app;
//! - [`redis`] (feature `redis`): a private `redis-server` on a free port;
//! - [`gateway`] (feature `gateway`): the gateway served in process, and its requests;
//! - [`cutter`]: a TCP forwarder that cuts every connection through it at once.
#![allow(dead_code, unreachable_pub, missing_docs)] // each test file uses a different part

use std::{future::Future, time::Duration};

#[cfg(feature = "auth")]
pub mod auth;
pub mod client_server;
pub mod cutter;
#[cfg(feature = "gateway")]
pub mod gateway;
#[cfg(feature = "client")]
pub mod proxy;
pub mod raw;
#[cfg(feature = "redis")]
pub mod redis;
pub mod server;

/// How long any single await of a test may take.
pub const STEP: Duration = Duration::from_secs(10);

/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(200);

/// Awaits `fut`, failing the test with "timed out: `what`" after [`STEP`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Awaits `fut`, failing the test after [`STEP`]: [`within`] without a label.
pub async fn step<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("test step timed out")
}

/// Polls `cond` every 10 ms until it holds or [`STEP`] passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Installs a test tracing subscriber once (shows the library's logs with `--nocapture`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("svc_infra=info")),
        )
        .with_test_writer()
        .try_init();
}
