//! `svc-ws bench fanout`: N subscribers, one publisher sending M paced broadcasts.
//!
//! Each broadcast is `{"type":"broadcast","seq":N,"ts":T,"pad":"xxx..."}` padded to `--size`
//! bytes, where `ts` is the send time in ns since the Unix epoch (publisher and subscribers
//! share this process's clock); with `--realistic` the padding is realistic JSON instead
//! (`"items":[...]`), which deflates as real traffic does. With `--deflate` subscribers offer
//! permessage-deflate and inflate what arrives compressed; the bytes they read (what the
//! server wrote) are reported either way. Every subscriber records, per sequence number, how often it
//! arrived and the delivery latency (receive time − `ts`). Missing or duplicate deliveries make
//! the run exit non-zero.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, watch};
use tokio::time::{MissedTickBehavior, timeout};
use tokio_tungstenite::tungstenite::Message;

use super::common::{
    CommonArgs, ConnectGate, CpuMeter, Latency, Target, cpu_line, latency_histogram, now_ns, pad,
    realistic_json, round3,
};
use super::raw::{Frame, RawWs, json_u64};

/// Arguments of `svc-ws bench fanout`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Subscriber connections.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    subscribers: usize,
    /// Broadcasts the publisher sends.
    #[arg(short = 'm', long, default_value_t = 50)]
    messages: usize,
    /// Pause between two broadcasts, in ms.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Size of one broadcast message in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// How long to wait for outstanding deliveries after the last publish, in ms.
    #[arg(long, default_value_t = 5_000)]
    drain_ms: u64,
    /// How long `/stats` may take to show every subscriber, in seconds.
    #[arg(long, default_value_t = 120)]
    ready_timeout_secs: u64,
    /// PID of the server, to report its CPU use while broadcasts are delivered.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connect the publisher to this server instead (ws://HOST:PORT): another node of the
    /// same cluster, to measure delivery across the backplane.
    #[arg(long)]
    publish_url: Option<String>,
    /// Subscribers offer permessage-deflate (`permessage-deflate; client_max_window_bits`,
    /// as browsers do). Every `--inflate-every`th subscriber inflates what arrives compressed
    /// and records its latency and sequence; the others count compressed messages.
    #[arg(long)]
    deflate: bool,
    /// With `--deflate`: one subscriber in this many inflates and times its messages (1 =
    /// all: the load generator's one core then limits the measurement, not the server).
    #[arg(long, default_value_t = 10)]
    inflate_every: usize,
    /// Pad with realistic JSON (chat events) instead of a repeated byte.
    #[arg(long)]
    realistic: bool,
}

/// What one subscriber saw.
#[derive(Default)]
struct SubResult {
    latencies_ns: Vec<u64>,
    counts: Vec<u8>,
    unexpected: u64,
    last_rx_ns: u64,
    bytes_read: u64,
    /// Compressed messages counted without inflating (subscribers that do not inflate).
    compressed: u64,
    /// Whether this subscriber inflated and timed (every one without `--deflate`).
    timed: bool,
    error: Option<String>,
}

/// Counters the main task watches while subscribers run.
#[derive(Default)]
struct Progress {
    /// First deliveries of a (subscriber, seq) pair.
    unique: AtomicU64,
    /// Subscribers whose connection failed after it was up.
    failed: AtomicU64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.subscribers == 0 || args.messages == 0 {
        bail!("--subscribers and --messages must be at least 1");
    }
    if args.messages > u32::MAX as usize {
        bail!("--messages is too large");
    }
    let soft = super::common::raise_nofile(args.subscribers as u64 + 256);
    let target = Arc::new(Target::from_args(&args.common)?);
    println!(
        "fanout: {} subscribers, {} broadcasts of {} B every {} ms at {} (nofile {soft})",
        args.subscribers, args.messages, args.size, args.interval_ms, args.common.url
    );
    let baseline = target.stats().await?;
    if baseline != 0 {
        println!("  note: /stats showed {baseline} connections before the run");
    }

