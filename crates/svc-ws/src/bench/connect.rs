//! `svc-ws bench connect`: a reconnect storm. Opens N connections to `/ws/{id}` as fast as
//! the server takes them (at most `--connect-concurrency` handshakes in flight) and keeps
//! every one open, as clients coming back to a restarted node do.
//!
//! Reports handshakes per second (connections ÷ time from the first attempt to the last
//! `101` received), the handshake time of each connection (TCP connect + upgrade, from the
//! attempt to the `101`) and of its TCP connect alone, and the host's kernel counters over
//! the run: `ListenOverflows`/`ListenDrops` (a full accept queue drops the connection) and
//! `TCPSynRetrans` (a dropped SYN costs the client a 1 s retransmission timeout).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::mpsc;

use super::common::{
    CommonArgs, ConnectGate, CpuMeter, Latency, Target, cpu_line, latency_histogram, round3,
};

/// Arguments of `svc-ws bench connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections to open (and hold until all are up).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    connections: usize,
    /// PID of the server, to report how busy it was.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connect with the tokio-tungstenite client (as `idle` and `echo` do) instead of the
    /// lean one: slower on the load generator's core, so it may measure the client.
    #[arg(long)]
    tungstenite: bool,
}

/// The kernel counters that show dropped connection attempts (from `/proc/net/netstat`).
const KERNEL_COUNTERS: [&str; 3] = ["ListenOverflows", "ListenDrops", "TCPSynRetrans"];

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let soft = super::common::raise_nofile(args.connections as u64 + 256);
    let target = Arc::new(Target::from_args(&args.common)?);
    println!(
        "connect: {} connections to {}, {} handshakes in flight at most (nofile {soft})",
        args.connections, args.common.url, args.common.connect_concurrency
    );
    let baseline = target.stats().await?;
    if baseline != 0 {
        println!("  note: /stats showed {baseline} connections before the run");
    }
    let kernel_before = kernel_counters();
    let client_cpu = CpuMeter::start(None);
    let server_cpu = args.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let started = Instant::now();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut gate = ConnectGate::new(&args.common);
    let spawner = {
        let target = Arc::clone(&target);
        let connections = args.connections;
        let tungstenite = args.tungstenite;
        tokio::spawn(async move {
            for i in 0..connections {
                let Ok(permit) = gate.admit().await else {
                    break;
                };
                let target = Arc::clone(&target);
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    let attempt = Instant::now();
                    let path = format!("/ws/bench-connect-{i}");
                    let result = if tungstenite {
                        target
                            .connect(&path)
                            .await
                            .map(|ws| (Box::new(ws) as Box<dyn Send>, Duration::ZERO))
                    } else {
                        target
                            .connect_raw_timed(&path)
                            .await
                            .map(|(ws, tcp)| (Box::new(ws) as Box<dyn Send>, tcp))
                    };
                    let result =
                        result.map(|(ws, tcp)| (ws, tcp, attempt.elapsed(), Instant::now()));
                    drop(permit);
                    let _ = done_tx.send(result);
                });
            }
        })
    };

    let mut handshake = latency_histogram()?;
    let mut tcp_connect = latency_histogram()?;
    // Every open connection, held (open) until every handshake is done.
    let mut held: Vec<Box<dyn Send>> = Vec::with_capacity(args.connections);
    let mut errors = Vec::new();
    let mut last_up = started;
    while let Some(result) = done_rx.recv().await {
        match result {
            Ok((ws, tcp, total, at)) => {
                handshake.saturating_record(nanos(total));
                if !tcp.is_zero() {
                    tcp_connect.saturating_record(nanos(tcp));
                }
                last_up = last_up.max(at);
                held.push(ws);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
        if held.len() + errors.len() == args.connections {
            break;
        }
    }
    spawner.await?;
    let elapsed = last_up.saturating_duration_since(started);
    let (client_busy, server_busy) = (
        client_cpu.busy_percent(),
        server_cpu.and_then(|m| m.busy_percent()),
    );
    let kernel_after = kernel_counters();
    let up = held.len();
    let rate = if elapsed.is_zero() {
        0.0
    } else {
        up as f64 / elapsed.as_secs_f64()
    };
    let over_1s = up as u64 - handshake.count_between(0, 999_999_999);
    let (handshake, tcp_connect) = (Latency::of(&handshake), Latency::of(&tcp_connect));
    println!(
        "  up: {up}/{} in {:.3} s = {rate:.0} connections/s ({} failed)",
        args.connections,
        elapsed.as_secs_f64(),
        errors.len()
    );
    println!("  handshake:   {}", handshake.line());
    println!("  TCP connect: {}", tcp_connect.line());
    println!("  handshakes over 1 s: {over_1s}");
    let kernel: serde_json::Map<String, serde_json::Value> = KERNEL_COUNTERS
        .iter()
        .zip(kernel_before.iter().zip(&kernel_after))
        .map(|(name, (before, after))| {
            let delta = before.zip(*after).map(|(b, a)| a.saturating_sub(b));
            ((*name).to_owned(), serde_json::json!(delta))
        })
        .collect();
    println!(
        "  kernel counters over the run: {}",
        serde_json::Value::from(kernel.clone())
    );
    println!("  CPU busy: {}", cpu_line(client_busy, server_busy));
    let registered = if up > 0 {
        let wait = Instant::now();
        let seen = target
            .wait_for_connections(up as u64, Duration::from_secs(60))
            .await?;
        println!(
            "  /stats: {seen} connections, {:.3} s after the last handshake",
            wait.elapsed().as_secs_f64()
        );
        seen
    } else {
        0
    };
    for e in errors.iter().take(5) {
        println!("    error: {e}");
    }
    drop(held);
    super::emit_json(
        args.common.json,
        &serde_json::json!({
            "workload": "connect",
            "url": args.common.url,
            "connections": args.connections,
            "concurrency": args.common.connect_concurrency,
            "client": if args.tungstenite { "tokio-tungstenite" } else { "lean" },
            "connected": up,
            "elapsed_s": round3(elapsed.as_secs_f64()),
            "connections_per_s": rate.round(),
            "handshake": handshake,
            "tcp_connect": tcp_connect,
            "handshakes_over_1s": over_1s,
            "kernel": kernel,
            "stats_connections": registered,
            "client_cpu_percent": client_busy,
            "server_cpu_percent": server_busy,
            "failed": errors.len(),
            "errors": errors.iter().take(5).collect::<Vec<_>>(),
        }),
    );
    if !errors.is_empty() {
        bail!("{} connection(s) failed", errors.len());
    }
    Ok(())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// [`KERNEL_COUNTERS`] from `/proc/net/netstat` (host-wide; `None` where unreadable).
fn kernel_counters() -> [Option<u64>; 3] {
    let mut values = [None; 3];
    let Ok(netstat) = std::fs::read_to_string("/proc/net/netstat") else {
        return values;
    };
    // Pairs of lines: "TcpExt: Name Name ..." then "TcpExt: 1 2 ...".
    let lines: Vec<&str> = netstat.lines().collect();
    for pair in lines.chunks(2) {
        let [names, numbers] = pair else { continue };
        for (name, number) in names.split_whitespace().zip(numbers.split_whitespace()) {
            if let Some(i) = KERNEL_COUNTERS.iter().position(|c| *c == name) {
                values[i] = number.parse().ok();
            }
        }
    }
    values
}
