//! The load client of `scripts/soak.sh`: mixed traffic against the gateways of one cluster
//! (`svc-ws serve` nodes on one Redis) for a given time, then one JSON object on stdout with
//! everything it counted, for the script to hold against the gateways' `/metrics`.
//!
//! Run with: `cargo run --release -p svc-ws --example soak_load -- --gateway 127.0.0.1:8001
//! --gateway 127.0.0.1:8002 --api-key KEY --secs 60`, against gateways started with
//! `WS_GATEWAY_ANONYMOUS=true` and `WS_API_KEYS=soak:KEY` (`scripts/soak.sh` starts them).
//!
//! Who does what:
//!
//! - **Witnesses** (`w0`…, spread over the gateways) connect first and stay the whole run.
//!   Each is in two of the rooms `room-0`…, and publishes to them, sends to other witnesses,
//!   echoes, asks for presence, and joins and leaves a room of its own.
//! - **Churners** connect (`c{task}-{n}`, a new user each time, to a random gateway), join a
//!   shared room and a room of their own, make a few requests (publish, send, echo, presence,
//!   and two that must fail: an unknown type and a `broadcast` without its scope), then leave
//!   in one of three ways: a clean close after every answer, a dropped TCP connection after
//!   every answer, or a dropped TCP connection with answers still owed (those requests are
//!   counted as abandoned, not as missing).
//! - **Non-readers** (`nr{j}`, at fixed points of the run) connect with a 4 KiB receive
//!   buffer, join `sink-{j}` and never read; a feeder on the same gateway publishes 16 KiB
//!   messages to that room until the room is empty, i.e. the gateway has closed the
//!   non-reader as a slow consumer (1013). Then the non-reader reads what reached it.
//! - **HTTP**: `POST /api/publish` to rooms (some with `exclude`), to one witness, to
//!   everyone, and two that must fail: both `to` and `room` (400) and no key (401).
//!
//! Exact delivery: every message that can reach a witness carries a unique key in its data
//! (`{"k": 17}`), entered in a ledger before it is sent with the witnesses it must reach.
//! Once the gateway has acknowledged it (an `ack`, or HTTP 200), each of those witnesses must
//! get it exactly once, and no other witness may. A loss where sender and witness are on the
//! same gateway is never allowed; a loss across gateways is reported with the time the
//! message was sent, because sends between gateways are dropped while Redis is away (the
//! script restarts it in the middle) and the script checks that they fall in that window.
//! Churners are not counted this way: what reaches a connection that is going away is lost
//! by design.
//!
//! Every await on the network has a timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// TCP connect plus WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One write, one HTTP exchange, or a close handshake.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the answers it is owed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last send, how long the witnesses keep reading before deliveries are counted.
const SETTLE: Duration = Duration::from_secs(5);
/// The size of a message to a non-reader's room.
const SINK_PAYLOAD: usize = 16 * 1024;
/// The receive buffer of a non-reader's socket, so that its queue fills in seconds.
const NON_READER_RCVBUF: u32 = 4096;
/// How long a feeder keeps publishing before it calls the non-reader an error.
const FEED_LIMIT: Duration = Duration::from_secs(60);
/// Where in the run the non-readers arrive (fractions of `--secs`, in turn; the gateways take
/// turns): the first two early, so that `soak.sh`'s warm-up (the first 10% of a 600 s run, 25%
/// of a short one) has seen the slow-consumer path on both gateways, and two later.
const NON_READER_AT: [f64; 4] = [0.05, 0.08, 0.55, 0.85];

type Ws = WebSocketStream<TcpStream>;

