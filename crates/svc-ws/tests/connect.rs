//! `svc-ws connect` as a process, against WebSocket servers on 127.0.0.1.

use std::{process::Stdio, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio::{io::AsyncWriteExt, net::TcpListener, process::Command};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

const STEP: Duration = Duration::from_secs(20);

/// A server that sends one binary message, then echoes; or closes at once with `close`.
async fn server(close: Option<(u16, &'static str)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                if let Some((code, reason)) = close {
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                } else {
                    let _ = ws.send(Message::binary(vec![0xde, 0xad])).await;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("ws://{addr}/")
}

async fn run(url: &str, args: &[&str], stdin: &str) -> std::process::Output {
    run_with(url, args, stdin, false).await
}

/// Runs `svc-ws connect`; with `keep_stdin_open` stdin stays open until the process exits.
async fn run_with(
    url: &str,
    args: &[&str],
    stdin: &str,
    keep_stdin_open: bool,
) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svc-ws"))
        .arg("connect")
        .arg(url)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    tokio::spawn(async move {
        let _ = input.write_all(stdin.as_bytes()).await;
        if keep_stdin_open {
            tokio::time::sleep(STEP).await;
        }
        // Dropping `input` closes stdin.
    });
    tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .expect("svc-ws connect did not exit")
        .unwrap()
}

#[tokio::test]
async fn pipes_stdin_out_and_messages_to_stdout() {
    let url = server(None).await;
    let out = run(
        &url,
        &["--json", "-H", "X-Test: 1"],
        "{\"a\":1}\nnot json\n[2]\n",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(stdout, "dead\n{\"a\":1}\n[2]\n");
    assert!(stderr.contains("not JSON"), "{stderr}");
}

#[tokio::test]
async fn exit_status_follows_the_close() {
    let url = server(Some((1000, "done"))).await;
    let out = run(&url, &[], "").await;
    assert!(out.status.success());

    // The server's close ends the program even while stdin is still open.
    let started = std::time::Instant::now();
    let out = run_with(&url, &[], "", true).await;
    assert!(out.status.success());
    assert!(started.elapsed() < Duration::from_secs(5));

    let url = server(Some((4001, "bye"))).await;
    let out = run(&url, &[], "").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4001 bye"), "{stderr}");

    let out = run("ws://127.0.0.1:1/", &[], "").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Failed to connect"));
}
