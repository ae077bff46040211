//! Autobahn|Testsuite client driver: runs the fuzzing server's case loop with our
//! `WebSocketClient`, echoing every text and binary message. The client offers
//! permessage-deflate (the default `Compression::Shared`), so the compression cases 12.* and
//! 13.* run too.
//!
//! Run with:
//!
//! ```sh
//! cargo build --release -p svc-infra --example autobahn_client
//! ../shared/tools/autobahn client --exclude '12.*,13.*' -- target/release/examples/autobahn_client
//! ../shared/tools/autobahn client --cases '12.*,13.*' -- target/release/examples/autobahn_client
//! ```
//!
//! (`scripts/autobahn.sh client-full` runs every case; `scripts/autobahn.sh client`, CI's, most.)
//!
//! The runner starts the fuzzing server on 127.0.0.1 and sets `AUTOBAHN_URL` (default
//! `ws://127.0.0.1:9001`) and `AUTOBAHN_AGENT` (default `svc-infra`).

use std::time::Duration;

use svc_infra::websocket::{WebSocketClient, WebSocketConfig, WebSocketError};

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Cases 9.* send messages up to 16 MiB.
        .with_max_message_size(64 * 1024 * 1024)
        .with_ping_interval(None)
        .with_open_timeout(Duration::from_secs(30))
        .with_close_timeout(Duration::from_secs(5))
}

async fn connect(url: &str) -> Result<WebSocketClient, WebSocketError> {
    WebSocketClient::builder(url)
        .config(config())
        .connect()
        .await
}

/// Echoes until the connection ends; the end itself is the test's business.
async fn run_case(base: &str, case: u32, agent: &str) -> Result<(), WebSocketError> {
    let mut ws = connect(&format!("{base}/runCase?case={case}&agent={agent}")).await?;
    while let Ok(message) = ws.recv().await {
        if ws.send(message).await.is_err() {
            break;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("AUTOBAHN_URL").unwrap_or_else(|_| "ws://127.0.0.1:9001".into());
    let agent = std::env::var("AUTOBAHN_AGENT").unwrap_or_else(|_| "svc-infra".into());

    let mut ws = connect(&format!("{base}/getCaseCount")).await?;
    let count: u32 = ws
        .recv()
        .await?
        .as_text()
        .ok_or("getCaseCount: expected a text message")?
        .trim()
        .parse()?;
    let _ = ws.close(1000, "").await;
    eprintln!("autobahn_client: {count} cases");

    for case in 1..=count {
        if let Err(e) = run_case(&base, case, &agent).await {
            eprintln!("case {case}: {e}");
        }
    }

    let ws = connect(&format!("{base}/updateReports?agent={agent}")).await?;
    let _ = ws.close(1000, "").await;
    Ok(())
}