/// Mixed load against two (or more) gateways; prints what it counted as JSON.
#[derive(Debug, Parser)]
struct Args {
    /// A gateway's address (host:port); give it once per gateway.
    #[arg(long = "gateway", required = true)]
    gateways: Vec<SocketAddr>,
    /// An API key of the gateways (`WS_API_KEYS`), for `POST /api/publish`.
    #[arg(long)]
    api_key: String,
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Stable clients whose deliveries are counted exactly.
    #[arg(long, default_value_t = 8)]
    witnesses: usize,
    /// Shared rooms (each witness is in two of them).
    #[arg(long, default_value_t = 4)]
    rooms: usize,
    /// Concurrent connect/disconnect loops.
    #[arg(long, default_value_t = 24)]
    churners: usize,
    /// Clients that never read (at most 4, at 5%, 8%, 55% and 85% of the run).
    #[arg(long, default_value_t = 4)]
    non_readers: usize,
    /// Time between two requests of one witness, in ms.
    #[arg(long, default_value_t = 250)]
    witness_interval_ms: u64,
    /// Time between two `POST /api/publish`, in ms.
    #[arg(long, default_value_t = 100)]
    http_interval_ms: u64,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A small xorshift generator: the load needs varied choices, not good randomness.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn room_name(room: usize) -> String {
    format!("room-{room}")
}

/// What one witness is.
struct Witness {
    user: String,
    gateway: usize,
    rooms: [usize; 2],
}

/// A message that witnesses must get once it is acknowledged.
struct Expected {
    kind: &'static str,
    sent_ms: u64,
    /// (witness, whether it is on another gateway than the sender).
    targets: Vec<(usize, bool)>,
    acked: bool,
    got: Vec<usize>,
}

/// Counters by name, errors by kind.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

/// What every task shares.
struct Soak {
    args: Args,
    witnesses: Vec<Witness>,
    tally: Mutex<Tally>,
    ledger: Mutex<HashMap<u64, Expected>>,
    next_key: Mutex<u64>,
    /// Set when the witnesses may start sending.
    go: AtomicBool,
    /// Set at the end of the run: no new requests.
    stop_sending: AtomicBool,
    /// Set after the settle time: witnesses close.
    stop_reading: AtomicBool,
    ready: AtomicUsize,
}

impl Soak {
    fn count(&self, name: impl Into<String>, n: u64) {
        let mut t = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        *t.counts.entry(name.into()).or_default() += n;
    }

    fn error(&self, kind: impl Into<String>) {
        let kind = kind.into();
        eprintln!("soak_load: error: {kind}");
        let mut t = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        *t.errors.entry(kind).or_default() += 1;
    }

    /// Enters a message in the ledger before it is sent; `targets` are witnesses.
    fn expect(
        &self,
        kind: &'static str,
        gateway: usize,
        targets: impl IntoIterator<Item = usize>,
    ) -> u64 {
        let key = {
            let mut k = self.next_key.lock().unwrap_or_else(PoisonError::into_inner);
            *k += 1;
            *k
        };
        let targets = targets
            .into_iter()
            .map(|w| (w, self.witnesses[w].gateway != gateway))
            .collect();
        let entry = Expected {
            kind,
            sent_ms: unix_ms(),
            targets,
            acked: false,
            got: Vec::new(),
        };
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, entry);
        key
    }

    fn acked(&self, key: u64) {
        if let Some(e) = self
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&key)
        {
            e.acked = true;
        }
    }

    fn delivered(&self, key: u64, witness: usize) {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        match ledger.get_mut(&key) {
            Some(e) => e.got.push(witness),
            None => {
                drop(ledger);
                self.error("a message with a key never sent");
            }
        }
    }

    /// Witnesses in `room`, but `except`.
    fn room_witnesses(&self, room: usize, except: Option<usize>) -> Vec<usize> {
        (0..self.witnesses.len())
            .filter(|&w| self.witnesses[w].rooms.contains(&room) && Some(w) != except)
            .collect()
    }

    fn sending(&self) -> bool {
        !self.stop_sending.load(Ordering::Relaxed)
    }
}

/// A request waiting for its answer.
struct Pending {
    kind: &'static str,
    key: Option<u64>,
    expect_error: bool,
}

