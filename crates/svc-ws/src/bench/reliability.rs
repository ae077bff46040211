//! `svc-ws bench reliability`: how many messages reach clients whose connections keep
//! dropping, after AnyCable's method (`anycable/nodejs-websocket-bench`).
//!
//! The run is self-contained: a private `redis-server` on a free port (or `--redis-url`),
//! two gateways (this binary's `serve`, history in Redis), and in front of them a TCP
//! forwarder that sends each new connection to either gateway at random and cuts it (both
//! sockets dropped, no close frame) after a random lifetime around `--drop-every`. N
//! `GatewayClient`s, each in one of `--rooms` rooms, connect through it and reconnect after
//! about `--away` (their backoff); with recovery (the default) they re-join from their last
//! position. A publisher sends `--rate` messages per second per room through
//! `POST /api/publish`, alternating gateways, `--messages` per room. Once it is done the
//! cutting stops and the clients get `--settle` seconds to catch up.
//!
//! Reported: delivered % (messages of a client's room published successfully that it
//! received), duplicates the application saw (and those the client dropped), replay latency
//! (publish to receipt of the messages replayed after a re-join), `recovered: false` count,
//! and silent losses: messages neither received nor followed by a `Lost` event for the room.
//! `--restart-redis` kills Redis half-way and starts it again, empty, `--redis-down`
//! seconds later: publications fail meanwhile (the publisher is told: 503), and the clients
//! are told (`Lost`) that the old stream is gone; the new one is delivered from its start.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;
use svc_infra::websocket::{GatewayClient, GatewayEvent, WebSocketClient, WebSocketConfig};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    time::timeout,
};

use super::common::{Latency, latency_histogram, now_ns, raise_nofile, round3};

/// Arguments of `svc-ws bench reliability`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Clients.
    #[arg(short = 'n', long, default_value_t = 2_000)]
    clients: usize,
    /// Rooms (client i is in room i mod rooms).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Messages published per room.
    #[arg(long, default_value_t = 120)]
    messages: u64,
    /// Messages per second per room.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Mean lifetime of a connection before it is cut, in seconds (each one: uniform
    /// between half and one and a half times this).
    #[arg(long, default_value_t = 15.0)]
    drop_every: f64,
    /// How long a cut client stays away, in seconds (its reconnect backoff; ±50%).
    #[arg(long, default_value_t = 2.0)]
    away: f64,
    /// Seconds the clients get to catch up once the publisher is done (no more cuts).
    #[arg(long, default_value_t = 10.0)]
    settle: f64,
    /// Clients re-join at the current position instead of their last one (what a client
    /// without recovery gets).
    #[arg(long)]
    no_recovery: bool,
    /// Kill Redis half-way through the publications and start it again, empty.
    #[arg(long)]
    restart_redis: bool,
    /// With --restart-redis: how long Redis stays down, in seconds (publications fail
    /// meanwhile, and the publisher is told).
    #[arg(long, default_value_t = 2.0)]
    redis_down: f64,
    /// Use this Redis instead of starting a private one (not with --restart-redis).
    #[arg(long)]
    redis_url: Option<String>,
    /// Publications each room keeps (`WS_HISTORY_SIZE` of the gateways).
    #[arg(long, default_value_t = 100)]
    history_size: usize,
    /// Print one final JSON line with every figure.
    #[arg(long)]
    json: bool,
}

const API_KEY: &str = "bench-key-0123456789";

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_redis(port: u16) -> anyhow::Result<Proc> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start redis-server (is it installed? scripts/setup.sh installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Proc(child))
}

/// Starts `svc-ws serve --port 0` with the history in Redis; returns it and its address.
async fn start_gateway(redis_url: &str, history_size: usize) -> anyhow::Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["serve", "--port", "0"])
        .env("REDIS_URL", redis_url)
        .env("WS_GATEWAY_ANONYMOUS", "true")
        .env("WS_API_KEYS", format!("bench:{API_KEY}:"))
        .env("WS_HISTORY_SIZE", history_size.to_string())
        .env("WS_HISTORY_TTL", "600")
        .env("WS_MAX_CONNECTIONS_PER_USER", "0")
        .env("WS_MAX_QUEUE_SIZE", "256")
        .env_remove("AUTH_JWT__SECRET")
        .env_remove("AUTH_JWT_SECRET")
        .env_remove("JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the gateway")?;
    let stderr = child.stderr.take().context("the gateway's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                let addr = rest.split('/').next().unwrap_or_default();
                return Ok::<_, anyhow::Error>(addr.parse::<SocketAddr>()?);
            }
        }
        bail!("the gateway ended before it listened")
    })
    .await
    .context("the gateway did not start within 20 s")??;
    // Keep reading its log, or it blocks once the pipe is full.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((Proc(child), addr))
}

/// Waits until a gateway's backplane is connected.
async fn backplane_connected(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, body)) = http(addr, "GET", "/health", "").await
            && body.contains("\"backplane\":\"connected\"")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gateway at {addr} did not connect to Redis");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/1.1 request (`Connection: close`); the status and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    timeout(Duration::from_secs(5), async {
        let mut tcp = TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        Ok((status, body))
    })
    .await
    .context("HTTP request timed out")?
}

