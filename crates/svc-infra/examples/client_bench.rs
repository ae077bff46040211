//! Measures the client: echo round trips per second of one `WebSocketClient`, and the
//! memory one idle `WebSocketClient` connection costs (RSS growth per connection).
//!
//! Run with (the server in another process, so that the client's figures are its own):
//!
//! ```sh
//! cargo build --release -p svc-infra --example bench_app --example client_bench
//! target/release/examples/bench_app --port 3000 &
//! # Round trips of 1 KiB text messages for 10 s, with compression off, then on:
//! target/release/examples/client_bench echo ws://127.0.0.1:3000/echo --compression off
//! target/release/examples/client_bench echo ws://127.0.0.1:3000/echo --compression shared
//! # RSS growth per idle connection, over 1,000 connections:
//! target/release/examples/client_bench idle ws://127.0.0.1:3000/echo --connections 1000
//! ```
//!
//! Options: `--seconds S` (echo, default 10), `--size BYTES` (echo, default 1024),
//! `--compression off|shared` (default shared), `--connections N` (idle, default 1000).
//! Each run prints one line of JSON.

use std::time::{Duration, Instant};

use svc_infra::websocket::{Compression, WebSocketClient, WebSocketConfig};

struct Args {
    mode: String,
    url: String,
    seconds: u64,
    size: usize,
    compression: Compression,
    connections: usize,
}

fn args() -> Result<Args, String> {
    let mut raw = std::env::args().skip(1);
    let mode = raw
        .next()
        .ok_or("usage: client_bench echo|idle URL [options]")?;
    let url = raw.next().ok_or("missing URL")?;
    let mut args = Args {
        mode,
        url,
        seconds: 10,
        size: 1024,
        compression: Compression::Shared,
        connections: 1000,
    };
    while let Some(flag) = raw.next() {
        let value = raw.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--seconds" => args.seconds = number()?,
            "--size" => args.size = number()? as usize,
            "--connections" => args.connections = number()? as usize,
            "--compression" => {
                args.compression = match value.as_str() {
                    "off" => Compression::Off,
                    "shared" => Compression::Shared,
                    other => return Err(format!("--compression: {other:?} (off or shared)")),
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(args)
}

/// A JSON text message of `size` bytes, as a chat or event feed would send: field names
/// and words repeat, numbers vary.
fn payload(size: usize, seq: u64) -> String {
    let mut s = format!(r#"{{"type":"echo","seq":{seq},"items":["#);
    let mut i = 0u64;
    while s.len() < size {
        s.push_str(&format!(
            r#"{{"id":{},"user":"user-{}","text":"message {} for the room","ok":true}},"#,
            seq.wrapping_mul(31).wrapping_add(i),
            i % 17,
            i
        ));
        i += 1;
    }
    s.truncate(size.saturating_sub(2));
    s.push_str("]}");
    s
}

/// The process's resident set size in KiB (Linux `/proc/self/status`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

async fn echo(args: &Args, config: WebSocketConfig) -> Result<(), Box<dyn std::error::Error>> {
    let mut ws = WebSocketClient::builder(&args.url)
        .config(config)
        .no_proxy()
        .connect()
        .await?;
    let messages: Vec<String> = (0..64).map(|i| payload(args.size, i)).collect();
    // Warm up for a second, then count.
    let warm_until = Instant::now() + Duration::from_secs(1);
    let mut i = 0usize;
    while Instant::now() < warm_until {
        ws.send(messages[i % messages.len()].as_str()).await?;
        ws.recv().await?;
        i += 1;
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut round_trips = 0u64;
    while Instant::now() < until {
        let m = &messages[i % messages.len()];
        ws.send(m.as_str()).await?;
        let back = ws.recv().await?;
        if back.len() != m.len() {
            return Err(format!("echo of {} bytes came back as {}", m.len(), back.len()).into());
        }
        i += 1;
        round_trips += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    ws.close(1000, "").await?;
    println!(
        r#"{{"mode":"echo","compression":"{:?}","size":{},"seconds":{secs:.2},"round_trips":{round_trips},"per_sec":{:.0}}}"#,
        args.compression,
        args.size,
        round_trips as f64 / secs
    );
    Ok(())
}

async fn idle(args: &Args, config: WebSocketConfig) -> Result<(), Box<dyn std::error::Error>> {
    // One connection first, so that one-time costs (TLS roots, runtime, code pages) are
    // not counted per connection.
    let first = WebSocketClient::builder(&args.url)
        .config(config.clone())
        .no_proxy()
        .connect()
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib();
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(
            WebSocketClient::builder(&args.url)
                .config(config.clone())
                .no_proxy()
                .connect()
                .await?,
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    let open = clients.iter().filter(|c| c.is_connected()).count();
    println!(
        r#"{{"mode":"idle","compression":"{:?}","connections":{},"open":{open},"rss_before_kib":{before},"rss_after_kib":{after},"kib_per_connection":{:.2}}}"#,
        args.compression,
        args.connections,
        (after.saturating_sub(before)) as f64 / args.connections as f64
    );
    for c in &clients {
        let _ = c.close(1000, "").await;
    }
    drop(first);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let config = WebSocketConfig::default()
        .with_compression(args.compression)
        .with_max_queue_size(16);
    match args.mode.as_str() {
        "echo" => echo(&args, config).await,
        "idle" => idle(&args, config).await,
        other => Err(format!("unknown mode {other:?}: echo or idle").into()),
    }
}
