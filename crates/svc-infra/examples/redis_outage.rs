//! Measures what a Redis outage costs two nodes joined by `RedisBackplane`: how soon each
//! node notices, how long local delivery takes meanwhile, and how long after Redis answers
//! again a broadcast from one node reaches a client of the other. The outage is a hang
//! (`SIGSTOP`, then `SIGCONT`) or a death (`SIGKILL`, then a new `redis-server` on the same
//! port). It starts its own `redis-server` (from PATH) on a free port.
//!
//! Run with:
//! ```sh
//! scripts/redis_outage.sh      # hang and kill, 5 s and 60 s
//! cargo run --release -p svc-infra --features redis --example redis_outage -- stop 5 3
//! #   OUTAGE (stop|kill) SECONDS [ROUNDS, default 1]
//! ```
//!
//! "Resumed" is measured from `SIGCONT` (for a hang) or from the new server's first answer to
//! a PING (for a kill) to the first probe that arrives across nodes; probes go out every
//! 10 ms, so the figure is at most 10 ms late.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use axum::{Router, extract::Path, response::Response, routing::get};
use futures_util::StreamExt;
use svc_infra::websocket::{
    ConnectionManager, WebSocketConfig, WsManager, WsUpgrade, add_websocket_manager_with,
    backplane::{BackplaneStatus, RedisBackplane},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{Instant, sleep, timeout},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

type Error = Box<dyn std::error::Error>;
type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single network step of the measurement may take.
const STEP: Duration = Duration::from_secs(10);
/// How often a probe (or a local message) is sent.
const TICK: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, PartialEq)]
enum Outage {
    /// `SIGSTOP`, then `SIGCONT`.
    Stop,
    /// `SIGKILL`, then a new server on the same port.
    Kill,
}

