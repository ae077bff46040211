//! `svc-ws bench restart`: a rolling restart as the clients see it. N connections to node A
//! (`--url`); then A is sent SIGTERM (`--stop-pid`). Each connection, when A closes it,
//! waits a random pause of up to `--jitter-ms` (what our client does after 1012 "service
//! restart") and connects to node B (`--to`), where it stays.
//!
//! Reports when A's closes came (from the SIGTERM: first, median, last; their close codes),
//! B's handshake rate over time (the busiest 100 ms and the busiest second) and the time
//! until every client is back.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;

use super::{
    common::{CommonArgs, ConnectGate, Target, round3},
    raw::{Frame, RawWs},
};

/// Arguments of `svc-ws bench restart`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Node A: where the connections start (`--url`), and node B, where they go.
    #[command(flatten)]
    common: CommonArgs,
    /// Node B's base URL (ws://HOST:PORT).
    #[arg(long)]
    to: String,
    /// Connections to move.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    connections: usize,
    /// PID of node A, sent SIGTERM once every connection is up.
    #[arg(long)]
    stop_pid: u32,
    /// The path to upgrade on both nodes; `{i}` becomes the connection's number.
    #[arg(long, default_value = "/ws?user=r{i}")]
    path: String,
    /// Each client's pause before it reconnects: random, up to this many milliseconds.
    #[arg(long, default_value_t = 1_000)]
    jitter_ms: u64,
    /// How long to wait for every client to be back, in seconds.
    #[arg(long, default_value_t = 120)]
    wait_secs: u64,
}

/// What happened to one connection after the SIGTERM.
struct Moved {
    closed_at: Duration,
    code: Option<u16>,
    back_at: Duration,
    /// Held open until the report is out.
    _ws: RawWs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let soft = super::common::raise_nofile(2 * args.connections as u64 + 256);
    let a = Arc::new(Target::from_args(&args.common)?);
    let b = Arc::new(Target::from_args(&CommonArgs {
        url: args.to.clone(),
        ..args.common.clone()
    })?);
    println!(
        "restart: {} connections from {} to {} (pause before reconnecting: up to {} ms; nofile {soft})",
        args.connections, args.common.url, args.to, args.jitter_ms
    );

    // Everyone on A.
    let mut gate = ConnectGate::new(&args.common);
    let (up_tx, mut up_rx) = mpsc::unbounded_channel();
    for i in 0..args.connections {
        let permit = gate.admit().await?;
        let (a, up_tx) = (Arc::clone(&a), up_tx.clone());
        let path = args.path.replace("{i}", &i.to_string());
        tokio::spawn(async move {
            let ws = a.connect_raw(&path).await;
            drop(permit);
            let _ = up_tx.send((i, ws));
        });
    }
    drop(up_tx);
    let mut on_a = Vec::with_capacity(args.connections);
    while let Some((i, ws)) = up_rx.recv().await {
        on_a.push((i, ws.with_context(|| format!("connection {i} to node A"))?));
    }
    println!("  {} connections up on node A", on_a.len());

