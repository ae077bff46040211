//! `svc-ws bench hostile`: what a hostile client does, measured from outside (the figures of
//! `docs/security.md`).
//!
//! - `stalled`: N TCP connections that send part of an upgrade request and then nothing
//!   (slowloris); reports when the server closed each one (its handshake timeout) and, with
//!   `--server-pid`, the server's RSS while they are open.
//! - `announce`: N upgraded connections that each announce a large frame (`--announce`
//!   bytes, 1 MiB by default) and then send one payload byte every `--byte-every-ms`; reports
//!   the server's RSS growth per connection before the announcement (idle) and after it, in
//!   the same run.
//! - `flood`: one connection sending echo requests at `--rate` per second (prebuilt frames,
//!   written in batches every millisecond or so, answers drained unparsed, so that the flood
//!   costs the load generator little) for `--secs`; run a `fanout` beside it to see what it
//!   does to other connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use svc_infra::websocket::protocol::{OP_BINARY, OP_TEXT, encode_masked_frame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::common::{CommonArgs, ConnectGate, Target, round3, rss_kib};

/// Arguments of `svc-ws bench hostile`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// What the hostile clients do.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Connections (stalled, announce).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    connections: usize,
    /// PID of the server, to read its VmRSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The path to upgrade; `{i}` becomes the connection's number (the gateway's is
    /// `/ws?user=h{i}`).
    #[arg(long, default_value = "/ws/hostile-{i}")]
    path: String,
    /// stalled: how long to wait for the server to close every connection, in seconds.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
    /// announce: the payload length each frame header announces.
    #[arg(long, default_value_t = 1024 * 1024)]
    announce: u64,
    /// announce: one payload byte every this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    byte_every_ms: u64,
    /// announce: pause before each RSS reading, in seconds.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// flood: echo requests per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// flood: how long, in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    Stalled,
    Announce,
    Flood,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let target = Arc::new(Target::from_args(&args.common)?);
    match args.mode {
        Mode::Stalled => stalled(&args, target).await,
        Mode::Announce => announce(&args, target).await,
        Mode::Flood => flood(&args, &target).await,
    }
}

/// Opens `n` TCP connections through the gate, each set up by `setup`; returns them with the
/// time each was opened.
async fn open_many<F, Fut>(
    args: &Args,
    target: &Arc<Target>,
    setup: F,
) -> anyhow::Result<Vec<(TcpStream, Instant)>>
where
    F: Fn(Arc<Target>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<TcpStream>> + Send + 'static,
{
    super::common::raise_nofile(args.connections as u64 + 256);
    let mut gate = ConnectGate::new(&args.common);
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = gate.admit().await?;
        let setup = setup.clone();
        let target = Arc::clone(target);
        tasks.push(tokio::spawn(async move {
            let tcp = setup(target, i).await;
            drop(permit);
            tcp.map(|tcp| (tcp, Instant::now()))
        }));
    }
    let mut open = Vec::with_capacity(tasks.len());
    for task in tasks {
        open.push(task.await??);
    }
    Ok(open)
}

