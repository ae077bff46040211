//! `svc-ws connect URL`: a pipe/interactive WebSocket client, like websocat.
//!
//! Each stdin line is sent as a text message; each message received is written to stdout on
//! its own line: text as is, binary as lowercase hex. End of stdin (or Ctrl-C) closes the
//! connection with 1000 and exits 0 once the server answers. A normal close by the server
//! (1000, 1001, 1005) exits 0; any other end exits 1 with the close code and reason. Timeouts,
//! keepalive and size limits come from the `WS_*` environment variables.

use std::path::PathBuf;

use anyhow::Context as _;
use futures_util::StreamExt;
use svc_infra::websocket::{RootCertificate, WebSocketClient, WebSocketConfig, WebSocketMessage};
use tokio::{io::AsyncWriteExt, sync::mpsc};

/// Arguments of `svc-ws connect`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each stdin line is sent as a text message. Each message received is printed on its own line: \
text as is, binary as lowercase hex. End of stdin or Ctrl-C closes with 1000. \
Exit status: 0 after a normal close (1000, 1001, 1005), 1 otherwise. \
Timeouts, keepalive and size limits come from WS_* variables (see the svc-infra docs).")]
pub(crate) struct Args {
    /// The ws:// or wss:// URL.
    url: String,
    /// Extra request header `Name: value` (repeatable), e.g. `-H 'Authorization: Bearer …'`.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Subprotocol to offer (repeatable, in order of preference).
    #[arg(short = 'p', long = "subprotocol", value_name = "PROTOCOL")]
    subprotocols: Vec<String>,
    /// Only send stdin lines that are valid JSON (others are reported on stderr and skipped).
    #[arg(long)]
    json: bool,
    /// Trust the certificates in this PEM file as roots, for private CAs (repeatable).
    #[arg(long = "root-cert", value_name = "PEM_FILE")]
    root_certs: Vec<PathBuf>,
    /// Also trust the operating system's root certificates.
    #[arg(long)]
    native_roots: bool,
}

/// Stdin lines waiting to be sent; small, since the socket's own queue follows.
const STDIN_QUEUE: usize = 16;

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let config = WebSocketConfig::from_env().context("reading WS_* settings")?;
    let mut builder = WebSocketClient::builder(args.url.as_str())
        .config(config)
        .subprotocols(args.subprotocols)
        .native_roots(args.native_roots);
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header {header:?}: expected NAME:VALUE"))?;
        builder = builder.header(name.trim(), value.trim());
    }
    for path in &args.root_certs {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let certs = RootCertificate::from_pem(pem)
            .with_context(|| format!("reading certificates from {}", path.display()))?;
        builder = builder.root_certificates(certs);
    }

    let mut ws = builder.connect().await?;
    tracing::info!(url = %args.url, subprotocol = ?ws.subprotocol(), "connected");

    // Stdin is read on a plain thread: a blocked read must not hold up the runtime's exit.
    let (lines_tx, mut lines) = mpsc::channel::<String>(STDIN_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });

    let mut stdout = tokio::io::stdout();
    let mut stdin_open = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    loop {
        tokio::select! {
            item = ws.next() => match item {
                Some(Ok(message)) => {
                    stdout.write_all(render(&message).as_bytes()).await?;
                    stdout.flush().await?;
                }
                Some(Err(e)) => return Err(e).context("connection ended"),
                None => break,
            },
            line = lines.recv(), if stdin_open && ws.is_connected() => match line {
                Some(line) => {
                    if args.json && let Err(e) = serde_json::from_str::<serde_json::Value>(&line) {
                        eprintln!("not sent, not JSON ({e}): {line}");
                        continue;
                    }
                    ws.send(line).await.context("sending")?;
                }
                None => {
                    stdin_open = false;
                    ws.close(1000, "").await?;
                }
            },
            result = &mut ctrl_c, if !interrupted => {
                result?;
                interrupted = true;
                ws.close(1000, "").await?;
            }
        }
    }
    if let Some((code, reason)) = ws.close_status() {
        tracing::info!(code, reason, "closed");
    }
    Ok(())
}

/// A message as one output line: text as is, binary as lowercase hex.
fn render(message: &WebSocketMessage) -> String {
    let mut line = match message.as_text() {
        Some(text) => text.to_owned(),
        None => {
            use std::fmt::Write as _;
            let mut hex = String::with_capacity(message.len() * 2);
            for b in message.as_bytes() {
                let _ = write!(hex, "{b:02x}");
            }
            hex
        }
    };
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_and_hex() {
        assert_eq!(render(&WebSocketMessage::text("héllo")), "héllo\n");
        assert_eq!(
            render(&WebSocketMessage::binary(vec![0u8, 15, 255])),
            "000fff\n"
        );
    }
}