/// One WebSocket connection speaking the gateway's protocol.
struct Session {
    soak: Arc<Soak>,
    ws: Ws,
    witness: Option<usize>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// The users of the last `presence` answer.
    presence: Vec<String>,
    /// Why the connection ended, once it has.
    ended: Option<String>,
}

impl Session {
    async fn open(
        soak: &Arc<Soak>,
        gateway: usize,
        user: &str,
        witness: Option<usize>,
    ) -> Option<Self> {
        let addr = soak.args.gateways[gateway];
        let attempt = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let url = format!("ws://{addr}/ws?user={user}");
            let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
            anyhow::Ok(ws)
        };
        match timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(ws)) => {
                soak.count("ws.opened", 1);
                Some(Self {
                    soak: soak.clone(),
                    ws,
                    witness,
                    next_id: 0,
                    pending: HashMap::new(),
                    presence: Vec::new(),
                    ended: None,
                })
            }
            Ok(Err(e)) => {
                soak.error(format!("connect: {e}"));
                None
            }
            Err(_) => {
                soak.error("connect: timed out");
                None
            }
        }
    }

    /// Sends `body` with a fresh `id`; its answer is then owed.
    async fn request(
        &mut self,
        kind: &'static str,
        mut body: Value,
        key: Option<u64>,
        expect_error: bool,
    ) -> bool {
        self.next_id += 1;
        let id = self.next_id;
        body["id"] = id.into();
        self.pending.insert(
            id,
            Pending {
                kind,
                key,
                expect_error,
            },
        );
        self.soak.count(format!("sent.{kind}"), 1);
        match timeout(IO_TIMEOUT, self.ws.send(Message::text(body.to_string()))).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.end(format!("send: {e}"));
                false
            }
            Err(_) => {
                self.end("send: timed out".to_owned());
                false
            }
        }
    }

    /// Reads until `deadline`; false once the connection has ended.
    async fn read_until(&mut self, deadline: Instant) -> bool {
        while self.ended.is_none() {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return true,
                Ok(None) => self.end("end of stream".to_owned()),
                Ok(Some(Err(e))) => self.end(format!("read: {e}")),
                Ok(Some(Ok(message))) => self.handle(message),
            }
        }
        false
    }

    async fn read_for(&mut self, d: Duration) -> bool {
        self.read_until(Instant::now() + d).await
    }

    /// Reads in short slices while `go_on()` holds; false once the connection has ended.
    async fn read_while(&mut self, go_on: impl Fn() -> bool) -> bool {
        while go_on() {
            if !self.read_for(Duration::from_millis(50)).await {
                return false;
            }
        }
        true
    }

    /// Reads until every owed answer has come; those that do not come in time are errors.
    async fn settle(&mut self) {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while !self.pending.is_empty() && Instant::now() < deadline {
            if !self.read_for(Duration::from_millis(50)).await {
                break;
            }
        }
        for p in std::mem::take(&mut self.pending).into_values() {
            self.soak.error(format!("answer missing: {}", p.kind));
        }
    }

    fn end(&mut self, why: String) {
        if self.ended.is_none() {
            self.ended = Some(why);
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Text(text) => {
                self.soak.count("frames.received", 1);
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) => self.answer(&v),
                    Err(_) => self.soak.error("a frame that is not JSON"),
                }
            }
            Message::Close(frame) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                self.end(format!("close {code}"));
            }
            Message::Binary(_) => self.soak.error("a binary frame"),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    fn answer(&mut self, v: &Value) {
        let soak = self.soak.clone();
        let kind = v["type"].as_str().unwrap_or_default();
        match kind {
            "ack" | "error" | "echo" | "presence" => {
                let Some(p) = v["id"].as_u64().and_then(|id| self.pending.remove(&id)) else {
                    return soak.error(format!("{kind} without a request waiting for it"));
                };
                soak.count(format!("answers.{kind}"), 1);
                match (kind, p.expect_error) {
                    ("error", true) => soak.count("answers.expected_errors", 1),
                    ("error", false) => {
                        let why = v["error"].as_str().unwrap_or_default();
                        let why: String = why.chars().take(40).collect();
                        soak.error(format!("error answer to {}: {why}", p.kind));
                    }
                    (_, true) => soak.error(format!("{kind} answer to a bad {}", p.kind)),
                    ("ack", false) => {
                        if let Some(key) = p.key {
                            soak.acked(key);
                        }
                    }
                    ("presence", false) => {
                        self.presence = v["users"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|u| u.as_str().map(str::to_owned))
                            .collect();
                    }
                    _ => {}
                }
            }
            "message" => {
                let to = if v.get("room").is_some() {
                    "room"
                } else {
                    "user"
                };
                soak.count(format!("messages.{to}"), 1);
                if let Some(key) = v["data"]["k"].as_u64() {
                    if let Some(w) = self.witness {
                        soak.delivered(key, w);
                    }
                } else if v["data"].get("sink").is_some() {
                    soak.count("messages.sink", 1);
                }
            }
            _ => soak.error(format!("a frame of type {kind:?}")),
        }
    }

    /// The close handshake, then the end of the stream.
    async fn close(mut self) {
        if self.ended.is_some() {
            return;
        }
        let done = async {
            self.ws.close(None).await?;
            while let Some(m) = self.ws.next().await {
                if let Message::Text(_) = m? {
                    self.soak.count("frames.received", 1);
                }
            }
            anyhow::Ok(())
        };
        match timeout(IO_TIMEOUT, done).await {
            Ok(Ok(())) => self.soak.count("closes.clean", 1),
            Ok(Err(e)) => self.soak.error(format!("close: {e}")),
            Err(_) => self.soak.error("close: timed out"),
        }
    }

    /// Drops the TCP connection, owed answers or not.
    fn drop_tcp(self) {
        self.soak.count("closes.dropped", 1);
        self.soak
            .count("abandoned_requests", self.pending.len() as u64);
    }

    /// The end of a connection that should have stayed open: an error.
    fn check_open(&self, who: &str) -> bool {
        match &self.ended {
            None => true,
            Some(why) => {
                self.soak.error(format!("{who} lost its connection: {why}"));
                false
            }
        }
    }
}