async fn stalled(args: &Args, target: Arc<Target>) -> anyhow::Result<()> {
    let rss_before = args.server_pid.map(rss_kib).transpose()?;
    let started = Instant::now();
    let path = args.path.clone();
    let open = open_many(args, &target, move |target, i| {
        let path = path.replace("{i}", &i.to_string());
        async move {
            let mut tcp = target.tcp().await?;
            let request = target.upgrade_request(&path);
            // The request line and the first header, never the end of the headers.
            let cut = request.find("\r\nUpgrade").unwrap_or(request.len() / 2);
            tcp.write_all(&request.as_bytes()[..cut]).await?;
            Ok(tcp)
        }
    })
    .await?;
    let open_secs = started.elapsed().as_secs_f64();
    let rss_open = args.server_pid.map(rss_kib).transpose()?;
    println!(
        "stalled: {} connections opened in {open_secs:.3} s, each with a partial request",
        open.len()
    );
    let wait = Duration::from_secs(args.wait_secs);
    let waits: Vec<_> = open
        .into_iter()
        .map(|(mut tcp, opened)| {
            tokio::spawn(async move {
                let mut buf = [0_u8; 512];
                let closed = timeout(wait, async {
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                closed.ok().map(|()| opened.elapsed())
            })
        })
        .collect();
    let mut times = Vec::with_capacity(waits.len());
    let mut still_open = 0;
    for w in waits {
        match w.await? {
            Some(t) => times.push(t.as_secs_f64()),
            None => still_open += 1,
        }
    }
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q) as usize)
            .copied()
    };
    let (min, p50, max) = (pick(0.0), pick(0.5), pick(1.0));
    println!(
        "  closed by the server: {} (after min {:.3} s, median {:.3} s, max {:.3} s); still open after {} s: {still_open}",
        times.len(),
        min.unwrap_or(f64::NAN),
        p50.unwrap_or(f64::NAN),
        max.unwrap_or(f64::NAN),
        args.wait_secs
    );
    if let (Some(before), Some(open)) = (rss_before, rss_open) {
        let per = (open as f64 - before as f64) / args.connections as f64;
        println!("  server RSS: {before} KiB before, {open} KiB with all open ({per:.2} KiB each)");
    }
    let rss_after = args.server_pid.map(rss_kib).transpose()?;
    if let Some(after) = rss_after {
        println!("  server RSS once all were closed: {after} KiB");
    }
    super::emit_json(
        args.common.json,
        &serde_json::json!({
            "workload": "hostile-stalled",
            "connections": args.connections,
            "closed": times.len(),
            "still_open": still_open,
            "close_after_min_s": min.map(round3),
            "close_after_median_s": p50.map(round3),
            "close_after_max_s": max.map(round3),
            "server_rss_before_kib": rss_before,
            "server_rss_open_kib": rss_open,
            "server_rss_after_kib": rss_after,
        }),
    );
    ensure!(
        still_open == 0,
        "{still_open} stalled connections were not closed"
    );
    Ok(())
}

