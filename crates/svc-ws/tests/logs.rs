//! `svc-ws serve`'s logs as an operator reads them (`docs/operations.md`, "Logs"): with
//! `LOG_FORMAT=json` every line is a JSON object with the expected keys, refused upgrades and
//! closed connections are there at debug with their reason and code and the connection's
//! span, and no secret (a JWT, the JWT secret, an API key, a wrong key, the Redis password)
//! is ever written, whatever `RUST_LOG` lets through.
//!
//! The run uses every credential form against the real binary and a private `redis-server`
//! with a password (started by the test on a free port; without `redis-server` the test fails
//! when `CI` is set and is skipped otherwise).

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        http::HeaderValue,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

const STEP: Duration = Duration::from_secs(10);
/// The secrets of the run: none may appear in its output.
const SECRET: &str = "logs-test-jwt-secret-0123456789abcdef";
const OTHER_SECRET: &str = "logs-test-another-secret-0123456789ab";
const API_KEY: &str = "logs-test-api-key-5f1e2d3c";
const WRONG_KEY: &str = "logs-test-wrong-key-9a8b7c6d";
const REDIS_PASSWORD: &str = "logs-test-redis-pw-4e5f6a7b";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A private `redis-server` with a password on a free port; killed on drop.
struct Redis {
    port: u16,
    child: std::process::Child,
}

