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
    let mut with_port = vec!["--port", "0"];
    with_port.extend_from_slice(args);
    serve_command_as_is(&with_port, env)
}

/// `svc-ws serve ARGS` with only `env` of the variables the gateway reads.
fn serve_command_as_is(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_svc-ws"));
    cmd.arg("serve").args(args);
    // The test runner's own settings must not leak in (a shell's HOST, say).
    for name in std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()) {
        if name.to_ascii_uppercase().starts_with("WS_")
            || name.starts_with("AUTH_JWT")
            || name.starts_with("JWT_")
            || [
                "REDIS_URL",
                "APP_ENV",
                "RAILWAY_ENVIRONMENT_NAME",
                "HOST",
                "PORT",
            ]
            .contains(&name.as_str())
        {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_LOG", "warn")
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
    let Output {
        status,
        stdout,
        stderr,
    } = within(
        "exit",
        serve_command(args, env).stdout(Stdio::piped()).output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        "",
        "{args:?} {env:?}: {stderr}"
    );
    (status.code(), stderr)
}

/// `svc-ws serve ARGS --print-config` with `env`: exit status, stdout, stderr.
async fn print_config(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = within(
        "--print-config to exit",
        serve_command_as_is(args, env)
            .arg("--print-config")
            .stdout(Stdio::piped())
            .output(),
    )
    .await
    .unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Asserts that each of `lines` is a whole line of `out`.
#[track_caller]
fn assert_lines(out: &str, lines: &[&str]) {
    for line in lines {
        assert!(out.lines().any(|l| l == *line), "{line:?} not in\n{out}");
    }
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
/// `--print-config` fails the same way and prints nothing.
#[tokio::test]
async fn bad_configuration_exits_with_1_and_bad_flags_with_2() {
    for args in [&[][..], &["--print-config"]] {
        for (env, says) in [
            (
                ("WS_PING_TIMEOUT", "-1"),
                [
                    "WS_* configuration",
                    r#"invalid WS_PING_TIMEOUT="-1": expected a finite number > 0 (seconds), or none/null/empty/0 to disable"#,
                ],
            ),
            (
                ("APP_ENV", "production"),
                ["AUTH_JWT_* configuration", "no JWT secret"],
            ),
            (("REDIS_URL", "not-a-url"), ["REDIS_URL", "redis://"]),
        ] {
            let (code, stderr) = failing(args, &[env]).await;
            assert_eq!(code, Some(1), "{args:?} {env:?}: {stderr}");
            for s in says {
                assert!(stderr.contains(s), "{args:?} {env:?}: {stderr}");
            }
        }
        let mut with_flag = args.to_vec();
        with_flag.extend(["--anonymous", "maybe"]);
        let (code, stderr) = failing(&with_flag, &[]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("[possible values: true, false]"),
            "{stderr}"
        );
        // clap reads this one: the message names the variable too.
        let (code, stderr) = failing(args, &[("WS_GATEWAY_ANONYMOUS", "1")]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(
                "tip: the value comes from the environment variable WS_GATEWAY_ANONYMOUS"
            ) && stderr.contains("[possible values: true, false]"),
            "{stderr}"
        );
        // Given as a flag, the value is not blamed on the variable.
        let mut with_flag = args.to_vec();
        with_flag.extend(["--anonymous=maybe"]);
        let (code, stderr) = failing(&with_flag, &[("WS_GATEWAY_ANONYMOUS", "1")]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(!stderr.contains("WS_GATEWAY_ANONYMOUS"), "{stderr}");
    }
}

/// `--print-config` prints every setting with where it came from, never a secret, and
/// exits without listening (the port it is given is taken, and it still succeeds).
#[tokio::test]
async fn print_config_shows_the_settings_but_no_secret() {
    let taken = within("bind", tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let api_key = "k3y-that-must-not-show";
    let redis_password = "redis-pw-that-must-not-show";
    let keys = format!("billing:{api_key}:publish read");
    let redis_url = format!("redis://:{redis_password}@127.0.0.1:1/0");
    let (code, stdout, stderr) = print_config(
        &["--port", &port],
        &[
            ("AUTH_JWT__SECRET", SECRET),
            ("WS_API_KEYS", &keys),
            ("REDIS_URL", &redis_url),
            ("WS_PING_TIMEOUT", "5"),
            ("WS_GATEWAY_REQUEST_RATE", "50"),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let secret_line = format!("AUTH_JWT__SECRET=<redacted, {} bytes>  # env", SECRET.len());
    let port_line = format!("PORT={port}  # flag");
    assert_lines(
        &stdout,
        &[
            &port_line,
            "HOST=127.0.0.1  # default",
            &secret_line,
            "JWT_SECRET=  # default",
            "WS_API_KEYS=billing:<redacted>:publish read  # env",
            "REDIS_URL=redis://:****@127.0.0.1:1/0  # env",
            "WS_GATEWAY_ANONYMOUS=false  # default, a JWT key is configured",
            "WS_GATEWAY_REQUEST_RATE=50  # env",
            "WS_PING_TIMEOUT=5  # env",
            "WS_PING_INTERVAL=20  # default",
            "WS_MAX_MESSAGE_SIZE=1048576  # default",
            "WS_ALLOWED_ORIGINS=*  # default",
        ],
    );
    for secret in [SECRET, api_key, redis_password] {
        assert!(!stdout.contains(secret), "{secret} in stdout:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} in stderr:\n{stderr}");
    }
    assert!(!stderr.contains("listening"), "{stderr}");
    drop(taken);
}

/// A flag beats its variable, and the printed value and source show it.
#[tokio::test]
async fn print_config_shows_a_flag_over_the_environment() {
    let (code, stdout, stderr) = print_config(
        &[
            "--port",
            "0",
            "--admin-scope",
            "root",
            "--anonymous",
            "true",
            "--redis-url",
            "redis://:flag-pw@127.0.0.1:2",
        ],
        &[
            ("PORT", "9000"),
            ("WS_GATEWAY_ADMIN_SCOPE", "ops"),
            ("WS_GATEWAY_BROADCAST_SCOPE", "announce"),
            ("AUTH_JWT__SECRET", SECRET),
            ("REDIS_URL", "redis://127.0.0.1:1"),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_lines(
        &stdout,
        &[
            "PORT=0  # flag, any free port",
            "WS_GATEWAY_ADMIN_SCOPE=root  # flag",
            "WS_GATEWAY_BROADCAST_SCOPE=announce  # env",
            "WS_GATEWAY_ANONYMOUS=true  # flag",
            "REDIS_URL=redis://:****@127.0.0.1:2  # flag",
        ],
    );
    assert!(!stdout.contains("flag-pw") && !stderr.contains("flag-pw"));
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