/// A private `redis-server` on `port`.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    async fn start(port: u16) -> Result<Self, Error> {
        let mut redis = Self { port, child: None };
        redis.spawn().await?;
        Ok(redis)
    }

    /// Starts the server and returns when it first answers a PING.
    async fn spawn(&mut self) -> Result<Instant, Error> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start redis-server (is it on PATH?): {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers(Duration::from_millis(100)).await {
            if started.elapsed() > STEP {
                return Err("redis-server did not answer".into());
            }
            sleep(Duration::from_millis(2)).await;
        }
        Ok(Instant::now())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether a PING on a new connection is answered within `limit`.
    async fn answers(&self, limit: Duration) -> bool {
        let ping = async {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).await?;
            s.write_all(b"PING\r\n").await?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(&buf == b"+PONG\r\n")
        };
        matches!(timeout(limit, ping).await, Ok(Ok(true)))
    }

    fn signal(&self, signal: &str) -> Result<(), Error> {
        let pid = self.child.as_ref().ok_or("no redis-server")?.id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -{signal} {pid} failed").into());
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `/ws/{user}`: registers with the manager and reads until the connection ends.
async fn ws(ws: WsUpgrade, Path(user): Path<String>, WsManager(manager): WsManager) -> Response {
    ws.on_upgrade(move |socket| async move {
        let Ok(mut conn) = manager.connect(&user, socket).await else {
            return;
        };
        while let Some(Ok(_)) = conn.recv().await {}
    })
}

/// A node on `redis`, served on 127.0.0.1:0, and a client of it as `user`.
async fn node(redis: &Redis, user: &str) -> Result<(ConnectionManager, Client), Error> {
    let manager = ConnectionManager::builder(WebSocketConfig::default())
        .backplane(RedisBackplane::new(&redis.url())?)
        .build();
    let app =
        add_websocket_manager_with(Router::new().route("/ws/{user}", get(ws)), manager.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("ws://{addr}/ws/{user}");
    // No Nagle on the client either, as on the server: a pong must not hold back a read.
    let connect = tokio_tungstenite::connect_async_with_config(&url, None, true);
    let (client, _) = timeout(STEP, connect).await??;
    Ok((manager, client))
}

/// The next text message within `limit`, if any.
async fn text_within(ws: &mut Client, limit: Duration) -> Option<String> {
    let next = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    };
    timeout(limit, next).await.ok().flatten()
}

/// Broadcasts from `from` every [`TICK`] until `to` receives one: when it arrived.
async fn first_cross_node(from: &ConnectionManager, to: &mut Client) -> Result<Instant, Error> {
    let started = Instant::now();
    let mut n = 0u32;
    loop {
        if started.elapsed() > STEP * 6 {
            return Err("no cross-node delivery within a minute".into());
        }
        from.broadcast(format!("probe {n}")).await?;
        n += 1;
        if let Some(text) = text_within(to, TICK).await {
            if !text.starts_with("probe ") {
                return Err(format!("unexpected message across nodes: {text:?}").into());
            }
            return Ok(Instant::now());
        }
    }
}

/// Reads whatever is waiting on `ws` (probes that arrived after the first).
async fn drain(ws: &mut Client) {
    while text_within(ws, Duration::from_millis(100)).await.is_some() {}
}

/// One outage: the figures of one round.
struct Round {
    noticed: [Option<Duration>; 2],
    local_sends: u32,
    local_max: Duration,
    resumed: Duration,
}

async fn round(
    redis: &mut Redis,
    outage: Outage,
    length: Duration,
    (a, alice): (&ConnectionManager, &mut Client),
    (b, bob): (&ConnectionManager, &mut Client),
) -> Result<Round, Error> {
    // Connected and delivering across nodes before the outage.
    first_cross_node(a, bob).await?;
    drain(bob).await;
    drain(alice).await;

    match outage {
        Outage::Stop => redis.signal("STOP")?,
        Outage::Kill => redis.kill(),
    }
    let began = Instant::now();
    if redis.answers(Duration::from_millis(200)).await {
        return Err("Redis still answers: the outage did not happen".into());
    }
    let mut noticed = [None; 2];
    let (mut local_sends, mut local_max) = (0u32, Duration::ZERO);
    while began.elapsed() < length {
        let sent = Instant::now();
        a.broadcast(format!("local {local_sends}")).await?;
        match text_within(alice, Duration::from_secs(1)).await {
            Some(t) if t == format!("local {local_sends}") => {}
            other => return Err(format!("local delivery during the outage: {other:?}").into()),
        }
        local_max = local_max.max(sent.elapsed());
        local_sends += 1;
        for (seen, m) in noticed.iter_mut().zip([a, b]) {
            if seen.is_none() && m.backplane_status() == Some(BackplaneStatus::Disconnected) {
                *seen = Some(began.elapsed());
            }
        }
        // Reading also answers the server's pings, which keeps bob connected.
        if let Some(text) = text_within(bob, TICK).await {
            return Err(format!("crossed nodes during the outage: {text:?}").into());
        }
    }

    let back = match outage {
        Outage::Stop => {
            redis.signal("CONT")?;
            Instant::now()
        }
        Outage::Kill => redis.spawn().await?,
    };
    let arrived = first_cross_node(a, bob).await?;
    drain(bob).await;
    drain(alice).await;
    Ok(Round {
        noticed,
        local_sends,
        local_max,
        resumed: arrived.saturating_duration_since(back),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: redis_outage stop|kill SECONDS [ROUNDS]";
    let outage = match args.first().map(String::as_str) {
        Some("stop") => Outage::Stop,
        Some("kill") => Outage::Kill,
        _ => return Err(usage.into()),
    };
    let length = Duration::from_secs_f64(args.get(1).ok_or(usage)?.parse()?);
    let rounds: u32 = args.get(2).map_or(Ok(1), |r| r.parse())?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut redis = Redis::start(port).await?;
    let (a, mut alice) = node(&redis, "alice").await?;
    let (b, mut bob) = node(&redis, "bob").await?;
    let what = match outage {
        Outage::Stop => "hang (SIGSTOP)",
        Outage::Kill => "kill + restart",
    };
    let mut resumed = Vec::new();
    for i in 1..=rounds {
        let r = round(&mut redis, outage, length, (&a, &mut alice), (&b, &mut bob)).await?;
        let noticed = |n: Option<Duration>| n.map_or("never".to_owned(), ms);
        println!(
            "{what} {length:?}, round {i}: noticed by a {} / b {}; {} local sends, slowest {}; \
             cross-node delivery resumed {} after Redis answered again",
            noticed(r.noticed[0]),
            noticed(r.noticed[1]),
            r.local_sends,
            ms(r.local_max),
            ms(r.resumed),
        );
        resumed.push(r.resumed);
    }
    resumed.sort();
    println!(
        "{what} {length:?}: resumed after min {} / median {} / max {} ({rounds} rounds)",
        ms(resumed[0]),
        ms(resumed[resumed.len() / 2]),
        ms(resumed[resumed.len() - 1]),
    );
    Ok(())
}