/// The forwarder: each connection to a random gateway, cut after a random lifetime while
/// `cutting` holds.
async fn forwarder(
    gateways: [SocketAddr; 2],
    drop_every: f64,
    cutting: Arc<AtomicBool>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = gateways[usize::from(rand::random::<bool>())];
            let lifetime = Duration::from_secs_f64(drop_every * (0.5 + rand::random::<f64>()));
            let cutting = cutting.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut server)) =
                    timeout(Duration::from_secs(5), TcpStream::connect(target)).await
                else {
                    return;
                };
                let pipe = tokio::io::copy_bidirectional(&mut client, &mut server);
                tokio::pin!(pipe);
                let cut_at = tokio::time::sleep(lifetime);
                tokio::pin!(cut_at);
                loop {
                    tokio::select! {
                        _ = &mut pipe => return,
                        () = &mut cut_at => {
                            if cutting.load(Ordering::Relaxed) {
                                return; // both sockets dropped
                            }
                            // Not cutting any more: let it live.
                            cut_at.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3600));
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// seq → times received (by the application).
    received: HashMap<u64, u32>,
    /// When each `Lost` came (ns since the Unix epoch).
    lost_at: Vec<u64>,
    /// Messages replayed to it, with their latency.
    replay_ns: Vec<u64>,
    live_ns: Vec<u64>,
    connected: bool,
    /// What its client dropped as already seen, and its connections.
    dropped_duplicates: u64,
    connections: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.clients == 0 || args.rooms == 0 || args.messages == 0 || args.rate <= 0.0 {
        bail!("--clients, --rooms, --messages and --rate must be positive");
    }
    if args.restart_redis && args.redis_url.is_some() {
        bail!("--restart-redis needs the private redis-server (no --redis-url)");
    }
    let soft = raise_nofile(3 * args.clients as u64 + 512);
    let recover = !args.no_recovery;
    println!(
        "reliability: {} clients in {} rooms, {} messages per room at {}/s, connections cut every ~{} s, away ~{} s, recovery {} (nofile {soft})",
        args.clients,
        args.rooms,
        args.messages,
        args.rate,
        args.drop_every,
        args.away,
        if recover { "on" } else { "off" },
    );

    // Redis and the two gateways.
    let redis_port = free_port()?;
    let mut redis = match &args.redis_url {
        Some(_) => None,
        None => Some(start_redis(redis_port).await?),
    };
    let redis_url = args
        .redis_url
        .clone()
        .unwrap_or_else(|| format!("redis://127.0.0.1:{redis_port}"));
    let (_a, a) = start_gateway(&redis_url, args.history_size).await?;
    let (_b, b) = start_gateway(&redis_url, args.history_size).await?;
    backplane_connected(a).await?;
    backplane_connected(b).await?;
    let cutting = Arc::new(AtomicBool::new(true));
    let front = forwarder([a, b], args.drop_every, cutting.clone()).await?;
    println!("  gateways {a} and {b} on {redis_url}; clients connect through {front}");

    // The clients.
    let mut config = WebSocketConfig::default();
    config.reconnect_backoff_base = Duration::from_secs_f64(args.away);
    config.reconnect_backoff_max = Duration::from_secs_f64(args.away);
    config.reconnect_jitter = 0.5;
    config.reconnect_max_attempts = 0;
    config.ping_interval = None;
    let seen: Vec<Arc<Mutex<Seen>>> = (0..args.clients).map(|_| Arc::default()).collect();
    let joined = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(args.clients);
    for (i, seen) in seen.iter().enumerate() {
        let url = format!("ws://{front}/ws?user=r{i}");
        let mut client = GatewayClient::with_recovery(
            WebSocketClient::builder(url).config(config.clone()),
            recover,
        );
        let room = format!("room-{}", i % args.rooms);
        client.join(&room);
        let (seen, joined) = (seen.clone(), joined.clone());
        let handle = tokio::spawn(async move {
            // Messages still to come from the replay after the last `Joined`.
            let mut replaying = 0u64;
            while let Some(event) = client.next_event().await {
                let now = now_ns();
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                let stats = client.stats();
                (s.dropped_duplicates, s.connections) =
                    (stats.duplicates_dropped, stats.connections);
                match event {
                    GatewayEvent::Joined { replayed, .. } => {
                        if !s.connected {
                            s.connected = true;
                            joined.fetch_add(1, Ordering::Relaxed);
                        }
                        replaying = replayed;
                    }
                    GatewayEvent::Lost { .. } => {
                        if !s.connected {
                            s.connected = true;
                            joined.fetch_add(1, Ordering::Relaxed);
                        }
                        s.lost_at.push(now);
                        replaying = 0;
                    }
                    GatewayEvent::Message { data, .. } => {
                        let (Some(seq), Some(sent)) = (data["seq"].as_u64(), data["at"].as_u64())
                        else {
                            continue;
                        };
                        *s.received.entry(seq).or_default() += 1;
                        let latency = now.saturating_sub(sent).max(1);
                        if replaying > 0 {
                            replaying -= 1;
                            s.replay_ns.push(latency);
                        } else {
                            s.live_ns.push(latency);
                        }
                    }
                    _ => {}
                }
            }
        });
        clients.push(handle);
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined.load(Ordering::Relaxed) < args.clients as u64 {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} clients joined within 60 s",
                joined.load(Ordering::Relaxed),
                args.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("  all {} clients joined", args.clients);

    // The publisher: `rate` per second per room, alternating gateways.
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    // seq → (room, published at ns) for the publications that succeeded.
    let mut published: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut refused = 0u64;
    let mut seq = 0u64;
    let half = args.messages / 2;
    let mut tick = tokio::time::interval(interval);
    let mut restarted = None;
    for round in 0..args.messages {
        tick.tick().await;
        if args.restart_redis && round == half {
            println!(
                "  killing Redis after {round} messages per room; it starts again, empty, in {} s",
                args.redis_down
            );
            drop(redis.take()); // killed on drop
            let down = Duration::from_secs_f64(args.redis_down);
            restarted = Some(tokio::spawn(async move {
                tokio::time::sleep(down).await;
                start_redis(redis_port).await
            }));
        }
        for room in 0..args.rooms {
            let at = now_ns();
            let body = json!({"room": format!("room-{room}"), "data": {"seq": seq, "at": at}});
            let gw = if seq.is_multiple_of(2) { a } else { b };
            match http(gw, "POST", "/api/publish", &body.to_string()).await {
                Ok((200, _)) => {
                    published.insert(seq, (room, at));
                }
                Ok((status, body)) => {
                    refused += 1;
                    if refused <= 3 {
                        println!("  publish refused ({status}): {}", body.trim());
                    }
                }
                Err(e) => {
                    refused += 1;
                    if refused <= 3 {
                        println!("  publish failed: {e:#}");
                    }
                }
            }
            seq += 1;
        }
    }
    if let Some(restarted) = restarted {
        redis = Some(restarted.await??);
    }
    let publish_secs = started.elapsed().as_secs_f64();
    cutting.store(false, Ordering::Relaxed);
    println!(
        "  published {} of {} in {publish_secs:.1} s ({refused} refused); settling for {} s",
        published.len(),
        seq,
        args.settle
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    drop(redis);

    // The count.
    let mut expected = 0u64;
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    let mut silent = 0u64;
    let mut lost_events = 0u64;
    let mut clients_with_loss = 0u64;
    let (mut dropped, mut connections) = (0u64, 0u64);
    let mut replay = latency_histogram()?;
    let mut live = latency_histogram()?;
    for (i, seen) in seen.iter().enumerate() {
        let room = i % args.rooms;
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        lost_events += s.lost_at.len() as u64;
        dropped += s.dropped_duplicates;
        connections += s.connections;
        let mut missed_any = false;
        for (seq, (r, at)) in &published {
            if *r != room {
                continue;
            }
            expected += 1;
            match s.received.get(seq) {
                Some(times) => {
                    delivered += 1;
                    duplicates += u64::from(*times - 1);
                }
                None => {
                    missed_any = true;
                    if !s.lost_at.iter().any(|lost| lost >= at) {
                        silent += 1;
                    }
                }
            }
        }
        clients_with_loss += u64::from(missed_any);
        for ns in &s.replay_ns {
            let _ = replay.record(*ns);
        }
        for ns in &s.live_ns {
            let _ = live.record(*ns);
        }
    }
    for handle in clients {
        handle.abort();
    }
    let percent = if expected == 0 {
        0.0
    } else {
        100.0 * delivered as f64 / expected as f64
    };
    let replay = Latency::of(&replay);
    let live = Latency::of(&live);
    println!(
        "  delivered {delivered} of {expected} ({:.2}%), duplicates {duplicates}, recovered:false {lost_events}, silent losses {silent}, clients that missed any {clients_with_loss}",
        (percent * 100.0).floor() / 100.0
    );
    println!(
        "  connections made {connections} ({:.1} per client); duplicates dropped by the clients {dropped}",
        connections as f64 / args.clients as f64
    );
    println!("  replay latency: {}", replay.line());
    println!("  live latency:   {}", live.line());
    super::emit_json(
        args.json,
        &json!({
            "workload": "reliability",
            "clients": args.clients,
            "rooms": args.rooms,
            "messages_per_room": args.messages,
            "rate_per_room": args.rate,
            "drop_every_s": args.drop_every,
            "away_s": args.away,
            "recovery": recover,
            "restart_redis": args.restart_redis,
            "published": published.len(),
            "refused": refused,
            "expected": expected,
            "delivered": delivered,
            "delivered_percent": round3(percent),
            "duplicates": duplicates,
            "duplicates_dropped_by_clients": dropped,
            "connections": connections,
            "recovered_false": lost_events,
            "silent_losses": silent,
            "clients_that_missed": clients_with_loss,
            "replay_latency": replay,
            "live_latency": live,
        }),
    );
    Ok(())
}