impl Redis {
    /// Starts one; `None` (skipped) when `redis-server` is not installed and `CI` is unset.
    async fn start(password: &str) -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed, and CI is set: the Redis tests must run"
            );
            eprintln!("SKIPPED: redis-server is not installed (set CI to make this a failure)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(["--requirepass", password])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Self { port, child };
        // Answers PING once authenticated (RESP by hand: two commands, two replies).
        within("redis-server to answer", async {
            loop {
                if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await {
                    let auth = format!(
                        "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n",
                        password.len()
                    );
                    let mut reply = [0u8; 12];
                    if tcp.write_all(auth.as_bytes()).await.is_ok()
                        && tcp.read_exact(&mut reply).await.is_ok()
                        && &reply == b"+OK\r\n+PONG\r\n"
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Some(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `svc-ws serve ARGS` with only `env` of the variables it reads (the test runner's own
/// settings must not leak in), stdout and stderr piped.
fn serve(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_svc-ws"));
    cmd.arg("serve").args(args);
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
                "RUST_LOG",
                "LOG_FORMAT",
            ]
            .contains(&name.as_str())
        {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Every line of `from`, kept in `into`.
fn collect(from: impl AsyncRead + Unpin + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            into.lock().unwrap().push(line);
        }
    });
}

/// An HS256 JWT for `sub`, signed with `secret`, expiring `ttl` seconds from now (negative:
/// expired).
fn jwt(secret: &str, sub: &str, ttl: i64, scopes: &[&str]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "iat": now - 600, "exp": now + ttl, "scopes": scopes}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A plain HTTP/1.1 request; the status and the body.
async fn http(addr: &str, head: &str, body: &str) -> (u16, String) {
    let mut tcp = within("http", TcpStream::connect(addr)).await.unwrap();
    let request = format!(
        "{head}\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    within("http request", tcp.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut response = String::new();
    within("http response", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

async fn connect(request: tungstenite::handshake::client::Request) -> Ws {
    within("connect", tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .0
}

/// The handshake is refused with HTTP `status`.
async fn refused(request: tungstenite::handshake::client::Request, status: u16) {
    match within("connect", tokio_tungstenite::connect_async(request)).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), status, "{response:?}");
        }
        other => panic!("expected HTTP {status}, got {other:?}"),
    }
}

/// Sends a request of the protocol and waits for its ack (or other answer) with this id.
async fn request(ws: &mut Ws, mut request: Value, id: u64) -> Value {
    request["id"] = json!(id);
    within("send", ws.send(Message::text(request.to_string())))
        .await
        .unwrap();
    loop {
        let answer = next(ws).await;
        if answer["id"] == json!(id) {
            return answer;
        }
    }
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

/// Reads until the server's close frame; returns its code.
async fn closed_by_server(ws: &mut Ws) -> u16 {
    loop {
        match within("close frame", ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                // Keep reading so that our reply goes out.
                while let Some(Ok(_)) = within("end of stream", ws.next()).await {}
                return u16::from(frame.code);
            }
            Some(Ok(_)) => {}
            other => panic!("expected the close frame, got {other:?}"),
        }
    }
}

/// The lines that say `message` at `level`.
fn lines<'a>(logs: &'a [Value], level: &str, message: &str) -> Vec<&'a Value> {
    logs.iter()
        .filter(|l| l["level"] == level && l["message"] == message)
        .collect()
}

#[tokio::test]
async fn json_logs_carry_refusals_and_closes_and_never_a_secret() {
    let Some(redis) = Redis::start(REDIS_PASSWORD).await else {
        return;
    };
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port);
    let keys = format!("ops:{API_KEY}");
    let mut child = serve(
        &["--port", "0"],
        &[
            ("RUST_LOG", "trace"),
            ("LOG_FORMAT", "json"),
            ("AUTH_JWT__SECRET", SECRET),
            ("WS_API_KEYS", &keys),
            ("REDIS_URL", &redis_url),
            ("WS_SHUTDOWN_SPREAD", "0"),
        ],
    )
    .spawn()
    .expect("spawn svc-ws serve");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    collect(child.stderr.take().unwrap(), stderr.clone());
    collect(child.stdout.take().unwrap(), stdout.clone());

    // The listening line, as JSON like the rest.
    let addr = within("the listening line", async {
        loop {
            let found = stderr.lock().unwrap().iter().find_map(|line| {
                let rest = line.split("listening on ws://").nth(1)?;
                Some(rest.split('/').next()?.to_owned())
            });
            if let Some(addr) = found {
                return addr;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    within("the backplane to connect", async {
        loop {
            let (_, body) = http(&addr, "GET /health HTTP/1.1", "").await;
            if body.contains(r#""backplane":"connected""#) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let url = format!("ws://{addr}/ws");
    let alice_jwt = jwt(SECRET, "alice", 600, &[]);
    let bob_jwt = jwt(SECRET, "bob", 600, &[]);
    let carol_jwt = jwt(SECRET, "carol", 600, &["broadcast"]);
    let forged_jwt = jwt(OTHER_SECRET, "mallory", 600, &[]);
    let expired_jwt = jwt(SECRET, "dave", -120, &[]);

    // `?token=`, `Authorization: Bearer`, the `["bearer", jwt]` subprotocol.
    let mut alice = connect(
        format!("{url}?token={alice_jwt}")
            .into_client_request()
            .unwrap(),
    )
    .await;
    let mut with_header = url.as_str().into_client_request().unwrap();
    with_header.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {bob_jwt}")).unwrap(),
    );
    let mut bob = connect(with_header).await;
    let mut with_protocol = url.as_str().into_client_request().unwrap();
    with_protocol.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {carol_jwt}")).unwrap(),
    );
    let mut carol = connect(with_protocol).await;

    // Refused: a forged token, an expired one, a wrong API key on /ws.
    refused(
        format!("{url}?token={forged_jwt}")
            .into_client_request()
            .unwrap(),
        401,
    )
    .await;
    let mut expired = url.as_str().into_client_request().unwrap();
    expired.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {expired_jwt}")).unwrap(),
    );
    refused(expired, 401).await;
    refused(
        format!("{url}?api_key={WRONG_KEY}")
            .into_client_request()
            .unwrap(),
        401,
    )
    .await;

    // Join and publish a bit.
    for (ws, id) in [(&mut alice, 1), (&mut bob, 2), (&mut carol, 3)] {
        let ack = request(ws, json!({"type": "join", "room": "lobby"}), id).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let ack = request(
        &mut bob,
        json!({"type": "publish", "room": "lobby", "data": "hi"}),
        4,
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next(&mut alice).await["data"], "hi");
    assert_eq!(next(&mut carol).await["data"], "hi");
    let ack = request(&mut carol, json!({"type": "broadcast", "data": "all"}), 5).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next(&mut alice).await["data"], "all");
    assert_eq!(next(&mut bob).await["data"], "all");

    // POST /api/publish with the API key, and with a wrong one.
    let publish = r#"{"room": "lobby", "data": "from ops"}"#;
    let (status, body) = http(
        &addr,
        &format!("POST /api/publish HTTP/1.1\r\nX-API-Key: {API_KEY}"),
        publish,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next(&mut alice).await["data"], "from ops");
    let (status, body) = http(
        &addr,
        &format!("POST /api/publish HTTP/1.1\r\nX-API-Key: {WRONG_KEY}"),
        publish,
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // Alice leaves with a close of her own; SIGTERM closes the others with 1012.
    within(
        "close",
        alice.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })),
    )
    .await
    .unwrap();
    while let Some(Ok(_)) = within("end of alice", alice.next()).await {}
    let pid = child.id().expect("running").to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(closed_by_server(&mut bob).await, 1012);
    assert_eq!(closed_by_server(&mut carol).await, 1012);
    let exit = within("exit", child.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
    // The readers end with the pipes.
    within("the pipes to close", async {
        while Arc::strong_count(&stderr) > 1 || Arc::strong_count(&stdout) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stderr = std::mem::take(&mut *stderr.lock().unwrap());
    let stdout = std::mem::take(&mut *stdout.lock().unwrap());
    let all = [stderr.as_slice(), stdout.as_slice()].concat();

    // No secret anywhere, in any form the run used.
    let mut secrets = vec![SECRET, OTHER_SECRET, API_KEY, WRONG_KEY, REDIS_PASSWORD];
    let tokens = [&alice_jwt, &bob_jwt, &carol_jwt, &forged_jwt, &expired_jwt];
    for token in tokens {
        secrets.push(token);
        secrets.push(token.rsplit('.').next().unwrap()); // the signature alone
    }
    let text = all.join("\n");
    for secret in &secrets {
        assert!(!text.contains(secret), "{secret} in the output:\n{text}");
    }

    // Every line is a JSON object with the expected keys.
    let logs: Vec<Value> = all
        .iter()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            for key in ["timestamp", "level", "target"] {
                assert!(v.get(key).is_some_and(Value::is_string), "no {key}: {line}");
            }
            if v["target"].as_str().unwrap().starts_with("svc_") {
                assert!(v["message"].is_string(), "no message: {line}");
            }
            v
        })
        .collect();
    assert!(
        !lines(&logs, "INFO", "shutting down").is_empty(),
        "the shutdown line:\n{text}"
    );
    let connected = lines(&logs, "INFO", "Redis backplane connected");
    assert_eq!(
        connected.first().map(|l| l["redis"].clone()),
        Some(json!(format!("127.0.0.1:{}", redis.port))),
        "{text}"
    );

    // One line per refused upgrade, at debug, with the status and the reason.
    let refusals: Vec<(u64, &str)> = lines(&logs, "DEBUG", "websocket upgrade refused")
        .iter()
        .map(|l| (l["status"].as_u64().unwrap(), l["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        refusals,
        [
            (401, "Invalid token: Signature verification failed"),
            (401, "Token expired"),
            (401, "Invalid API key"),
        ],
        "{text}"
    );
    for refusal in lines(&logs, "DEBUG", "websocket upgrade refused") {
        assert_eq!(refusal["kind"], "unauthorized", "{refusal}");
        assert_eq!(refusal["path"], "/ws", "{refusal}");
    }
    let publishes: Vec<&Value> = lines(&logs, "DEBUG", "POST /api/publish refused");
    assert_eq!(publishes.len(), 1, "{text}");
    assert_eq!(publishes[0]["status"], 401);
    assert_eq!(publishes[0]["reason"], "Invalid API key");
    let published = lines(&logs, "DEBUG", "POST /api/publish");
    assert_eq!(published.len(), 1, "{text}");
    assert_eq!(published[0]["from"], "ops");

    // One line per closed connection, at debug, with its code and reason, in its span.
    let registered = lines(&logs, "DEBUG", "connection registered");
    assert_eq!(registered.len(), 3, "{text}");
    let closes = lines(&logs, "DEBUG", "connection closed");
    assert_eq!(closes.len(), 3, "{text}");
    for (user, code, reason) in [
        ("alice", 1000, "bye"),
        ("bob", 1012, "service restart"),
        ("carol", 1012, "service restart"),
    ] {
        let close = closes
            .iter()
            .find(|l| l["user"] == user)
            .unwrap_or_else(|| panic!("no close of {user}:\n{text}"));
        assert_eq!(close["code"], code, "{close}");
        assert_eq!(close["reason"], reason, "{close}");
        let span = &close["span"];
        assert_eq!(span["name"], "connection", "{close}");
        assert_eq!(span["user"], user, "{close}");
        assert_eq!(span["conn_id"], close["conn_id"], "{close}");
        assert!(
            span["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:"))
        );
        let opened = registered
            .iter()
            .find(|l| l["user"] == user)
            .unwrap_or_else(|| panic!("{user} not registered:\n{text}"));
        assert_eq!(opened["conn_id"], close["conn_id"]);
        assert_eq!(opened["span"]["conn_id"], close["conn_id"]);
    }
}

/// A bad `LOG_FORMAT` stops every subcommand before anything else, naming the variable and
/// what it accepts; in `json`, a failed start is one JSON line too.
#[tokio::test]
async fn a_bad_log_format_stops_and_a_failed_json_start_is_json() {
    let out = within(
        "exit",
        serve(&["--port", "0"], &[("LOG_FORMAT", "xml")]).output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // (anyhow adds a backtrace below when RUST_BACKTRACE is set.)
    assert_eq!(
        stderr.lines().next(),
        Some(r#"Error: invalid LOG_FORMAT="xml": expected text (the default) or json"#),
        "{stderr}"
    );
    let out = within(
        "exit",
        serve(
            &["--port", "0"],
            &[("LOG_FORMAT", "json"), ("WS_PING_TIMEOUT", "-1")],
        )
        .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(lines[0]["level"], "ERROR");
    assert!(
        lines[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"invalid WS_PING_TIMEOUT="-1""#)),
        "{stderr}"
    );
}

/// `--print-config` shows the log settings in effect.
#[tokio::test]
async fn print_config_shows_the_log_settings() {
    let out = within(
        "exit",
        serve(
            &["--print-config"],
            &[("LOG_FORMAT", "JSON"), ("RUST_LOG", "svc_infra=debug")],
        )
        .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for line in ["LOG_FORMAT=json  # env", "RUST_LOG=svc_infra=debug  # env"] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} not in\n{stdout}"
        );
    }
}