/// A stable client: joins its rooms, then makes a request every interval and reads
/// everything, until the end of the run.
async fn witness(soak: Arc<Soak>, w: usize) {
    let me = &soak.witnesses[w];
    let Some(mut s) = Session::open(&soak, me.gateway, &me.user, Some(w)).await else {
        return;
    };
    for r in me.rooms {
        s.request(
            "join",
            json!({"type": "join", "room": room_name(r)}),
            None,
            false,
        )
        .await;
    }
    s.settle().await;
    soak.ready.fetch_add(1, Ordering::Relaxed);
    s.read_while(|| !soak.go.load(Ordering::Relaxed)).await;

    let mut rng = Rng::new(soak.args.seed ^ ((w as u64 + 1) << 32));
    let interval = Duration::from_millis(soak.args.witness_interval_ms.max(1));
    let mut next = Instant::now() + interval;
    let own_room = format!("own-{}", me.user);
    while soak.sending() && s.read_until(next).await {
        next += interval;
        let ok = match rng.below(10) {
            0..=4 => {
                let r = me.rooms[rng.below(2)];
                let key = soak.expect("ws_publish", me.gateway, soak.room_witnesses(r, Some(w)));
                let body = json!({"type": "publish", "room": room_name(r), "data": {"k": key}});
                s.request("publish", body, Some(key), false).await
            }
            5 | 6 => {
                let to = (w + 1 + rng.below(soak.witnesses.len() - 1)) % soak.witnesses.len();
                let key = soak.expect("ws_send", me.gateway, [to]);
                let user = &soak.witnesses[to].user;
                let body = json!({"type": "send", "to": user, "data": {"k": key}});
                s.request("send", body, Some(key), false).await
            }
            7 => {
                let body = json!({"type": "echo", "data": {"n": rng.below(1000)}});
                s.request("echo", body, None, false).await
            }
            8 => {
                let body = json!({"type": "presence", "room": room_name(me.rooms[0])});
                s.request("presence", body, None, false).await
            }
            _ => {
                let join = json!({"type": "join", "room": own_room});
                s.request("join", join, None, false).await
                    && s.request(
                        "leave",
                        json!({"type": "leave", "room": own_room}),
                        None,
                        false,
                    )
                    .await
            }
        };
        if !ok {
            break;
        }
    }
    s.read_while(|| !soak.stop_reading.load(Ordering::Relaxed))
        .await;
    if s.check_open(&format!("witness {}", me.user)) {
        s.settle().await;
        s.close().await;
    }
}

