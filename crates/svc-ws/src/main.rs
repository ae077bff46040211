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
    // value came from (flag, environment or default), and a bad value that clap read from a
    // flag's variable names that variable.
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches()
        .unwrap_or_else(|e| with_env_tip(e, &command).exit());
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

/// clap names the flag when a value it read from a flag's environment variable is bad
/// (`invalid value '1' for '--anonymous <ANONYMOUS>'`); add which variable held it.
fn with_env_tip(mut error: clap::Error, command: &clap::Command) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return error;
    }
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // `--anonymous <ANONYMOUS>`: the flag comes first.
    let flag = invalid.split_whitespace().next().unwrap_or_default();
    let from_env = command
        .get_subcommands()
        .flat_map(clap::Command::get_arguments)
        .find_map(|arg| {
            let var = arg.get_env()?;
            let long = format!("--{}", arg.get_long()?);
            if long != flag {
                return None;
            }
            let given = argv
                .iter()
                .any(|a| *a == long || a.starts_with(&format!("{long}=")));
            (!given && std::env::var_os(var).is_some()).then(|| var.to_string_lossy().into_owned())
        });
    if let Some(var) = from_env {
        error.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![
                format!("the value comes from the environment variable {var}").into(),
            ]),
        );
    }
    error
}
