//! `svc-ws bench` end to end: the real binary against servers started in the test on
//! 127.0.0.1:0 (the plain-axum baseline, served in-process, and deliberately broken servers).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;

#[path = "../examples/plain_axum.rs"]
#[allow(dead_code)]
mod plain_axum;

/// Every bench run in these tests must end well within this.
const RUN_LIMIT: Duration = Duration::from_secs(60);

async fn serve(app: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

struct Run {
    success: bool,
    stdout: String,
    took: Duration,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        let last = self.stdout.lines().last().expect("some output");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
    }
}

async fn bench(addr: SocketAddr, args: &[&str]) -> Run {
    let started = Instant::now();
    let url = format!("ws://{addr}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_svc-ws"))
        .arg("bench")
        .args(args)
        .args(["--url", url.as_str(), "--json"])
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn svc-ws");
    let output = timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("svc-ws bench hung")
        .expect("svc-ws bench output");
    let run = Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        took: started.elapsed(),
    };
    eprintln!("{}{}", run.stdout, String::from_utf8_lossy(&output.stderr));
    run
}

fn plain_axum() -> Router {
    plain_axum::router(plain_axum::AppState::new(Some(4096), 256))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_counts_every_round_trip() {
    let (addr, _server) = serve(plain_axum()).await;
    let run = bench(addr, &["echo", "-c", "4", "-m", "50", "--warmup", "5"]).await;
    assert!(run.success);
    let figures = run.json();
    assert_eq!(figures["workload"], "echo");
    assert_eq!(figures["round_trips"], 200);
    assert_eq!(figures["rtt"]["count"], 200);
    assert_eq!(figures["failed_connections"], 0);
    assert!(figures["msgs_per_s"].as_f64().expect("rate") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_on_the_raw_echo_endpoint() {
    let (addr, _server) = serve(plain_axum()).await;
    let run = bench(
        addr,
        &["echo", "--raw", "-c", "2", "-m", "20", "--size", "300"],
    )
    .await;
    assert!(run.success);
    let figures = run.json();
    assert_eq!(figures["endpoint"], "/echo");
    assert_eq!(figures["round_trips"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_broadcast_once() {
    let (addr, _server) = serve(plain_axum()).await;
    let run = bench(
        addr,
        &[
            "fanout",
            "-n",
            "25",
            "-m",
            "12",
            "--interval-ms",
            "2",
            "--size",
            "200",
        ],
    )
    .await;
    assert!(run.success);
    let figures = run.json();
    assert_eq!(figures["subscribers_up"], 25);
    assert_eq!(figures["expected"], 300);
    assert_eq!(figures["deliveries"], 300);
    assert_eq!(figures["latency"]["count"], 300);
    assert_eq!(figures["missing"], 0);
    assert_eq!(figures["duplicates"], 0);
    assert_eq!(figures["unexpected"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections_and_reads_the_server_rss() {
    let (addr, _server) = serve(plain_axum()).await;
    let pid = std::process::id().to_string();
    let run = bench(
        addr,
        &[
            "idle",
            "-n",
            "40",
            "--hold-secs",
            "1",
            "--settle-secs",
            "0",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert!(run.success);
    let figures = run.json();
    assert_eq!(figures["connected"], 40);
    assert!(figures["stats_connections"].as_u64().expect("stats") >= 40);
    assert_eq!(figures["dropped"], 0);
    assert!(
        figures["server_rss_before_kib"]
            .as_u64()
            .expect("rss before")
            > 0
    );
    assert!(figures["server_rss_per_conn_kib"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_times_every_handshake() {
    let (addr, _server) = serve(plain_axum()).await;
    for client in [&[][..], &["--tungstenite"]] {
        let mut args = vec!["connect", "-n", "60", "--connect-concurrency", "8"];
        args.extend_from_slice(client);
        let run = bench(addr, &args).await;
        assert!(run.success);
        let figures = run.json();
        assert_eq!(figures["workload"], "connect");
        assert_eq!(figures["connected"], 60);
        assert_eq!(figures["failed"], 0);
        assert_eq!(figures["handshake"]["count"], 60);
        assert!(figures["stats_connections"].as_u64().expect("stats") >= 60);
        assert!(figures["connections_per_s"].as_f64().expect("rate") > 0.0);
        assert!(figures["kernel"].is_object());
        // The lean client times the TCP connect on its own; tokio-tungstenite's does not.
        let tcp = figures["tcp_connect"]["count"].as_u64().expect("tcp count");
        assert_eq!(tcp, if client.is_empty() { 60 } else { 0 });
    }
}

/// A server whose `/ws` connections are closed 150 ms after the upgrade, and whose `/stats`
/// claims plenty of connections.
fn dropping_server() -> Router {
    Router::new()
        .route(
            "/ws/{id}",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    let until = tokio::time::sleep(Duration::from_millis(150));
                    tokio::pin!(until);
                    loop {
                        tokio::select! {
                            () = &mut until => break,
                            next = socket.recv() => match next {
                                Some(Ok(Message::Text(text))) => {
                                    if socket.send(Message::Text(text)).await.is_err() {
                                        break;
                                    }
                                }
                                Some(Ok(_)) => {}
                                _ => break,
                            },
                        }
                    }
                })
            }),
        )
        .route("/stats", get(|| async { "{\"connections\": 1000000}" }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_fails_when_the_server_drops_subscribers() {
    let (addr, _server) = serve(dropping_server()).await;
    let run = bench(
        addr,
        &["fanout", "-n", "10", "-m", "100", "--interval-ms", "10"],
    )
    .await;
    assert!(!run.success);
    let figures = run.json();
    assert!(figures["failed_subscribers"].as_u64().expect("failed") > 0);
    assert!(figures["missing"].as_u64().expect("missing") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_fails_when_the_server_drops_connections() {
    let (addr, _server) = serve(dropping_server()).await;
    let run = bench(addr, &["echo", "-c", "3", "-m", "1000000", "--warmup", "0"]).await;
    assert!(!run.success);
    assert_eq!(run.json()["failed_connections"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ends_early_when_the_server_drops_connections() {
    let (addr, _server) = serve(dropping_server()).await;
    let run = bench(
        addr,
        &["idle", "-n", "5", "--hold-secs", "30", "--settle-secs", "0"],
    )
    .await;
    assert!(!run.success);
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    assert!(run.json()["dropped"].as_u64().expect("dropped") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_times_out_on_a_server_that_never_replies() {
    let silent = Router::new().route(
        "/ws/{id}",
        get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(
                |mut socket| async move { while let Some(Ok(_)) = socket.recv().await {} },
            )
        }),
    );
    let (addr, _server) = serve(silent).await;
    let run = bench(
        addr,
        &["echo", "-c", "2", "-m", "5", "--io-timeout-ms", "300"],
    )
    .await;
    assert!(!run.success);
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    let figures = run.json();
    assert_eq!(figures["failed_connections"], 2);
    assert!(
        figures["errors"][0]
            .as_str()
            .expect("error")
            .contains("no echo within")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_time_out_on_a_server_that_never_upgrades() {
    // Accepts TCP connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let _server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let started = Instant::now();
    let url = format!("ws://{addr}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_svc-ws"))
        .args(["bench", "echo", "-c", "2", "--url", url.as_str()])
        .args(["--connect-timeout-ms", "300", "--io-timeout-ms", "300"])
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = timeout(RUN_LIMIT, child)
        .await
        .expect("hung")
        .expect("status");
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_a_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    for workload in [
        &["connect", "-n", "1"][..],
        &["echo", "-c", "1"],
        &["fanout", "-n", "1"],
        &["idle", "-n", "1"],
    ] {
        let url = format!("ws://{addr}");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_svc-ws"))
            .arg("bench")
            .args(workload)
            .args(["--url", url.as_str()])
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        let status = timeout(RUN_LIMIT, child)
            .await
            .expect("hung")
            .expect("status");
        assert!(!status.success(), "{workload:?} succeeded with no server");
    }
}