/// Connects, makes a few requests, leaves (three ways), again, until the end of the run.
async fn churner(soak: Arc<Soak>, c: usize) {
    let mut rng = Rng::new(soak.args.seed ^ ((c as u64 + 1) << 40));
    let gateways = soak.args.gateways.len();
    let mut n = 0_u64;
    while soak.sending() {
        n += 1;
        let gateway = rng.below(gateways);
        let Some(mut s) = Session::open(&soak, gateway, &format!("c{c}-{n}"), None).await else {
            sleep(Duration::from_millis(500)).await;
            continue;
        };
        let r = rng.below(soak.args.rooms);
        let own = format!("tmp-{c}-{n}");
        let mut alive = s
            .request(
                "join",
                json!({"type": "join", "room": room_name(r)}),
                None,
                false,
            )
            .await
            && s.request("join", json!({"type": "join", "room": own}), None, false)
                .await;
        for _ in 0..1 + rng.below(6) {
            if !alive
                || !s
                    .read_for(Duration::from_millis(rng.below(400) as u64))
                    .await
            {
                break;
            }
            alive = match rng.below(10) {
                0..=3 => {
                    let key = soak.expect("ws_publish", gateway, soak.room_witnesses(r, None));
                    let body = json!({"type": "publish", "room": room_name(r), "data": {"k": key}});
                    s.request("publish", body, Some(key), false).await
                }
                4 => {
                    let to = rng.below(soak.witnesses.len());
                    let key = soak.expect("ws_send", gateway, [to]);
                    let user = &soak.witnesses[to].user;
                    let body = json!({"type": "send", "to": user, "data": {"k": key}});
                    s.request("send", body, Some(key), false).await
                }
                5 => {
                    let body = json!({"type": "echo", "data": "churn"});
                    s.request("echo", body, None, false).await
                }
                6 => {
                    let body = json!({"type": "presence", "room": room_name(r)});
                    s.request("presence", body, None, false).await
                }
                7 => {
                    let body = json!({"type": "publish", "room": own, "data": "alone"});
                    s.request("publish", body, None, false).await
                }
                8 => {
                    let body = json!({"type": "fly"});
                    s.request("bad_type", body, None, true).await
                }
                _ => {
                    let body = json!({"type": "broadcast", "data": "no scope"});
                    s.request("broadcast_without_scope", body, None, true).await
                }
            };
        }
        if !s.check_open("a churner") {
            continue;
        }
        match rng.below(4) {
            0 | 1 => {
                s.settle().await;
                s.close().await;
            }
            2 => {
                s.settle().await;
                s.drop_tcp();
            }
            _ => s.drop_tcp(),
        }
    }
}

