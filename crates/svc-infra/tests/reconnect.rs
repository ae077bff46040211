//! `websocket_connect`: reconnects with the DESIGN §2 policy, against real servers.
#![cfg(feature = "client")]

mod common;

use std::time::{Duration, Instant};

use common::{
    client_server::{Seen, TestServer},
    init_tracing,
    raw::{raw_server, read_request},
    step,
};
use futures_util::StreamExt;
use svc_infra::websocket::{WebSocketClient, WebSocketConfig, WebSocketError, websocket_connect};
use tokio::{io::AsyncWriteExt, net::TcpListener};

fn policy(base_ms: u64, max_ms: u64, jitter: f64, attempts: u32) -> WebSocketConfig {
    WebSocketConfig::default()
        .with_ping_interval(None)
        .with_reconnect_backoff_base(Duration::from_millis(base_ms))
        .with_reconnect_backoff_max(Duration::from_millis(max_ms))
        .with_reconnect_jitter(jitter)
        .with_reconnect_max_attempts(attempts)
}

/// The bounds of retry `n`'s delay under `config`, with `slack` added above for scheduling
/// and connect time (never below: a sleep never ends early).
fn bounds(config: &WebSocketConfig, n: u32, slack: Duration) -> (Duration, Duration) {
    let d = config.backoff_delay(n).as_secs_f64();
    let j = config.reconnect_jitter;
    (
        Duration::from_secs_f64(d * (1.0 - j)),
        Duration::from_secs_f64(d * (1.0 + j)) + slack,
    )
}

#[tokio::test]
async fn reconnects_after_the_server_restarts() {
    init_tracing();
    let mut server = TestServer::start().await;
    let addr = server.addr;
    let config = policy(100, 1_000, 0.1, 0);
    let mut clients =
        websocket_connect(WebSocketClient::builder(server.url("/echo")).config(config.clone()));

    let mut first = step(clients.next()).await.unwrap().unwrap();
    let _ = server.next_seen().await;
    step(first.send("one")).await.unwrap();
    assert_eq!(step(first.recv()).await.unwrap().as_text(), Some("one"));

    // Crash the server: the client sees an abnormal close.
    server.stop().await;
    let crashed = Instant::now();
    let err = step(first.recv()).await.unwrap_err();
    assert_eq!(err.close_code(), Some(1006), "{err:?}");
    drop(first);

    // Restart on the same port a little later, while the stream is retrying.
    let down_for = Duration::from_millis(700);
    let restart = tokio::spawn(async move {
        tokio::time::sleep(down_for).await;
        let listener = TcpListener::bind(addr).await.unwrap();
        TestServer::serve(listener)
    });
    let mut second = step(clients.next()).await.unwrap().unwrap();
    let reconnected = crashed.elapsed();
    let mut server = step(restart).await.unwrap();
    let _ = server.next_seen().await;
    step(second.send("two")).await.unwrap();
    assert_eq!(step(second.recv()).await.unwrap().as_text(), Some("two"));

    // Retries at ~100, ~300, ~700, ~1500 ms after the crash (base 100 ms, doubling): the
    // first retry after the restart is the one that succeeds.
    assert!(reconnected >= down_for, "{reconnected:?}");
    let (_, max_wait) = bounds(&config, 3, Duration::ZERO);
    assert!(
        reconnected <= down_for + max_wait + Duration::from_millis(300),
        "{reconnected:?}"
    );
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn retry_delays_follow_the_policy_and_max_attempts_is_respected() {
    init_tracing();
    // Every request gets a 503.
    let (addr, accepts) = raw_server(|mut s| async move {
        let _ = read_request(&mut s).await;
        let _ = s
            .write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntry later",
            )
            .await;
    })
    .await;
    let config = policy(100, 300, 0.2, 4);
    let started = Instant::now();
    let mut clients =
        websocket_connect(WebSocketClient::builder(format!("ws://{addr}/")).config(config.clone()));
    let err = step(clients.next()).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert!(step(clients.next()).await.is_none());
    assert!(step(clients.next()).await.is_none());

    let times = accepts.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "max_attempts = 4");
    assert!(
        times[0] - started < Duration::from_millis(200),
        "first try is immediate"
    );
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let (low, high) = bounds(&config, n as u32, Duration::from_millis(150));
        assert!(
            gap >= low && gap <= high,
            "retry {n}: waited {gap:?}, allowed {low:?}..={high:?}"
        );
    }
    // The cap: the third retry's delay is 300 ms, not 400.
    let last_gap = times[3] - times[2];
    assert!(
        last_gap < Duration::from_millis(400) * 12 / 10,
        "{last_gap:?}"
    );
}

#[tokio::test]
async fn a_refusal_with_retry_after_is_waited_out() {
    // Every request gets 429 with Retry-After: 1 (a server at its per-user limit): the retry
    // waits the second the server asked for, not the 50 ms of the backoff.
    let (addr, accepts) = raw_server(|mut s| async move {
        let _ = read_request(&mut s).await;
        let _ = s
            .write_all(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
    })
    .await;
    let config = policy(50, 50, 0.0, 2);
    let mut clients =
        websocket_connect(WebSocketClient::builder(format!("ws://{addr}/")).config(config));
    let err = step(clients.next()).await.unwrap().unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)), "{err:?}");
    let times = accepts.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(1000) && gap < Duration::from_millis(1500),
        "{gap:?}"
    );
}

