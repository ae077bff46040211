//! `svc-ws serve`: the gateway ([`svc_infra::gateway`]) behind a command line: the flags
//! below over the environment of [`GatewayConfig::from_env`], a listener on `--host`/`--port`
//! (TLS with `--tls-cert`/`--tls-key`, reloaded on SIGHUP), and SIGINT/SIGTERM as the
//! shutdown signal. `--print-config` prints the settings in effect instead ([`settings`]).
//!
//! A bad setting stops the start, with `--print-config` too: a bad flag (or a value clap
//! reads from `HOST`, `PORT`, `WS_GATEWAY_ANONYMOUS`) is a usage error (exit status 2), any
//! other bad variable exits with 1, the message naming the variable and what it accepts.

use std::{io::Write as _, net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::ArgMatches;
use svc_infra::{
    gateway::{Gateway, GatewayConfig, GatewayError},
    websocket::{ServerTls, backplane::RedisBackplane},
};

use crate::logs::{LogFormat, STATUS_TARGET};

mod settings;

/// Arguments of `svc-ws serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Configuration comes from the environment: WS_* (limits, keepalive), AUTH_JWT_* (token \
verification; see docs/auth.md) and REDIS_URL (join other gateways; in memory otherwise). \
Logs go to stderr: LOG_FORMAT=text (the default) or json, filtered by RUST_LOG (default info; \
see docs/operations.md). \
With --tls-cert and --tls-key it serves wss:// and https://; SIGHUP reloads both files. \
--print-config shows what is in effect, secrets redacted. \
The protocol of /ws is in docs/protocol.md.")]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    port: u16,
    /// Serve wss:// and https:// with this PEM certificate chain (the server's certificate
    /// first, then its intermediates). Needs --tls-key. SIGHUP reloads both files.
    #[arg(
        long,
        env = "WS_TLS_CERT",
        value_name = "PEM_FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert's certificate (PKCS#8, RSA or EC; may be the same
    /// file). Needs --tls-cert.
    #[arg(
        long,
        env = "WS_TLS_KEY",
        value_name = "PEM_FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
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
    /// Print the settings in effect, one `NAME=value  # source` line each (source: flag, env
    /// or default; secrets redacted), and exit without listening. A bad setting fails as it
    /// would at start.
    #[arg(long)]
    print_config: bool,
}

/// `svc-ws serve`; `matches` are the subcommand's, for where each flag's value came from.
pub(crate) async fn run(
    args: Args,
    matches: Option<&ArgMatches>,
    format: LogFormat,
) -> anyhow::Result<()> {
    // The flags (which clap also fills from the same variables) over the environment.
    let mut config = GatewayConfig::from_env()?
        .with_broadcast_scope(args.broadcast_scope.clone())
        .with_admin_scope(args.admin_scope.clone());
    if let Some(url) = &args.redis_url {
        config = config.with_redis_url(url.clone());
    }
    if let Some(anonymous) = args.anonymous {
        config = config.with_anonymous(anonymous);
    }
    // clap makes sure that both or neither are given.
    let tls =
        match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::from_pem_files(cert, key).context(
                "TLS certificate and key (--tls-cert, --tls-key; WS_TLS_CERT, WS_TLS_KEY)",
            )?),
            _ => None,
        };
    if args.print_config {
        preflight(&config)?;
        let env = settings::Env::from_process();
        let text = settings::render(&settings::collect(&args, matches, &config, &env));
        // Not `print!`, which panics on a closed stdout (`| head`).
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing to stdout")?;
        return Ok(());
    }
    let gateway = Gateway::new(config)?;

    // svc_infra::websocket::bind: an accept queue of 4096, not tokio's 128, and a descriptor
    // table grown before the clients arrive (reconnect storms).
    let listener = svc_infra::websocket::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("bind {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    if let Some(tls) = &tls {
        reload_on_sighup(tls.clone())?;
    }
    status(
        format,
        format_args!(
            "listening on {}://{addr}/ws ({}, {})",
            if tls.is_some() { "wss" } else { "ws" },
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
        ),
    );
    let shutdown = async move {
        shutdown_signal().await;
        status(format, format_args!("shutting down"));
    };
    match tls {
        Some(tls) => gateway.serve_tls(listener, tls, shutdown).await?,
        None => gateway.serve(listener, shutdown).await?,
    }
    Ok(())
}

/// On SIGHUP, reads the certificate and key files again: new handshakes get the new pair,
/// open connections go on. A pair that does not load is logged and the old one kept.
#[cfg(unix)]
fn reload_on_sighup(tls: ServerTls) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(
                    cert = %tls.cert_path().display(),
                    key = %tls.key_path().display(),
                    "SIGHUP: TLS certificate and key reloaded"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: TLS certificate and key not reloaded; still serving the previous ones"
                ),
            }
        }
    });
    Ok(())
}

/// No SIGHUP here: the certificate is read at start only.
#[cfg(not(unix))]
fn reload_on_sighup(_: ServerTls) -> anyhow::Result<()> {
    Ok(())
}

/// A line for whoever runs the gateway (where it listens, that it stops), whatever `RUST_LOG`
/// says: `svc-ws serve: …` on stderr, or with `LOG_FORMAT=json` a JSON log line at info
/// (target `svc_ws::status`), so that every line of such a run is JSON.
fn status(format: LogFormat, message: std::fmt::Arguments<'_>) {
    match format {
        LogFormat::Text => eprintln!("svc-ws serve: {message}"),
        LogFormat::Json => tracing::info!(target: STATUS_TARGET, "{message}"),
    }
}

/// The checks [`Gateway::new`] makes beyond [`GatewayConfig::validate`] (a production-like
/// `APP_ENV` needs a JWT key; `REDIS_URL` must be a Redis URL), without starting the
/// backplane or anything else, so that `--print-config` fails where the start would.
fn preflight(config: &GatewayConfig) -> Result<(), GatewayError> {
    config.validate()?;
    config.auth.clone().build().map_err(GatewayError::Auth)?;
    if let Some(url) = &config.redis_url {
        RedisBackplane::new(url).map_err(GatewayError::Redis)?;
    }
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