/// A client that never reads, and the feeder that fills its queue until the gateway closes
/// it.
async fn non_reader(soak: Arc<Soak>, j: usize, start: Instant) {
    let at = NON_READER_AT[j % NON_READER_AT.len()];
    tokio::time::sleep_until(start + Duration::from_secs_f64(soak.args.secs as f64 * at)).await;
    let gateway = j % soak.args.gateways.len();
    let addr = soak.args.gateways[gateway];
    let (user, room) = (format!("nr{j}"), format!("sink-{j}"));
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(NON_READER_RCVBUF)?;
        let tcp = socket.connect(addr).await?;
        let url = format!("ws://{addr}/ws?user={user}");
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
        let join = json!({"type": "join", "room": room}).to_string();
        ws.send(Message::text(join)).await?;
        anyhow::Ok(ws)
    };
    let mut ws = match timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return soak.error(format!("non-reader connect: {e}")),
        Err(_) => return soak.error("non-reader connect: timed out"),
    };
    soak.count("ws.opened", 1);
    soak.count("non_readers.opened", 1);

    let Some(mut feeder) = Session::open(&soak, gateway, &format!("feed{j}"), None).await else {
        return;
    };
    let present = |f: &Session| f.presence.contains(&user);
    let presence = json!({"type": "presence", "room": room});
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        feeder
            .request("presence", presence.clone(), None, false)
            .await;
        feeder.settle().await;
        if present(&feeder) || Instant::now() > deadline || feeder.ended.is_some() {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    if !present(&feeder) {
        soak.error("the non-reader's join did not arrive");
    }
    let payload = "x".repeat(SINK_PAYLOAD);
    let deadline = Instant::now() + FEED_LIMIT;
    let mut closed = false;
    while !closed && Instant::now() < deadline && feeder.ended.is_none() {
        for _ in 0..8 {
            let body = json!({"type": "publish", "room": room, "data": {"sink": payload}});
            feeder.request("sink_publish", body, None, false).await;
        }
        feeder
            .request("presence", presence.clone(), None, false)
            .await;
        feeder.settle().await;
        closed = !present(&feeder);
        sleep(Duration::from_millis(20)).await;
    }
    if closed {
        soak.count("non_readers.closed_by_gateway", 1);
    } else {
        soak.error("a non-reader was not closed after a minute of messages");
    }
    if feeder.check_open("a feeder") {
        feeder.close().await;
    }

    // What reached the non-reader before the gateway let it go, and how it ended.
    let mut frames = 0;
    let outcome = loop {
        match timeout(IO_TIMEOUT, ws.next()).await {
            Err(_) => break "still open".to_owned(),
            Ok(None) => break "end of stream".to_owned(),
            Ok(Some(Err(e))) => break format!("read error ({e})"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                break format!("close {}", frame.map_or(1005, |f| u16::from(f.code)));
            }
            Ok(Some(Ok(Message::Text(_)))) => frames += 1,
            Ok(Some(Ok(_))) => {}
        }
    };
    soak.count("frames.received", frames);
    soak.count("non_readers.frames_read", frames);
    if outcome == "still open" {
        soak.error("a non-reader is still open after its feed");
    }
    soak.count(format!("non_readers.ended.{outcome}"), 1);
}

/// `POST /api/publish` with `body`, with the key or without; (status, body).
async fn http_publish(
    addr: SocketAddr,
    key: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let auth = key.map_or_else(String::new, |k| format!("X-API-Key: {k}\r\n"));
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = timeout(IO_TIMEOUT, exchange).await.context("timed out")??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Ok((status, body))
}

