//! `svc-ws serve` and `svc-ws token` as processes: what only the real binary can show (the
//! printed address, the flags and variables it reads, exit codes, SIGTERM). The gateway's
//! protocol, endpoints and clustering are tested in process in
//! `crates/svc-infra/tests/gateway.rs`.

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

const STEP: Duration = Duration::from_secs(10);
const SECRET: &str = "a-test-secret-that-is-long-enough-32b";

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A running gateway; killed on drop.
struct Gateway {
    child: tokio::process::Child,
    addr: String,
    /// The line it printed when it started listening.
    line: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `svc-ws serve --port 0 ARGS` with only `env` of the variables the gateway reads.
fn serve_command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_svc-ws"));
    cmd.args(["serve", "--port", "0"])
        .args(args)
        .env_remove("AUTH_JWT__SECRET")
        .env_remove("AUTH_JWT_SECRET")
        .env_remove("JWT_SECRET")
        .env_remove("REDIS_URL")
        .env_remove("APP_ENV")
        .env_remove("WS_GATEWAY_ANONYMOUS")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts `svc-ws serve --port 0 ARGS` with `env` and reads the address it prints.
async fn gateway(args: &[&str], env: &[(&str, &str)]) -> Gateway {
    let mut child = serve_command(args, env)
        .spawn()
        .expect("spawn svc-ws serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, line) = within("the listening line", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                return (rest.split('/').next().unwrap().to_owned(), line);
            }
        }
        panic!("svc-ws serve exited before listening");
    })
    .await;
    // Keep draining stderr so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Gateway { child, addr, line }
}

/// Runs `svc-ws serve --port 0 ARGS` with `env`, expecting it to fail at startup.
async fn failing(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let Output { status, stderr, .. } = within("exit", serve_command(args, env).output())
        .await
        .unwrap();
    (status.code(), String::from_utf8_lossy(&stderr).into_owned())
}

async fn connect(gw: &Gateway, query: &str) -> Ws {
    let url = format!("ws://{}/ws{query}", gw.addr);
    within("connect", tokio_tungstenite::connect_async(&url))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        match within("next message", ws.next()).await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// `GET path` by hand; returns the JSON body of a 200.
async fn get(gw: &Gateway, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within("http", tokio::net::TcpStream::connect(&gw.addr))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    within("http request", tcp.write_all(req.as_bytes()))
        .await
        .unwrap();
    let mut response = String::new();
    within("http response", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

/// Waits until `n` connections are registered on `gw` (the handshake answer comes before
/// the registration).
async fn registered(gw: &Gateway, n: u64) {
    within(&format!("{n} connections registered"), async {
        while get(gw, "/ws/stats").await["local_connections"] != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[test]
fn token_needs_a_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_svc-ws"))
        .args(["token", "--sub", "x"])
        .env_remove("AUTH_JWT__SECRET")
        .env_remove("AUTH_JWT_SECRET")
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret"));
}

/// The printed line says what the flags and variables made of the gateway.
#[tokio::test]
async fn the_listening_line_follows_flags_and_env() {
    let anonymous = "(anonymous connections allowed, single node, in memory)";
    let cases: [(&[&str], &[(&str, &str)], &str); 5] = [
        (&[], &[], anonymous),
        (
            &[],
            &[("AUTH_JWT__SECRET", SECRET)],
            "(credentials required, single node, in memory)",
        ),
        (
            &[],
            &[
                ("AUTH_JWT__SECRET", SECRET),
                ("WS_GATEWAY_ANONYMOUS", "true"),
            ],
            anonymous,
        ),
        (
            &["--anonymous", "false"],
            &[],
            "(credentials required, single node, in memory)",
        ),
        // No Redis there: the backplane keeps trying in the background.
        (
            &["--redis-url", "redis://127.0.0.1:1"],
            &[],
            "(anonymous connections allowed, Redis backplane)",
        ),
    ];
    for (args, env, expected) in cases {
        let gw = gateway(args, env).await;
        assert!(
            gw.line
                .starts_with("svc-ws serve: listening on ws://127.0.0.1:"),
            "{}",
            gw.line
        );
        assert!(gw.line.ends_with(expected), "{args:?} {env:?}: {}", gw.line);
        assert_ne!(gw.addr, "127.0.0.1:0", "the chosen port is printed");
    }
}

/// A token minted by `svc-ws token` opens `/ws` on `svc-ws serve` with the same secret, and
/// its subject is the user.
#[tokio::test]
async fn a_token_from_svc_ws_token_is_accepted() {
    let gw = gateway(&[], &[("AUTH_JWT__SECRET", SECRET)]).await;
    let out = Command::new(env!("CARGO_BIN_EXE_svc-ws"))
        .args([
            "token",
            "--sub",
            "root",
            "--ttl",
            "10m",
            "--scope",
            "broadcast",
        ])
        .env("AUTH_JWT__SECRET", SECRET)
        .output()
        .expect("svc-ws token");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let mut ws = connect(&gw, &format!("?token={}&user=mallory", token.trim())).await;
    let request = json!({"type": "broadcast", "data": "hi", "id": 1}).to_string();
    within("send", ws.send(Message::text(request)))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "message", "from": "root", "data": "hi"})
    );
    assert_eq!(next(&mut ws).await, json!({"type": "ack", "id": 1}));
}

/// Bad configuration exits with 1 and names what is wrong; bad flags are usage errors (2).
#[tokio::test]
async fn bad_configuration_exits_with_1_and_bad_flags_with_2() {
    for (env, says) in [
        (
            ("WS_PING_TIMEOUT", "-1"),
            ["WS_* configuration", "WS_PING_TIMEOUT"],
        ),
        (
            ("APP_ENV", "production"),
            ["AUTH_JWT_* configuration", "no JWT secret"],
        ),
        (("REDIS_URL", "not-a-url"), ["REDIS_URL", "redis://"]),
    ] {
        let (code, stderr) = failing(&[], &[env]).await;
        assert_eq!(code, Some(1), "{env:?}: {stderr}");
        for s in says {
            assert!(stderr.contains(s), "{env:?}: {stderr}");
        }
    }
    let (code, stderr) = failing(&["--anonymous", "maybe"], &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = failing(&[], &[("WS_GATEWAY_ANONYMOUS", "1")]).await;
    assert_eq!(code, Some(2), "{stderr}");
}

/// SIGTERM (what a container runtime sends) closes every connection with 1012, as
/// docs/protocol.md says, and the process exits with 0.
#[tokio::test]
async fn sigterm_closes_connections_with_1012() {
    let mut gw = gateway(&[], &[]).await;
    let mut alice = connect(&gw, "?user=alice").await;
    registered(&gw, 1).await;
    let pid = gw.child.id().expect("running").to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    loop {
        match within("close frame", alice.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1012);
                assert_eq!(frame.reason.as_str(), "service restart");
                // Keep reading so the client's close reply goes out and the server's drain
                // ends at once.
                while let Some(Ok(_)) = within("end of stream", alice.next()).await {}
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected the close frame, got {other:?}"),
        }
    }
    let exit = within("exit", gw.child.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
}