#[tokio::test]
async fn authentication_failures_are_not_retried() {
    let server = TestServer::start().await;
    let mut clients = websocket_connect(
        WebSocketClient::builder(server.url("/forbidden")).config(policy(10, 100, 0.0, 0)),
    );
    let err = step(clients.next()).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, WebSocketError::Authentication { status: 403, body } if body.contains("forbidden")),
        "{err:?}"
    );
    assert!(step(clients.next()).await.is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.hits(), 1);

    // Other client errors (404) are not retried either.
    let mut clients = websocket_connect(
        WebSocketClient::builder(server.url("/no-such-route")).config(policy(10, 100, 0.0, 0)),
    );
    let err = step(clients.next()).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert!(step(clients.next()).await.is_none());

    // Nor a malformed URL.
    let mut clients = websocket_connect("ws//nope");
    let err = step(clients.next()).await.unwrap().unwrap_err();
    assert!(
        matches!(err, WebSocketError::ConnectionFailed { .. }),
        "{err:?}"
    );
    assert!(step(clients.next()).await.is_none());
}

#[tokio::test]
async fn going_away_reconnects_and_a_close_we_asked_for_ends_the_stream() {
    let mut server = TestServer::start().await;
    let config = policy(50, 200, 0.1, 0);
    // The first connection is closed by the server with 1001; the next one is echoed.
    let url = server.url("/close-once/1001/restarting");
    let mut clients = websocket_connect(WebSocketClient::builder(url).config(config.clone()));
    let mut first = step(clients.next()).await.unwrap().unwrap();
    assert!(
        step(first.next()).await.is_none(),
        "1001 ends the messages quietly"
    );
    assert_eq!(first.close_status(), Some((1001, "restarting".to_owned())));
    let _ = server.next_seen().await;

    let started = Instant::now();
    let second = step(clients.next()).await.unwrap().unwrap();
    let waited = started.elapsed();
    let (low, high) = bounds(&config, 0, Duration::from_millis(300));
    assert!(waited >= low && waited <= high, "{waited:?}");
    assert_eq!(server.hits(), 2);

    // The caller closes: no more connections.
    drop(first);
    step(second.close(1000, "bye")).await.unwrap();
    assert_eq!(
        server.next_seen().await,
        Seen::Closed(Some((1000, "bye".to_owned())))
    );
    assert!(step(clients.next()).await.is_none());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn next_waits_for_the_previous_connection_to_close() {
    let mut server = TestServer::start().await;
    let mut clients = websocket_connect(
        WebSocketClient::builder(server.url("/echo")).config(policy(10, 50, 0.0, 0)),
    );
    let first = step(clients.next()).await.unwrap().unwrap();
    let _ = server.next_seen().await;
    // While the first connection is open, there is no second one.
    let pending = tokio::time::timeout(Duration::from_millis(200), clients.next()).await;
    assert!(
        pending.is_err(),
        "next() must wait while the connection is open"
    );
    assert_eq!(server.hits(), 1);
    // Dropping the open client closes it (1000) and lets the stream reconnect.
    drop(first);
    assert_eq!(
        server.next_seen().await,
        Seen::Closed(Some((1000, String::new())))
    );
    let second = step(clients.next()).await.unwrap().unwrap();
    assert!(second.is_connected());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn reconnect_disabled_gives_one_connection() {
    let mut server = TestServer::start().await;
    let config = policy(10, 50, 0.0, 0).with_reconnect_enabled(false);
    let mut clients = websocket_connect(
        WebSocketClient::builder(server.url("/close/1012/restart")).config(config.clone()),
    );
    let mut first = step(clients.next()).await.unwrap().unwrap();
    let err = step(first.recv()).await.unwrap_err();
    assert_eq!(err.close_code(), Some(1012));
    assert!(err.is_retryable());
    let _ = server.next_seen().await;
    assert!(step(clients.next()).await.is_none());
    assert_eq!(server.hits(), 1);

    // A failed first attempt is not retried either.
    let mut clients =
        websocket_connect(WebSocketClient::builder(server.url("/unavailable")).config(config));
    assert!(step(clients.next()).await.unwrap().is_err());
    assert!(step(clients.next()).await.is_none());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn a_normal_close_by_the_server_is_not_retried() {
    let mut server = TestServer::start().await;
    let mut clients = websocket_connect(
        WebSocketClient::builder(server.url("/close/1000/done")).config(policy(10, 50, 0.0, 0)),
    );
    let mut first = step(clients.next()).await.unwrap().unwrap();
    assert!(step(first.next()).await.is_none());
    let _ = server.next_seen().await;
    assert!(step(clients.next()).await.is_none());
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_service_restart_reconnects_at_once_with_jitter() {
    // Every connection is closed with 1012. With a base of 1 s and jitter 0.1 an ordinary
    // retry waits 0.9–1.1 s; after 1012 the first retry waits a random 0–1 s instead, so in
    // five restarts at least one is shorter than 0.9 s (all five not: 0.1^5).
    let server = TestServer::start().await;
    let config = policy(1_000, 5_000, 0.1, 0);
    let url = server.url("/close/1012/service%20restart");
    let mut clients = websocket_connect(WebSocketClient::builder(url).config(config));
    let mut previous = step(clients.next()).await.unwrap().unwrap();
    let mut waits = Vec::new();
    for _ in 0..5 {
        // The close may come as an error item (1012 is not a normal close); then the end.
        while let Some(item) = step(previous.next()).await {
            assert!(item.is_err(), "{item:?}");
        }
        assert_eq!(previous.close_status().map(|s| s.0), Some(1012));
        let started = Instant::now();
        previous = step(clients.next()).await.unwrap().unwrap();
        waits.push(started.elapsed());
    }
    assert!(
        waits.iter().all(|w| *w <= Duration::from_millis(1_300)),
        "{waits:?}"
    );
    assert!(
        waits.iter().any(|w| *w < Duration::from_millis(900)),
        "{waits:?}"
    );
}