/// Publishes over HTTP every interval until the end of the run.
async fn http(soak: Arc<Soak>) {
    let mut rng = Rng::new(soak.args.seed ^ 0xDEAD_BEEF);
    let gateways = soak.args.gateways.len();
    let interval = Duration::from_millis(soak.args.http_interval_ms.max(1));
    while soak.sending() {
        sleep(interval).await;
        let gateway = rng.below(gateways);
        let key_for = |targets: Vec<usize>| soak.expect("http", gateway, targets);
        let (kind, body, key, want, auth): (&str, Value, Option<u64>, u16, bool) =
            match rng.below(20) {
                0..=8 => {
                    let r = rng.below(soak.args.rooms);
                    let key = key_for(soak.room_witnesses(r, None));
                    let body = json!({"room": room_name(r), "data": {"k": key}});
                    ("room", body, Some(key), 200, true)
                }
                9..=11 => {
                    let r = rng.below(soak.args.rooms);
                    let members = soak.room_witnesses(r, None);
                    let skip = members[rng.below(members.len())];
                    let key = key_for(soak.room_witnesses(r, Some(skip)));
                    let user = &soak.witnesses[skip].user;
                    let body = json!({"room": room_name(r), "exclude": user, "data": {"k": key}});
                    ("room_exclude", body, Some(key), 200, true)
                }
                12..=15 => {
                    let to = rng.below(soak.witnesses.len());
                    let key = key_for(vec![to]);
                    let body = json!({"to": soak.witnesses[to].user, "data": {"k": key}});
                    ("user", body, Some(key), 200, true)
                }
                16 => {
                    let key = key_for((0..soak.witnesses.len()).collect());
                    (
                        "everyone",
                        json!({"data": {"k": key}}),
                        Some(key),
                        200,
                        true,
                    )
                }
                17 | 18 => {
                    let body = json!({"to": "w0", "room": "room-0", "data": 1});
                    ("both_to_and_room", body, None, 400, true)
                }
                _ => ("no_key", json!({"data": 1}), None, 401, false),
            };
        let addr = soak.args.gateways[gateway];
        let api_key = auth.then_some(soak.args.api_key.as_str());
        soak.count(format!("http.sent.{kind}"), 1);
        match http_publish(addr, api_key, &body.to_string()).await {
            Ok((status, answer)) => {
                soak.count(format!("http.status.{status}"), 1);
                if status != want {
                    soak.error(format!("http {kind}: status {status}, expected {want}"));
                    continue;
                }
                if let Some(key) = key {
                    soak.acked(key);
                }
                if kind == "user" {
                    // Exact: the one connection of that witness, if it is on this gateway.
                    let to = body["to"].as_str().unwrap_or_default();
                    let here = soak
                        .witnesses
                        .iter()
                        .any(|w| w.user == to && w.gateway == gateway);
                    if answer["delivered"].as_u64() != Some(u64::from(here)) {
                        soak.error(format!("http user: delivered {}", answer["delivered"]));
                    }
                }
            }
            Err(e) => soak.error(format!("http {kind}: {e:#}")),
        }
    }
}

/// Waits for a task, at most `within`.
async fn join(task: JoinHandle<()>, within: Duration, soak: &Soak, what: &str) {
    match timeout(within, task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => soak.error(format!("{what} task failed: {e}")),
        Err(_) => soak.error(format!("{what} task did not end in {within:?}")),
    }
}