async fn announce(args: &Args, target: Arc<Target>) -> anyhow::Result<()> {
    let rss_before = args.server_pid.map(rss_kib).transpose()?;
    let path = args.path.clone();
    let open = open_many(args, &target, move |target, i| {
        let path = path.replace("{i}", &i.to_string());
        async move {
            let mut tcp = target.tcp().await?;
            tcp.write_all(target.upgrade_request(&path).as_bytes())
                .await?;
            let mut head = Vec::new();
            let mut byte = [0_u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                ensure!(head.len() < 4096, "upgrade response too long");
                timeout(Duration::from_secs(10), tcp.read_exact(&mut byte)).await??;
                head.push(byte[0]);
            }
            ensure!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
            Ok(tcp)
        }
    })
    .await?;
    let n = open.len() as f64;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_idle = args.server_pid.map(rss_kib).transpose()?;
    println!("announce: {} connections upgraded", open.len());

    // Every connection announces a binary frame of `announce` bytes and sends its first byte.
    let header = {
        let mut frame = encode_masked_frame(OP_BINARY, &[], [1, 2, 3, 4]).to_vec();
        frame.truncate(1); // FIN + opcode; the length follows
        frame.push(0x80 | 127);
        frame.extend_from_slice(&args.announce.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame
    };
    let every = Duration::from_millis(args.byte_every_ms.max(1));
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut drips = Vec::with_capacity(open.len());
    for (mut tcp, _) in open {
        let header = header.clone();
        let mut stop = stop.subscribe();
        drips.push(tokio::spawn(async move {
            tcp.write_all(&header).await?;
            let mut sent = 0_u64;
            let mut sink = [0_u8; 256];
            loop {
                tcp.write_all(&[0x42]).await?;
                sent += 1;
                tokio::select! {
                    _ = stop.changed() => return anyhow::Ok(sent),
                    () = tokio::time::sleep(every) => {}
                    // Whatever the server sends (pings) is read and dropped.
                    r = tcp.read(&mut sink) => if r? == 0 { bail!("server closed") },
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_announced = args.server_pid.map(rss_kib).transpose()?;
    let _ = stop.send(true);
    let mut closed = 0;
    for d in drips {
        if !matches!(d.await, Ok(Ok(_))) {
            closed += 1;
        }
    }
    let per = |rss: Option<u64>| match (rss_before, rss) {
        (Some(b), Some(a)) => Some(round3((a as f64 - b as f64) / n)),
        _ => None,
    };
    let (idle, announced) = (per(rss_idle), per(rss_announced));
    let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let show_f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    println!(
        "  server RSS: {} KiB before; {} KiB idle ({} KiB/conn); {} KiB with {} B announced and \
         a byte every {} ms ({} KiB/conn)",
        show(rss_before),
        show(rss_idle),
        show_f(idle),
        show(rss_announced),
        args.announce,
        args.byte_every_ms,
        show_f(announced)
    );
    println!("  connections the server closed meanwhile: {closed}");
    super::emit_json(
        args.common.json,
        &serde_json::json!({
            "workload": "hostile-announce",
            "connections": args.connections,
            "announce_bytes": args.announce,
            "server_rss_before_kib": rss_before,
            "server_rss_idle_kib": rss_idle,
            "server_rss_announced_kib": rss_announced,
            "idle_per_conn_kib": idle,
            "announced_per_conn_kib": announced,
            "closed": closed,
        }),
    );
    Ok(())
}

async fn flood(args: &Args, target: &Target) -> anyhow::Result<()> {
    ensure!(args.rate > 0, "--rate must be at least 1");
    let mut tcp = target.tcp().await?;
    tcp.set_nodelay(true)?;
    let path = args.path.replace("{i}", "flooder");
    tcp.write_all(target.upgrade_request(&path).as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        timeout(Duration::from_secs(10), tcp.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    ensure!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
    let (mut rd, mut wr) = tcp.into_split();
    let frame = encode_masked_frame(OP_TEXT, br#"{"type":"echo","n":1}"#, [9, 8, 7, 6]);
    // One batch per millisecond.
    let per_batch = (args.rate / 1000).max(1) as usize;
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * per_batch)
        .collect();
    let frame_len = frame.len() as u64;
    let drain = tokio::spawn(async move {
        let mut buf = vec![0_u8; 64 * 1024];
        let mut total = 0_u64;
        while let Ok(Ok(n)) = timeout(Duration::from_secs(2), rd.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let started = Instant::now();
    let end = started + Duration::from_secs(args.secs);
    let mut sent = 0_u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = started + Duration::from_secs(1);
    while Instant::now() < end {
        tick.tick().await;
        if Instant::now() >= report {
            // One line a second: a run cut short (killed when the measurement beside it is
            // done) still says what rate it reached.
            println!(
                "flood: {sent} sent in {:.1} s ({:.0}/s)",
                started.elapsed().as_secs_f64(),
                sent as f64 / started.elapsed().as_secs_f64()
            );
            report += Duration::from_secs(1);
        }
        let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
        if sent + per_batch as u64 > due {
            continue;
        }
        match timeout(target.io_timeout, wr.write_all(&batch)).await {
            Ok(Ok(())) => sent += per_batch as u64,
            Ok(Err(e)) => bail!("the server closed the flood after {sent} requests: {e}"),
            Err(_) => bail!("the server stopped reading the flood after {sent} requests"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = wr.shutdown().await;
    let received = drain.await?;
    println!(
        "flood: {sent} echo requests in {secs:.3} s ({:.0}/s); about {} answers back",
        sent as f64 / secs,
        received / frame_len.saturating_sub(4).max(1)
    );
    super::emit_json(
        args.common.json,
        &serde_json::json!({
            "workload": "hostile-flood",
            "sent": sent,
            "secs": round3(secs),
            "rate": round3(sent as f64 / secs),
            "received_bytes": received,
        }),
    );
    Ok(())
}