    // 1. Connect every subscriber; each starts reading right away.
    let connect_started = Instant::now();
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let mut gate = ConnectGate::new(&args.common);
    let spawner = {
        let target = Arc::clone(&target);
        let progress = Arc::clone(&progress);
        let (subscribers, messages, deflate) = (args.subscribers, args.messages, args.deflate);
        let inflate_every = args.inflate_every.max(1);
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(subscribers);
            for i in 0..subscribers {
                let Ok(permit) = gate.admit().await else {
                    break;
                };
                let target = Arc::clone(&target);
                let progress = Arc::clone(&progress);
                let ready_tx = ready_tx.clone();
                let stop_rx = stop_rx.clone();
                tasks.push(tokio::spawn(async move {
                    let path = format!("/ws/bench-sub-{i}");
                    let connected = target.connect_raw_offering(&path, deflate).await;
                    drop(permit);
                    match connected {
                        Ok(mut ws) => {
                            if ws.deflate() && i % inflate_every != 0 {
                                ws.skip_inflate();
                            }
                            let _ = ready_tx.send(Ok(())).await;
                            drop(ready_tx);
                            let write_timeout = target.io_timeout;
                            Some(subscribe(ws, messages, stop_rx, &progress, write_timeout).await)
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
    let mut up = 0_usize;
    while let Some(ready) = ready_rx.recv().await {
        match ready {
            Ok(()) => up += 1,
            Err(e) => connect_errors.push(e),
        }
    }
    let tasks = spawner.await?;
    let seen = if up > 0 {
        target
            // A lower bound: connections left over from an earlier run may still be counted.
            .wait_for_connections(up as u64, Duration::from_secs(args.ready_timeout_secs))
            .await
    } else {
        Ok(0)
    };
    println!(
        "  subscribers up: {up}/{} in {:.3} s ({} connect failures)",
        args.subscribers,
        connect_started.elapsed().as_secs_f64(),
        connect_errors.len()
    );
    let seen = match seen {
        Ok(seen) => seen,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    };
    if up == 0 {
        bail!(
            "no subscriber could connect: {}",
            connect_errors.first().map_or("", String::as_str)
        );
    }

    // 2. The publisher: one more connection, which receives its own broadcasts too.
    let publisher = match &args.publish_url {
        Some(url) => {
            let mut other = args.common.clone();
            other.url = url.clone();
            match Target::from_args(&other) {
                Ok(t) => t.connect("/ws/bench-publisher").await,
                Err(e) => Err(e),
            }
        }
        None => target.connect("/ws/bench-publisher").await,
    };
    let publisher = match publisher {
        Ok(ws) => ws,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    };
    let (mut sink, mut stream) = publisher.split();
    let mut publisher_stop = stop_tx.subscribe();
    let publisher_reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = publisher_stop.changed() => break,
                next = stream.next() => match next {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
    });
    if let Err(e) = target
        .wait_for_connections(up as u64 + 1, Duration::from_secs(args.ready_timeout_secs))
        .await
    {
        let _ = stop_tx.send(true);
        return Err(e);
    }
    println!(
        "  /stats: at least {} connections (subscribers + publisher; {seen} before the publisher)",
        up + 1
    );

    // 3. Publish at a fixed pace.
    let mut pace = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    pace.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let client_cpu = CpuMeter::start(None);
    let server_cpu = args.server_pid.map(|pid| CpuMeter::start(Some(pid)));
    let first_send_ns = now_ns();
    let publish_started = Instant::now();
    let mut publish_error = None;
    for seq in 0..args.messages {
        pace.tick().await;
        let mut text = format!(
            "{{\"type\":\"broadcast\",\"seq\":{seq},\"ts\":{},",
            now_ns()
        );
        if args.realistic {
            text.push_str("\"items\":");
            let fill = args.size.saturating_sub(text.len() + 1);
            text.push_str(&realistic_json(fill, seq as u64));
            text.push('}');
        } else {
            text.push_str("\"pad\":\"");
            let fill = args.size.saturating_sub(text.len() + 2);
            text.push_str(&pad(fill));
            text.push_str("\"}");
        }
        match timeout(target.io_timeout, sink.send(Message::text(text))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                publish_error = Some(format!("publish {seq}: {e}"));
                break;
            }
            Err(_) => {
                publish_error = Some(format!("publish {seq}: timed out"));
                break;
            }
        }
    }
    let publish_secs = publish_started.elapsed().as_secs_f64();

    // 4. Drain: wait (bounded) until every subscriber that is up has every message.
    let expected = (up * args.messages) as u64;
    let drain_deadline = Instant::now() + Duration::from_millis(args.drain_ms);
    while progress.unique.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (client_busy, server_busy) = (
        client_cpu.busy_percent(),
        server_cpu.and_then(|m| m.busy_percent()),
    );
    let _ = stop_tx.send(true);
    let _ = timeout(Duration::from_secs(1), sink.close()).await;
    let _ = timeout(Duration::from_secs(5), publisher_reader).await;

    // 5. Collect.
    let mut hist = latency_histogram()?;
    let (mut missing, mut duplicates, mut unexpected, mut deliveries) =
        (0_u64, 0_u64, 0_u64, 0_u64);
    let mut bytes_read = 0_u64;
    let mut untimed = 0_u64;
    let mut last_rx_ns = first_send_ns;
    let mut sub_errors = Vec::new();
    let collect = async {
        for task in tasks {
            match task.await {
                Ok(Some(result)) if !result.timed => {
                    // Counted, not inflated: no sequence numbers, only how many arrived.
                    let m = args.messages as u64;
                    missing += m.saturating_sub(result.compressed);
                    duplicates += result.compressed.saturating_sub(m);
                    deliveries += result.compressed;
                    untimed += 1;
                    bytes_read += result.bytes_read;
                    last_rx_ns = last_rx_ns.max(result.last_rx_ns);
                    if let Some(e) = result.error {
                        sub_errors.push(e);
                    }
                }
                Ok(Some(result)) => {
                    for &count in &result.counts {
                        match count {
                            0 => missing += 1,
                            n => duplicates += u64::from(n - 1),
                        }
                        deliveries += u64::from(count);
                    }
                    for &latency in &result.latencies_ns {
                        hist.saturating_record(latency.max(1));
                    }
                    unexpected += result.unexpected;
                    bytes_read += result.bytes_read;
                    last_rx_ns = last_rx_ns.max(result.last_rx_ns);
                    if let Some(e) = result.error {
                        sub_errors.push(e);
                    }
                }
                Ok(None) => {}
                Err(e) => sub_errors.push(format!("subscriber task failed: {e}")),
            }
        }
    };
    if timeout(Duration::from_secs(30), collect).await.is_err() {
        bail!("subscribers did not stop within 30 s");
    }
    let delivery_secs = last_rx_ns.saturating_sub(first_send_ns) as f64 / 1e9;
    let rate = if delivery_secs > 0.0 {
        deliveries as f64 / delivery_secs
    } else {
        0.0
    };
    let latency = Latency::of(&hist);
    println!("  published {} in {publish_secs:.3} s", args.messages);
    println!(
        "  deliveries: {deliveries}/{expected} in {delivery_secs:.3} s = {rate:.0} deliveries/s"
    );
    println!("  latency: {}", latency.line());
    if untimed > 0 {
        println!(
            "  latency of the {} subscribers that inflated (one in {}); the other {untimed} counted compressed messages without inflating",
            up as u64 - untimed,
            args.inflate_every.max(1)
        );
    }
    println!(
        "  bytes read by subscribers: {bytes_read} ({:.0} per delivery{})",
        bytes_read as f64 / deliveries.max(1) as f64,
        if args.deflate {
            ", deflate offered"
        } else {
            ""
        }
    );
    println!(
        "  CPU busy while publishing and draining: {}",
        cpu_line(client_busy, server_busy)
    );
    println!(
        "  missing: {missing}  duplicates: {duplicates}  unexpected: {unexpected}  failed subscribers: {}  connect failures: {}",
        sub_errors.len(),
        connect_errors.len()
    );
    let errors: Vec<&String> = publish_error
        .iter()
        .chain(&connect_errors)
        .chain(&sub_errors)
        .take(5)
        .collect();
    for e in &errors {
        println!("    error: {e}");
    }
    super::emit_json(
        args.common.json,
        &serde_json::json!({
            "workload": "fanout",
            "url": args.common.url,
            "subscribers": args.subscribers,
            "subscribers_up": up,
            "messages": args.messages,
            "interval_ms": args.interval_ms,
            "size": args.size,
            "payload": if args.realistic { "json" } else { "pad" },
            "deflate_offered": args.deflate,
            "bytes_read": bytes_read,
            "untimed_subscribers": untimed,
            "publish_s": round3(publish_secs),
            "expected": expected,
            "deliveries": deliveries,
            "delivery_s": round3(delivery_secs),
            "deliveries_per_s": rate.round(),
            "latency": latency,
            "client_cpu_percent": client_busy,
            "server_cpu_percent": server_busy,
            "missing": missing,
            "duplicates": duplicates,
            "unexpected": unexpected,
            "failed_subscribers": sub_errors.len(),
            "connect_failures": connect_errors.len(),
            "publish_error": publish_error,
            "errors": errors,
        }),
    );
    if publish_error.is_some() || !connect_errors.is_empty() || !sub_errors.is_empty() {
        bail!(
            "fanout failed: {} connect failures, {} subscribers lost, publish error: {}",
            connect_errors.len(),
            sub_errors.len(),
            publish_error.as_deref().unwrap_or("none")
        );
    }
    if missing > 0 || duplicates > 0 {
        bail!("fanout lost messages: {missing} missing, {duplicates} duplicates");
    }
    Ok(())
}

/// One subscriber: reads until told to stop or the connection fails. Every frame of one read
/// is stamped with the time that read returned.
async fn subscribe(
    mut ws: RawWs,
    messages: usize,
    mut stop: watch::Receiver<bool>,
    progress: &Progress,
    write_timeout: Duration,
) -> SubResult {
    let mut result = SubResult {
        latencies_ns: Vec::with_capacity(messages),
        counts: vec![0; messages],
        timed: true,
        ..SubResult::default()
    };
    loop {
        let filled = tokio::select! {
            biased;
            filled = ws.fill() => filled,
            _ = stop.changed() => break,
        };
        match filled {
            Ok(true) => {}
            Ok(false) => {
                result.error = Some("server closed a subscriber".to_owned());
                break;
            }
            Err(e) => {
                result.error = Some(format!("subscriber: {e}"));
                break;
            }
        }
        let rx_ns = now_ns();
        let mut closed = false;
        let drained = ws
            .drain(write_timeout, |frame| match frame {
                Frame::Text(text) => {
                    let probe = json_u64(text, b"seq").zip(json_u64(text, b"ts"));
                    match probe {
                        Some((seq, ts)) if (seq as usize) < messages => {
                            let slot = &mut result.counts[seq as usize];
                            if *slot == 0 {
                                progress.unique.fetch_add(1, Ordering::Relaxed);
                            }
                            *slot = slot.saturating_add(1);
                            result.latencies_ns.push(rx_ns.saturating_sub(ts));
                            result.last_rx_ns = rx_ns;
                        }
                        _ => result.unexpected += 1,
                    }
                }
                Frame::Compressed => {
                    result.timed = false;
                    result.compressed += 1;
                    if result.compressed <= messages as u64 {
                        progress.unique.fetch_add(1, Ordering::Relaxed);
                    }
                    result.last_rx_ns = rx_ns;
                }
                Frame::Close(_) => closed = true,
                Frame::Ping | Frame::Other => {}
            })
            .await;
        if let Err(e) = drained {
            result.error = Some(format!("subscriber: {e:#}"));
            break;
        }
        if closed {
            result.error = Some("server closed a subscriber (close frame)".to_owned());
            break;
        }
    }
    result.bytes_read = ws.bytes_read;
    if result.error.is_some() {
        progress.failed.fetch_add(1, Ordering::Relaxed);
    } else {
        // Best effort; the run is over.
        ws.close(Duration::from_millis(200)).await;
    }
    result
}