    // Each waits for A's close, pauses, and goes to B.
    let sigterm = Instant::now();
    let (moved_tx, mut moved_rx) = mpsc::unbounded_channel();
    let jitter = Duration::from_millis(args.jitter_ms);
    for (i, mut ws) in on_a {
        let (b, moved_tx) = (Arc::clone(&b), moved_tx.clone());
        let path = args.path.replace("{i}", &i.to_string());
        let io = a.io_timeout;
        let wait = Duration::from_secs(args.wait_secs);
        tokio::spawn(async move {
            let result = async {
                let mut code = None;
                'read: loop {
                    let mut closed = false;
                    ws.drain(io, |frame| {
                        if let Frame::Close(payload) = frame {
                            code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                            closed = true;
                        }
                    })
                    .await?;
                    if closed {
                        break 'read;
                    }
                    match tokio::time::timeout(wait, ws.fill()).await {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => break 'read,
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => bail!("node A did not close within {wait:?}"),
                    }
                }
                let closed_at = sigterm.elapsed();
                drop(ws);
                tokio::time::sleep(jitter.mul_f64(rand::random::<f64>())).await;
                let ws = b.connect_raw(&path).await?;
                anyhow::Ok(Moved {
                    closed_at,
                    code,
                    back_at: sigterm.elapsed(),
                    _ws: ws,
                })
            }
            .await;
            let _ = moved_tx.send(result);
        });
    }
    drop(moved_tx);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &args.stop_pid.to_string()])
        .status()
        .context("kill -TERM")?;
    if !status.success() {
        bail!("kill -TERM {} failed", args.stop_pid);
    }

    let mut moved = Vec::with_capacity(args.connections);
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    while moved.len() + errors.len() < args.connections {
        match tokio::time::timeout_at(deadline, moved_rx.recv()).await {
            Ok(Some(Ok(m))) => moved.push(m),
            Ok(Some(Err(e))) => errors.push(format!("{e:#}")),
            Ok(None) => break,
            Err(_) => {
                errors.push(format!("not back within {} s", args.wait_secs));
                break;
            }
        }
    }

    let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
    let mut closes: Vec<Duration> = moved.iter().map(|m| m.closed_at).collect();
    closes.sort_unstable();
    let mut backs: Vec<Duration> = moved.iter().map(|m| m.back_at).collect();
    backs.sort_unstable();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for m in &moved {
        let code = m.code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        *codes.entry(code).or_default() += 1;
    }
    // Handshakes completed on B per 100 ms from the SIGTERM.
    let mut bins: BTreeMap<u64, usize> = BTreeMap::new();
    for back in &backs {
        *bins.entry(back.as_millis() as u64 / 100).or_default() += 1;
    }
    let last_bin = bins.keys().next_back().copied().unwrap_or(0);
    let per_bin: Vec<usize> = (0..=last_bin)
        .map(|b| bins.get(&b).copied().unwrap_or(0))
        .collect();
    let peak_100ms = per_bin.iter().copied().max().unwrap_or(0);
    let peak_1s = per_bin
        .windows(10.min(per_bin.len()).max(1))
        .map(|w| w.iter().sum::<usize>())
        .max()
        .unwrap_or(0);
    let at = |v: &[Duration], q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| ms(*d))
    };
    println!(
        "  closes by node A after the SIGTERM: first {} ms, median {} ms, last {} ms; codes {codes:?}",
        at(&closes, 0.0),
        at(&closes, 0.5),
        at(&closes, 1.0)
    );
    println!(
        "  back on node B: {}/{} ({} failed); all back {} ms after the SIGTERM",
        moved.len(),
        args.connections,
        errors.len(),
        at(&backs, 1.0)
    );
    println!(
        "  node B's handshakes: busiest 100 ms {peak_100ms} ({} /s), busiest second {peak_1s} /s",
        peak_100ms * 10
    );
    for e in errors.iter().take(5) {
        println!("    error: {e}");
    }
    super::emit_json(
        args.common.json,
        &serde_json::json!({
            "workload": "restart",
            "from": args.common.url,
            "to": args.to,
            "connections": args.connections,
            "jitter_ms": args.jitter_ms,
            "moved": moved.len(),
            "failed": errors.len(),
            "close_codes": codes,
            "closes_ms": {"first": at(&closes, 0.0), "p50": at(&closes, 0.5), "last": at(&closes, 1.0)},
            "back_ms": {"first": at(&backs, 0.0), "p50": at(&backs, 0.5), "last": at(&backs, 1.0)},
            "peak_handshakes_per_100ms": peak_100ms,
            "peak_handshakes_per_s": peak_1s,
            "handshakes_per_100ms": per_bin,
            "errors": errors.iter().take(5).collect::<Vec<_>>(),
        }),
    );
    if !errors.is_empty() {
        bail!("{} connection(s) did not come back", errors.len());
    }
    Ok(())
}
