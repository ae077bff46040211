//! `svc-ws bench echo`: C connections × M sequential round trips, all connections at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::common::{
    CommonArgs, ConnectGate, CpuMeter, Latency, Target, Ws, cpu_line, latency_histogram, pad,
    round3,
};

/// Arguments of `svc-ws bench echo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// Measured round trips per connection.
    #[arg(short = 'm', long, default_value_t = 2000)]
    messages: usize,
    /// Unmeasured round trips per connection before the measured ones.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Use the raw `/echo` endpoint instead of `/ws/{id}` with `"type":"echo"`.
    #[arg(long)]
    raw: bool,
    /// PID of the server, to report its CPU use during the run.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// What one connection measured.
struct ConnResult {
    rtts_ns: Vec<u64>,
    measure_start: Instant,
    measure_end: Instant,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 || args.messages == 0 {
        bail!("--connections and --messages must be at least 1");
    }
    let soft = super::common::raise_nofile(args.connections as u64 + 256);
    let target = Arc::new(Target::from_args(&args.common)?);
    let endpoint = if args.raw { "/echo" } else { "/ws/{id}" };
    println!(
        "echo: {} connections x {} round trips ({} warm-up) of {} B on {endpoint} at {} (nofile {soft})",
        args.connections, args.messages, args.warmup, args.size, args.common.url
    );

    let (go_tx, go_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(args.connections);
    let mut gate = ConnectGate::new(&args.common);
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = gate.admit().await?;
        let target = Arc::clone(&target);
        let ready_tx = ready_tx.clone();
        let mut go_rx = go_rx.clone();
        let path = if args.raw {
            "/echo".to_owned()
        } else {
            format!("/ws/bench-echo-{i}")
        };
        let (warmup, messages, size, raw) = (args.warmup, args.messages, args.size, args.raw);
        tasks.push(tokio::spawn(async move {
            let connected = target.connect(&path).await;
            drop(permit);
            let mut ws = match connected {
                Ok(ws) => {
                    let _ = ready_tx.send(Ok(())).await;
                    ws
                }
                Err(e) => {
                    // Reported through `ready`; not counted twice.
                    let _ = ready_tx.send(Err(format!("{e:#}"))).await;
                    return Ok(None);
                }
            };
            drop(ready_tx);
            // Wait for every connection to be up; the sender lives until then.
            while !*go_rx.borrow_and_update() {
                go_rx.changed().await.map_err(|_| anyhow!("run aborted"))?;
            }
            round_trips(&mut ws, &target, i, warmup, messages, size, raw)
                .await
                .map(Some)
        }));
    }
    drop(ready_tx);

    let mut connect_errors = Vec::new();
    while let Some(ready) = ready_rx.recv().await {
        if let Err(e) = ready {
            connect_errors.push(e);
        }
    }
    let connected = args.connections - connect_errors.len();
    println!("  connected: {connected}/{}", args.connections);
    if connected == 0 {
        bail!(
            "no connection could be opened: {}",
            connect_errors.join("; ")
        );
    }
    let client_cpu = CpuMeter::start(None);
    let server_cpu = args.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let _ = go_tx.send(true);

    let mut hist = latency_histogram()?;
    let mut errors = connect_errors;
    let mut first_start: Option<Instant> = None;
    let mut last_end: Option<Instant> = None;
    for task in tasks {
        match task.await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(result))) => {
                for rtt in &result.rtts_ns {
                    hist.saturating_record((*rtt).max(1));
                }
                first_start =
                    Some(first_start.map_or(result.measure_start, |s| s.min(result.measure_start)));
                last_end = Some(last_end.map_or(result.measure_end, |e| e.max(result.measure_end)));
            }
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("task failed: {e}")),
        }
    }
    let failures = errors.len();
    let elapsed = match (first_start, last_end) {
        (Some(start), Some(end)) => end.saturating_duration_since(start),
        _ => Duration::ZERO,
    };
    let round_trips = hist.len();
    let rate = if elapsed.is_zero() {
        0.0
    } else {
        round_trips as f64 / elapsed.as_secs_f64()
    };
    let rtt = Latency::of(&hist);
    let (client_busy, server_busy) = (
        client_cpu.busy_percent(),
        server_cpu.and_then(|m| m.busy_percent()),
    );
    println!(
        "  round trips: {round_trips} in {:.3} s = {:.0} msgs/s",
        elapsed.as_secs_f64(),
        rate
    );
    println!("  RTT: {}", rtt.line());
    println!("  CPU busy: {}", cpu_line(client_busy, server_busy));
    println!("  failed connections: {failures}");
    for e in errors.iter().take(5) {
        println!("    error: {e}");
    }
    super::emit_json(
        args.common.json,
        &serde_json::json!({
            "workload": "echo",
            "url": args.common.url,
            "endpoint": endpoint,
            "connections": args.connections,
            "messages_per_connection": args.messages,
            "warmup": args.warmup,
            "size": args.size,
            "round_trips": round_trips,
            "elapsed_s": round3(elapsed.as_secs_f64()),
            "msgs_per_s": rate.round(),
            "rtt": rtt,
            "client_cpu_percent": client_busy,
            "server_cpu_percent": server_busy,
            "failed_connections": failures,
            "errors": errors.iter().take(5).collect::<Vec<_>>(),
        }),
    );
    if failures > 0 {
        bail!("{failures} connection(s) failed");
    }
    Ok(())
}

/// One connection's warm-up and measured round trips; every await is bounded.
async fn round_trips(
    ws: &mut Ws,
    target: &Target,
    conn: usize,
    warmup: usize,
    messages: usize,
    size: usize,
    raw: bool,
) -> anyhow::Result<ConnResult> {
    let mut rtts_ns = Vec::with_capacity(messages);
    let mut measure_start = Instant::now();
    for seq in 0..warmup + messages {
        if seq == warmup {
            measure_start = Instant::now();
        }
        let mut text = format!("{{\"type\":\"echo\",\"conn\":{conn},\"seq\":{seq},\"pad\":\"");
        let fill = size.saturating_sub(text.len() + 2);
        text.push_str(&pad(fill));
        text.push_str("\"}");
        let sent = Utf8Bytes::from(text);
        let started = Instant::now();
        timeout(target.io_timeout, ws.send(Message::Text(sent.clone())))
            .await
            .map_err(|_| anyhow!("conn {conn}: send timed out"))??;
        loop {
            let next = timeout(target.io_timeout, ws.next())
                .await
                .map_err(|_| anyhow!("conn {conn}: no echo within {:?}", target.io_timeout))?;
            match next {
                Some(Ok(Message::Text(got))) if got == sent => break,
                Some(Ok(Message::Text(got))) => {
                    bail!("conn {conn}: unexpected reply {:?}", truncate(&got))
                }
                Some(Ok(Message::Binary(_))) if raw => bail!("conn {conn}: binary reply to text"),
                Some(Ok(Message::Close(frame))) => bail!("conn {conn}: server closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("conn {conn}: {e}"),
                None => bail!("conn {conn}: server closed the connection"),
            }
        }
        if seq >= warmup {
            rtts_ns.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    let measure_end = Instant::now();
    let _ = timeout(Duration::from_millis(500), ws.close(None)).await;
    Ok(ConnResult {
        rtts_ns,
        measure_start,
        measure_end,
    })
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(80);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
