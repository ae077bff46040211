//! `svc-ws serve`: the gateway ([`svc_infra::gateway`]) behind a command line: the flags
//! below over the environment of [`GatewayConfig::from_env`], a listener on `--host`/`--port`,
//! and SIGINT/SIGTERM as the shutdown signal.

use std::net::SocketAddr;

use anyhow::Context as _;
use svc_infra::gateway::{Gateway, GatewayConfig};

/// Arguments of `svc-ws serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Configuration comes from the environment: WS_* (limits, keepalive), AUTH_JWT_* (token \
verification; see docs/auth.md) and REDIS_URL (join other gateways; in memory otherwise). \
The protocol of /ws is in docs/protocol.md.")]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    port: u16,
    /// Redis URL of the backplane that joins several gateways into one cluster.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Accept connections without credentials (the user id then comes from `?user=`, else a
    /// random one). The default: only when no JWT key is configured and APP_ENV is not
    /// production-like. A token that is given must be valid either way.
    #[arg(long, env = "WS_GATEWAY_ANONYMOUS")]
    anonymous: Option<bool>,
    /// The scope a user needs for `broadcast`.
    #[arg(long, env = "WS_GATEWAY_BROADCAST_SCOPE", default_value = "broadcast")]
    broadcast_scope: String,
    /// The scope a JWT needs for `POST /api/publish` (API keys need none).
    #[arg(long, env = "WS_GATEWAY_ADMIN_SCOPE", default_value = "admin")]
    admin_scope: String,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    // The flags (which clap also fills from the same variables) over the environment.
    let mut config = GatewayConfig::from_env()?
        .with_broadcast_scope(args.broadcast_scope)
        .with_admin_scope(args.admin_scope);
    if let Some(url) = args.redis_url {
        config = config.with_redis_url(url);
    }
    if let Some(anonymous) = args.anonymous {
        config = config.with_anonymous(anonymous);
    }
    let gateway = Gateway::new(config)?;

    // svc_infra::websocket::bind: an accept queue of 4096, not tokio's 128, and a descriptor
    // table grown before the clients arrive (reconnect storms).
    let listener = svc_infra::websocket::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("bind {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "svc-ws serve: listening on ws://{addr}/ws ({}, {})",
        if gateway.allows_anonymous() {
            "anonymous connections allowed"
        } else {
            "credentials required"
        },
        if gateway.has_backplane() {
            "Redis backplane"
        } else {
            "single node, in memory"
        }
    );
    gateway
        .serve(listener, async {
            shutdown_signal().await;
            eprintln!("svc-ws serve: shutting down");
        })
        .await?;
    Ok(())
}

/// SIGINT (Ctrl-C) or, on Unix, SIGTERM (what a container runtime sends).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return drop(ctrl_c.await),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
