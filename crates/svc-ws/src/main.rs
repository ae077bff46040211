//! `svc-ws`: the svc-infra-rs command line.
//!
//! Subcommands: `serve` (the gateway, `docs/protocol.md`), `connect` (an interactive / pipe
//! WebSocket client, like websocat), `bench` (the load generator behind
//! `docs/benchmarks.md`), `token` (development JWTs).

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

mod bench;
mod connect;
mod serve;
mod token;

#[derive(Debug, Parser)]
#[command(name = "svc-ws", version, about = "svc-infra-rs WebSocket tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: /ws with the JSON protocol of docs/protocol.md, /health, /ws/stats.
    Serve(serve::Args),
    /// Print a development JWT signed with the server's secret (AUTH_JWT__SECRET).
    Token(token::Args),
    /// Connect to a WebSocket URL: stdin lines go out, messages come out on stdout.
    Connect(connect::Args),
    /// Load generator: echo, fanout and idle workloads against a bench_app-style server.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Parsed by hand rather than with `Cli::parse()`: `serve --print-config` tells where each
    // value came from (flag, environment or default).
    let matches = Cli::command().get_matches();
    let cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args, matches.subcommand_matches("serve"))
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Token(args) => token::run(args).map(|()| ExitCode::SUCCESS),
            Command::Connect(args) => connect::run(args).await,
            Command::Bench(args) => bench::run(args).await.map(|()| ExitCode::SUCCESS),
        }
    })
}
