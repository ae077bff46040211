//! `svc-ws bench idle`: open and hold N idle connections to `/ws/{id}`.
//!
//! With `--server-pid PID` it reads the server's VmRSS from `/proc/PID/status` before the
//! first connection (a baseline that should be taken with 0 connections open) and once every
//! connection is up and `--settle-secs` have passed, and prints the growth per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::common::{CommonArgs, ConnectGate, Target, Ws, round3, rss_kib};

/// Arguments of `svc-ws bench idle`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections to open and hold.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    connections: usize,
    /// How long to hold the connections once all are up (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// PID of the server, to read its VmRSS before and after.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Pause after the last connection is up before reading the RSS, in seconds.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Offer permessage-deflate (as browsers do), to measure what a connection that
    /// negotiated it costs the server.
    #[arg(long)]
    deflate: bool,
    /// The path each connection opens, `{i}` replaced by its number (the gateway's:
    /// `/ws?user=bench-idle-{i}`).
    #[arg(long, default_value = "/ws/bench-idle-{i}")]
    path: String,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if !args.path.starts_with('/') {
        bail!("--path must start with / (got {})", args.path);
    }
    let soft = super::common::raise_nofile(args.connections as u64 + 256);
    let target = Arc::new(Target::from_args(&args.common)?);
    println!(
        "idle: {} connections to {} (nofile {soft})",
        args.connections, args.common.url
    );
    let mut baseline_conns = target.stats().await?;
    if baseline_conns != 0 && args.server_pid.is_some() {
        // Connections of an earlier run may still be closing: give them a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while baseline_conns != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            baseline_conns = target.stats().await?;
        }
    }
    if baseline_conns != 0 {
        println!(
            "  note: /stats showed {baseline_conns} connections before the run: the RSS baseline is not at 0 connections"
        );
    }
    let rss_before = args.server_pid.map(rss_kib).transpose()?;
    if let Some(rss) = rss_before {
        println!("  server RSS before: {rss} KiB");
    }

    let started = Instant::now();
    let dropped = Arc::new(AtomicU64::new(0));
    // Connections whose upgrade response accepted the extension offered (`--deflate`).
    let negotiated = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let mut gate = ConnectGate::new(&args.common);
    let spawner = {
        let target = Arc::clone(&target);
        let dropped = Arc::clone(&dropped);
        let connections = args.connections;
        let path = Arc::<str>::from(args.path.as_str());
        let negotiated = Arc::clone(&negotiated);
        let offer = args
            .deflate
            .then_some(svc_infra::websocket::protocol::deflate::CLIENT_OFFER);
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(connections);
            for i in 0..connections {
                let Ok(permit) = gate.admit().await else {
                    break;
                };
                let target = Arc::clone(&target);
                let dropped = Arc::clone(&dropped);
                let negotiated = Arc::clone(&negotiated);
                let ready_tx = ready_tx.clone();
                let stop_rx = stop_rx.clone();
                let path = path.replace("{i}", &i.to_string());
                tasks.push(tokio::spawn(async move {
                    let connected = target.connect_offering(&path, offer).await;
                    let connected = connected.map(|(ws, accepted)| {
                        if accepted {
                            negotiated.fetch_add(1, Ordering::Relaxed);
                        }
                        ws
                    });
                    drop(permit);
                    match connected {
                        Ok(ws) => {
                            let _ = ready_tx.send(Ok(())).await;
                            drop(ready_tx);
                            if let Err(e) = hold(ws, stop_rx).await {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                return Some(e);
                            }
                            None
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{e:#}"))).await;
                            None
                        }
                    }
                }));
            }
            tasks
        })
    };
    let mut connect_errors = Vec::new();
    let mut up = 0_u64;
    while let Some(ready) = ready_rx.recv().await {
        match ready {
            Ok(()) => up += 1,
            Err(e) => connect_errors.push(e),
        }
    }
    let tasks = spawner.await?;
    let connect_secs = started.elapsed().as_secs_f64();
    println!(
        "  all up: {up}/{} connected in {connect_secs:.3} s ({} failed)",
        args.connections,
        connect_errors.len()
    );
    let seen = if up > 0 {
        // A lower bound: connections left over from an earlier run may still be counted.
        target
            .wait_for_connections(up, Duration::from_secs(60))
            .await
    } else {
        Ok(0)
    };
    let seen = match seen {
        Ok(seen) => seen,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    };
    println!("  /stats: {seen} connections");
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_after = args.server_pid.map(rss_kib).transpose()?;
    let per_conn_kib = match (rss_before, rss_after) {
        (Some(before), Some(after)) if up > 0 => {
            let per = (after as f64 - before as f64) / up as f64;
            println!(
                "  server RSS after: {after} KiB; growth {} KiB = {per:.2} KiB per connection",
                after as i64 - before as i64
            );
            Some(round3(per))
        }
        _ => None,
    };

    // Hold until the time is up or Ctrl-C; a connection the server drops ends the hold early.
    let hold_until = if args.hold_secs > 0 {
        println!("  holding for {} s", args.hold_secs);
        Some(tokio::time::Instant::now() + Duration::from_secs(args.hold_secs))
    } else {
        println!("  holding until Ctrl-C");
        None
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if dropped.load(Ordering::Relaxed) > 0 {
            println!("  a connection was dropped by the server: ending the hold");
            break;
        }
        if hold_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let still_up = up - dropped.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut errors: Vec<String> = connect_errors.clone();
    let collect = async {
        for task in tasks {
            if let Ok(Some(e)) = task.await {
                errors.push(e);
            }
        }
    };
    if timeout(Duration::from_secs(30), collect).await.is_err() {
        bail!("connections did not close within 30 s");
    }
    let lost = errors.len() - connect_errors.len();
    println!("  still up at the end: {still_up}; dropped by the server: {lost}");
    if args.deflate {
        let n = negotiated.load(Ordering::Relaxed);
        println!("  permessage-deflate offered on each, accepted on {n}");
    }
    for e in errors.iter().take(5) {
        println!("    error: {e}");
    }
    super::emit_json(
        args.common.json,
        &serde_json::json!({
            "workload": "idle",
            "url": args.common.url,
            "connections": args.connections,
            "connected": up,
            "connect_s": round3(connect_secs),
            "connect_failures": connect_errors.len(),
            "dropped": lost,
            "deflate_offered": args.deflate,
            "deflate_accepted": negotiated.load(Ordering::Relaxed),
            "stats_connections": seen,
            "server_rss_before_kib": rss_before,
            "server_rss_after_kib": rss_after,
            "server_rss_per_conn_kib": per_conn_kib,
            "errors": errors.iter().take(5).collect::<Vec<_>>(),
        }),
    );
    if !connect_errors.is_empty() || lost > 0 {
        bail!(
            "{} connect failures, {lost} connections dropped",
            connect_errors.len()
        );
    }
    Ok(())
}

/// Holds one connection, answering pings (tungstenite queues the pong while reading), until
/// told to stop. An error means the server dropped it.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let outcome = loop {
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            next = ws.next() => match next {
                Some(Ok(Message::Close(frame))) => break Err(format!("server closed: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(format!("connection error: {e}")),
                None => break Err("server closed the connection".to_owned()),
            },
        }
    };
    if outcome.is_ok() {
        let _ = timeout(Duration::from_millis(200), ws.close(None)).await;
    }
    outcome
}