/// The ledger's verdict, as JSON.
fn deliveries(soak: &Soak) -> Value {
    let ledger = soak.ledger.lock().unwrap_or_else(PoisonError::into_inner);
    let (mut expected, mut delivered, mut lost_local, mut lost_cross) =
        (0_u64, 0_u64, 0_u64, 0_u64);
    let (mut duplicates, mut misdelivered, mut unacked, mut unacked_delivered) = (0, 0, 0, 0);
    let mut cross_window: Option<(u64, u64)> = None;
    let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for e in ledger.values() {
        let mut got = e.got.clone();
        got.sort_unstable();
        let before = got.len();
        got.dedup();
        duplicates += before - got.len();
        misdelivered += got
            .iter()
            .filter(|w| !e.targets.iter().any(|(t, _)| t == *w))
            .count();
        if !e.acked {
            unacked += 1;
            unacked_delivered += got.len();
            continue;
        }
        let kind = by_kind.entry(e.kind).or_default();
        for &(w, cross) in &e.targets {
            expected += 1;
            kind.0 += 1;
            if got.contains(&w) {
                delivered += 1;
                kind.1 += 1;
            } else if cross {
                lost_cross += 1;
                let (lo, hi) = cross_window.unwrap_or((e.sent_ms, e.sent_ms));
                cross_window = Some((lo.min(e.sent_ms), hi.max(e.sent_ms)));
            } else {
                lost_local += 1;
            }
        }
    }
    let by_kind: BTreeMap<&str, Value> = by_kind
        .into_iter()
        .map(|(k, (e, d))| (k, json!({"expected": e, "delivered": d})))
        .collect();
    json!({
        "keys": ledger.len(),
        "expected": expected,
        "delivered": delivered,
        "lost_local": lost_local,
        "lost_cross": lost_cross,
        "lost_cross_first_sent_ms": cross_window.map(|w| w.0),
        "lost_cross_last_sent_ms": cross_window.map(|w| w.1),
        "duplicates": duplicates,
        "misdelivered": misdelivered,
        "unacked_keys": unacked,
        "unacked_delivered": unacked_delivered,
        "by_kind": by_kind,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.witnesses >= 2, "--witnesses must be at least 2");
    anyhow::ensure!(args.rooms >= 1, "--rooms must be at least 1");
    let gateways = args.gateways.len();
    let rooms = args.rooms;
    let witnesses = (0..args.witnesses)
        .map(|w| Witness {
            user: format!("w{w}"),
            gateway: w % gateways,
            rooms: [w % rooms, (w + 1) % rooms],
        })
        .collect();
    let soak = Arc::new(Soak {
        args,
        witnesses,
        tally: Mutex::default(),
        ledger: Mutex::default(),
        next_key: Mutex::new(0),
        go: AtomicBool::new(false),
        stop_sending: AtomicBool::new(false),
        stop_reading: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
    });
    let started_ms = unix_ms();

    let witness_tasks: Vec<_> = (0..soak.witnesses.len())
        .map(|w| tokio::spawn(witness(soak.clone(), w)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while soak.ready.load(Ordering::Relaxed) < soak.witnesses.len() && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    if soak.ready.load(Ordering::Relaxed) < soak.witnesses.len() {
        soak.error("not every witness joined its rooms in 30 s");
    }
    // Room subscriptions reach Redis asynchronously after the join's ack.
    sleep(Duration::from_secs(2)).await;
    soak.go.store(true, Ordering::Relaxed);
    let start = Instant::now();
    eprintln!(
        "soak_load: witnesses in place; load for {} s",
        soak.args.secs
    );

    let mut senders: Vec<JoinHandle<()>> = (0..soak.args.churners)
        .map(|c| tokio::spawn(churner(soak.clone(), c)))
        .collect();
    senders.push(tokio::spawn(http(soak.clone())));
    senders.extend(
        (0..soak.args.non_readers.min(NON_READER_AT.len()))
            .map(|j| tokio::spawn(non_reader(soak.clone(), j, start))),
    );

    tokio::time::sleep_until(start + Duration::from_secs(soak.args.secs)).await;
    soak.stop_sending.store(true, Ordering::Relaxed);
    let limit = FEED_LIMIT + IO_TIMEOUT + ANSWER_TIMEOUT * 3;
    for task in senders {
        join(task, limit, &soak, "sender").await;
    }
    sleep(SETTLE).await;
    soak.stop_reading.store(true, Ordering::Relaxed);
    for task in witness_tasks {
        join(task, ANSWER_TIMEOUT + IO_TIMEOUT * 2, &soak, "witness").await;
    }

    let tally = std::mem::take(&mut *soak.tally.lock().unwrap_or_else(PoisonError::into_inner));
    let report = json!({
        "started_ms": started_ms,
        "ended_ms": unix_ms(),
        "secs": soak.args.secs,
        "gateways": soak.args.gateways.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "witnesses": soak.witnesses.len(),
        "churners": soak.args.churners,
        "non_readers": soak.args.non_readers.min(NON_READER_AT.len()),
        "counts": tally.counts,
        "errors": tally.errors,
        "deliveries": deliveries(&soak),
    });
    println!("{report:#}");
    Ok(())
}
