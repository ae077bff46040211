//! `svc-ws`: the svc-infra-rs command line.
//!
//! Subcommands: `serve` (the gateway, `docs/protocol.md`), `connect` (an interactive / pipe
//! WebSocket client, like websocat), `bench` (the load generator behind
//! `docs/benchmarks.md`), `token` (development JWTs).
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//! `LOG_FORMAT=json`, one JSON object per line ([`logs`]).

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

mod bench;
mod connect;
mod logs;
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

fn main() -> ExitCode {
    // Before anything logs: a bad LOG_FORMAT stops here, in plain text.
    let format = match logs::LogFormat::from_env() {
        Ok(format) => format,
        Err(e) => {
            eprintln!("Error: {e:?}");
            return ExitCode::FAILURE;
        }
    };
    logs::init(format);
    match run(format) {
        Ok(code) => code,
        // As `main` returning the error would print it; a JSON log line in `json`.
        Err(e) => {
            match format {
                logs::LogFormat::Text => eprintln!("Error: {e:?}"),
                logs::LogFormat::Json => {
                    tracing::error!(target: logs::STATUS_TARGET, "{e:#}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn run(format: logs::LogFormat) -> anyhow::Result<ExitCode> {
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
            Command::Serve(args) => serve::run(args, matches.subcommand_matches("serve"), format)
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
