//! `svc-ws bench`: the load generator behind `docs/benchmarks.md`.
//!
//! It drives any server that speaks the bench_app protocol (`examples/bench_app.rs`,
//! `crates/svc-ws/examples/plain_axum.rs`, `bench/uws/server.js`):
//!
//! - `GET /ws/{user_id}` is a WebSocket; a text message whose JSON `"type"` is `"echo"` comes
//!   back unchanged to that connection only, `"broadcast"` goes unchanged to every connection
//!   (sender included), anything else is ignored;
//! - `GET /stats` answers `{"connections": N}`;
//! - `GET /echo` is a WebSocket that echoes every text and binary message.
//!
//! Workloads: `connect` (a reconnect storm: handshakes per second and handshake latency),
//! `echo` (round-trip rate and RTT percentiles), `fanout` (paced broadcasts to N subscribers:
//! delivery latency, missing and duplicate deliveries), `idle` (hold N connections; with
//! `--server-pid`, the server's RSS growth per connection) and `hostile` (stalled
//! handshakes, frames announced and never sent, a request flood). Each prints
//! human-readable lines and, with `--json`, one final JSON line with every figure. Every await
//! on the network has a timeout; a failed connection makes the run exit non-zero.

mod common;
mod connect;
mod echo;
mod fanout;
mod hostile;
mod idle;
mod raw;
mod reliability;
mod restart;

/// Arguments of `svc-ws bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, clap::Subcommand)]
enum Workload {
    /// Open N connections as fast as the server accepts them (a reconnect storm): the
    /// handshake rate and handshake latency percentiles.
    Connect(connect::Args),
    /// C connections × M sequential echo round trips each, all connections at once.
    Echo(echo::Args),
    /// N subscribers, one publisher sending M paced broadcasts; delivery latency and losses.
    Fanout(fanout::Args),
    /// Open and hold N idle connections (optionally reading the server's RSS).
    Idle(idle::Args),
    /// Hostile clients: stalled handshakes, announced-but-unsent frames, a request flood.
    Hostile(hostile::Args),
    /// A rolling restart: N connections on node A, SIGTERM to A, every client moves to node
    /// B; when A's closes came and how B's handshake rate ramped.
    Restart(restart::Args),
    /// Delivery to clients whose connections keep dropping (AnyCable's method): two
    /// gateways on a private Redis, rooms with history, recovery on or off.
    Reliability(reliability::Args),
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    match args.workload {
        Workload::Connect(args) => connect::run(args).await,
        Workload::Echo(args) => echo::run(args).await,
        Workload::Fanout(args) => fanout::run(args).await,
        Workload::Idle(args) => idle::run(args).await,
        Workload::Hostile(args) => hostile::run(args).await,
        Workload::Restart(args) => restart::run(args).await,
        Workload::Reliability(args) => reliability::run(args).await,
    }
}

/// Prints the final JSON line when asked to.
fn emit_json(enabled: bool, value: &serde_json::Value) {
    if enabled {
        println!("{value}");
    }
}
