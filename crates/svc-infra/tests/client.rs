//! `WebSocketClient` against real servers on 127.0.0.1: axum for well-behaved peers, raw TCP
//! for misbehaving ones.
#![cfg(feature = "client")]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    client_server::{Seen, TestServer},
    raw::{closed_port, raw_handshake, raw_server, read_client_close, read_request, server_frame},
    step,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use svc_infra::websocket::{
    ConnectFailure, ConnectionState, WebSocketClient, WebSocketConfig, WebSocketError,
    WebSocketMessage,
};
use tokio::{io::AsyncWriteExt, sync::oneshot};

fn quiet() -> WebSocketConfig {
    WebSocketConfig::default().with_ping_interval(None)
}

async fn connect(url: &str) -> WebSocketClient {
    step(WebSocketClient::builder(url).config(quiet()).connect())
        .await
        .expect("connect")
}

#[tokio::test]
async fn round_trips_text_binary_and_json() {
    let server = TestServer::start().await;
    let mut ws = connect(&server.url("/echo")).await;
    assert!(ws.is_connected());
    assert_eq!(ws.state(), ConnectionState::Open);
    assert_eq!(ws.url(), server.url("/echo"));

    step(ws.send("héllo")).await.unwrap();
    let m = step(ws.recv()).await.unwrap();
    assert_eq!(m.as_text(), Some("héllo"));
    assert!(m.received_at().is_some());

    step(ws.send(vec![0u8, 1, 2, 255])).await.unwrap();
    let m = step(ws.recv()).await.unwrap();
    assert!(m.is_binary());
    assert_eq!(m.as_bytes(), &[0, 1, 2, 255]);

    step(ws.send(Bytes::new())).await.unwrap();
    let m = step(ws.recv()).await.unwrap();
    assert!(m.is_binary() && m.is_empty());

    // send_json is compact and keeps UTF-8 as is.
    step(ws.send_json(&json!({"a": 1, "é": "ü"})))
        .await
        .unwrap();
    let m = step(ws.recv()).await.unwrap();
    assert_eq!(m.as_text(), Some(r#"{"a":1,"é":"ü"}"#));

    step(ws.send_json(&json!({"type": "hello", "n": [1, 2]})))
        .await
        .unwrap();
    let v: Value = step(ws.recv_json()).await.unwrap();
    assert_eq!(v, json!({"type": "hello", "n": [1, 2]}));

    // Not JSON: a Json error, and the connection stays usable.
    step(ws.send("not json")).await.unwrap();
    let err = step(ws.recv_json::<Value>()).await.unwrap_err();
    assert!(matches!(err, WebSocketError::Json(_)), "{err:?}");
    step(ws.send(WebSocketMessage::text("still here")))
        .await
        .unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("still here"));
}

#[tokio::test]
async fn headers_and_subprotocols_as_the_server_sees_them() {
    let mut server = TestServer::start().await;
    let ws = step(
        WebSocketClient::builder(server.url("/echo"))
            .config(quiet())
            .header("Authorization", "Bearer abc.def")
            .headers([("X-Api-Key", "k1"), ("X-Trace", "t-9")])
            .subprotocols(["v1", "v2"])
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(ws.subprotocol(), Some("v2"));
    let Seen::Upgrade { headers, protocol } = server.next_seen().await else {
        panic!("expected the upgrade");
    };
    assert_eq!(headers["authorization"], "Bearer abc.def");
    assert_eq!(headers["x-api-key"], "k1");
    assert_eq!(headers["x-trace"], "t-9");
    assert_eq!(headers["sec-websocket-protocol"], "v1, v2");
    assert_eq!(headers["host"], server.addr.to_string());
    assert!(headers["user-agent"].starts_with("svc-infra/"));
    assert_eq!(protocol.as_deref(), Some("v2"));

    // Debug output names headers but never shows their values (credentials).
    let builder =
        WebSocketClient::builder(server.url("/echo")).header("Authorization", "Bearer s3cret");
    let shown = format!("{builder:?}");
    assert!(
        shown.contains("Authorization") && !shown.contains("s3cret"),
        "{shown}"
    );

    // A server that picks none of the offered subprotocols is accepted (RFC 6455).
    let ws = step(
        WebSocketClient::builder(server.url("/echo"))
            .config(quiet())
            .subprotocols(["x-unknown"])
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(ws.subprotocol(), None);
    assert!(ws.is_connected());
}

#[tokio::test]
async fn a_subprotocol_we_did_not_offer_is_a_protocol_error() {
    let (addr, _) = raw_server(|mut s| async move {
        raw_handshake(&mut s, "Sec-WebSocket-Protocol: evil\r\n").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    let err = step(
        WebSocketClient::builder(format!("ws://{addr}/"))
            .subprotocols(["good"])
            .connect(),
    )
    .await
    .unwrap_err();
    let WebSocketError::Protocol(why) = &err else {
        panic!("{err:?}");
    };
    assert!(why.contains("evil"), "{why}");
}

#[tokio::test]
async fn close_codes_and_reasons_are_reported_as_sent() {
    let mut server = TestServer::start().await;

    // 4001 "bye": recv reports it; is_connected turns false.
    let mut ws = connect(&server.url("/close/4001/bye")).await;
    let err = step(ws.recv()).await.unwrap_err();
    assert_eq!(err.to_string(), "Connection closed: 4001 bye");
    assert!(
        matches!(&err, WebSocketError::ConnectionClosed { code: 4001, reason } if reason == "bye")
    );
    assert!(!ws.is_connected());
    assert_eq!(ws.close_status(), Some((4001, "bye".to_owned())));
    assert!(ws.closed_by_peer());
    // The close was answered with the same code.
    assert_eq!(
        server.next_seen().await,
        Seen::Closed(Some((4001, "bye".to_owned())))
    );
    // Later calls keep reporting the close; sending fails with it too.
    let again = step(ws.recv()).await.unwrap_err();
    assert_eq!(again.close_code(), Some(4001));
    let send_err = step(ws.send("late")).await.unwrap_err();
    assert_eq!(send_err.close_code(), Some(4001));

    // As a stream: the abnormal close is one error, then the end.
    let mut ws = connect(&server.url("/close/4002/x")).await;
    let item = step(ws.next()).await.expect("an error item");
    assert_eq!(item.unwrap_err().close_code(), Some(4002));
    assert!(step(ws.next()).await.is_none());
    let _ = server.next_seen().await;

    // 1001 stays 1001 (recv), and ends the stream quietly (a normal close).
    let mut ws = connect(&server.url("/close/1001/going%20away")).await;
    let err = step(ws.recv()).await.unwrap_err();
    assert!(
        matches!(&err, WebSocketError::ConnectionClosed { code: 1001, reason } if reason == "going away"),
        "{err:?}"
    );
    let mut ws = connect(&server.url("/close/1001/bye")).await;
    assert!(step(ws.next()).await.is_none());
    assert_eq!(ws.close_status(), Some((1001, "bye".to_owned())));
    assert!(!ws.is_connected());
}

#[tokio::test]
async fn peer_close_turns_is_connected_false_without_a_recv() {
    let server = TestServer::start().await;
    let ws = connect(&server.url("/close/1000/done")).await;
    step(async {
        while ws.is_connected() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(ws.close_status(), Some((1000, "done".to_owned())));
    let sender = ws.sender();
    step(async {
        while sender.state() != ConnectionState::Closed {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn client_close_is_seen_by_the_server_and_idempotent() {
    let mut server = TestServer::start().await;
    let mut ws = connect(&server.url("/echo")).await;
    let _ = server.next_seen().await; // upgrade
    step(ws.close(4000, "done")).await.unwrap();
    assert!(!ws.is_connected());
    assert_eq!(ws.state(), ConnectionState::Closed);
    assert_eq!(
        server.next_seen().await,
        Seen::Closed(Some((4000, "done".to_owned())))
    );
    step(ws.close(1000, "")).await.unwrap(); // no-op
    assert_eq!(ws.close_status(), Some((4000, "done".to_owned())));
    assert!(!ws.closed_by_peer(), "we closed");
    let err = step(ws.recv()).await.unwrap_err();
    assert_eq!(err.close_code(), Some(4000));
    // A close we asked for ends the stream quietly.
    let mut ws2 = connect(&server.url("/echo")).await;
    let _ = server.next_seen().await;
    step(ws2.close(1000, "")).await.unwrap();
    assert!(step(ws2.next()).await.is_none());

    // Codes that may not be sent are refused before anything happens.
    let ws3 = connect(&server.url("/echo")).await;
    let err = step(ws3.close(1005, "")).await.unwrap_err();
    assert!(matches!(err, WebSocketError::Protocol(_)), "{err:?}");
    assert!(ws3.is_connected());
    // A reason too long for a close frame is cut to 123 bytes, as the server cuts it
    // (one rule, in `protocol::close_reason`): the close still happens.
    step(ws3.close(1000, &"x".repeat(124))).await.unwrap();
    loop {
        // Skip what the earlier connections left in the log (each wait is bounded).
        if let Seen::Closed(Some((code, reason))) = server.next_seen().await
            && !reason.is_empty()
        {
            assert_eq!((code, reason), (1000, "x".repeat(123)));
            break;
        }
    }
}

#[tokio::test]
async fn messages_in_flight_when_we_close_are_still_received() {
    let server = TestServer::start().await;
    let mut ws = connect(&server.url("/echo")).await;
    step(ws.send("in flight")).await.unwrap();
    step(ws.close(1000, "")).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("in flight"));
    assert_eq!(step(ws.recv()).await.unwrap_err().close_code(), Some(1000));
    assert!(step(ws.next()).await.is_none());
}

#[tokio::test]
async fn dropping_every_handle_closes_with_1000() {
    let mut server = TestServer::start().await;
    let ws = connect(&server.url("/echo")).await;
    let _ = server.next_seen().await;
    let sender = ws.sender();
    drop(ws);
    // A sender keeps the connection alive.
    step(sender.send("ping?")).await.unwrap();
    drop(sender);
    assert_eq!(
        server.next_seen().await,
        Seen::Closed(Some((1000, String::new())))
    );
}

#[tokio::test]
async fn oversized_incoming_message_closes_with_1009() {
    let mut server = TestServer::start().await;
    let config = quiet().with_max_message_size(1024);
    let mut ws = step(
        WebSocketClient::builder(server.url("/big/4096"))
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    let err = step(ws.recv()).await.unwrap_err();
    let WebSocketError::MessageTooLarge { size, limit } = err else {
        panic!("{err:?}");
    };
    assert_eq!(limit, 1024);
    assert!(size > 1024, "{size}");
    assert!(!ws.is_connected());
    let Seen::Closed(Some((code, _))) = server.next_seen().await else {
        panic!("no close frame");
    };
    assert_eq!(code, 1009);
    assert_eq!(step(ws.recv()).await.unwrap_err().close_code(), Some(1009));

    // At the limit exactly, it is delivered.
    let mut ws = step(
        WebSocketClient::builder(server.url("/big/1024"))
            .config(quiet().with_max_message_size(1024))
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().len(), 1024);
}

#[tokio::test]
async fn oversized_outgoing_message_is_refused_before_sending() {
    let server = TestServer::start().await;
    let mut ws = step(
        WebSocketClient::builder(server.url("/echo"))
            .config(quiet().with_max_message_size(1024))
            .connect(),
    )
    .await
    .unwrap();
    let err = step(ws.send(vec![1u8; 1025])).await.unwrap_err();
    assert!(
        matches!(
            err,
            WebSocketError::MessageTooLarge {
                size: 1025,
                limit: 1024
            }
        ),
        "{err:?}"
    );
    let err = step(ws.send_json(&"x".repeat(2000))).await.unwrap_err();
    assert!(
        matches!(err, WebSocketError::MessageTooLarge { .. }),
        "{err:?}"
    );
    // Nothing went out, and the connection still works.
    assert!(ws.is_connected());
    step(ws.send("ok")).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("ok"));
    step(ws.send(vec![2u8; 1024])).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().len(), 1024);
}

#[tokio::test]
async fn latency_is_measured_by_keepalive() {
    let server = TestServer::start().await;
    let config = WebSocketConfig::default()
        .with_ping_interval(Some(Duration::from_millis(50)))
        .with_ping_timeout(Some(Duration::from_secs(2)));
    let ws = step(
        WebSocketClient::builder(server.url("/echo"))
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(ws.latency(), None);
    let latency = step(async {
        loop {
            if let Some(l) = ws.latency() {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        latency > Duration::ZERO && latency < Duration::from_secs(1),
        "{latency:?}"
    );
    assert!(ws.is_connected());

    // Disabled keepalive measures nothing.
    let quiet_ws = connect(&server.url("/echo")).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(quiet_ws.latency(), None);
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_detected() {
    // Completes the handshake, then never reads or writes again.
    let (addr, _) = raw_server(|mut s| async move {
        raw_handshake(&mut s, "").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(300);
    let config = WebSocketConfig::default()
        .with_ping_interval(Some(interval))
        .with_ping_timeout(Some(timeout));
    let started = Instant::now();
    let mut ws = step(
        WebSocketClient::builder(format!("ws://{addr}/"))
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    let err = step(ws.recv()).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, WebSocketError::ConnectionClosed { code: 1011, reason } if reason == "keepalive ping timeout"),
        "{err:?}"
    );
    assert!(!ws.is_connected());
    // Our keepalive failed it, not a 1011 from the server.
    assert!(!ws.closed_by_peer());
    assert!(took >= interval + timeout, "{took:?}");
    // Detected within ping_interval + ping_timeout (plus scheduling slack on a busy box).
    assert!(
        took < interval + timeout + Duration::from_millis(500),
        "{took:?}"
    );
    // It is a retryable end.
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_slow_reader_is_not_mistaken_for_a_dead_peer() {
    // The receive queue holds 2 messages; the server sends 200 while we do not read for
    // several ping timeouts. Reading pauses (TCP pushes back), keepalive pauses with it,
    // and nothing is lost or reordered.
    let server = TestServer::start().await;
    let config = WebSocketConfig::default()
        .with_max_queue_size(2)
        .with_ping_interval(Some(Duration::from_millis(50)))
        .with_ping_timeout(Some(Duration::from_millis(100)));
    let mut ws = step(
        WebSocketClient::builder(server.url("/burst/200"))
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 0..200 {
        let m = step(ws.recv()).await.unwrap();
        assert_eq!(m.as_text(), Some(format!("m-{i}").as_str()));
    }
    assert!(ws.is_connected());
    // Keepalive resumes once we read again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ws.is_connected());
    assert!(ws.latency().is_some());
    step(ws.send("still open")).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("still open"));
}

#[tokio::test]
async fn a_peer_that_stops_reading_fails_blocked_sends_too() {
    // Completes the handshake, then never reads: our writes stall once TCP buffers fill.
    let (addr, _) = raw_server(|mut s| async move {
        raw_handshake(&mut s, "").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(s);
    })
    .await;
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(300);
    let config = WebSocketConfig::default()
        .with_ping_interval(Some(interval))
        .with_ping_timeout(Some(timeout));
    let mut ws = step(
        WebSocketClient::builder(format!("ws://{addr}/"))
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let sender = ws.sender();
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![0u8; 512 * 1024]);
        let mut sent = 0usize;
        loop {
            match sender.send(chunk.clone()).await {
                Ok(()) => sent += 1,
                Err(e) => break (sent, e, Instant::now()),
            }
        }
    });
    let err = step(ws.recv()).await.unwrap_err();
    assert_eq!(err.close_code(), Some(1011), "{err:?}");
    let (sent, send_err, failed_at) = step(writer).await.unwrap();
    assert!(sent > 0);
    assert_eq!(send_err.close_code(), Some(1011), "{send_err:?}");
    let limit = interval + timeout + Duration::from_millis(700);
    assert!(failed_at - started < limit, "{:?}", failed_at - started);
    // The connection is torn down without waiting for the close_timeout (10 s).
    let sender = ws.sender();
    step(async {
        while sender.state() != ConnectionState::Closed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(started.elapsed() < limit + Duration::from_secs(1));
}

#[tokio::test]
async fn with_keepalive_off_a_stalled_write_still_ends_within_ping_timeout() {
    // Completes the handshake, then never reads: nothing but the write guard can notice.
    let (addr, _) = raw_server(|mut s| async move {
        raw_handshake(&mut s, "").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(s);
    })
    .await;
    let timeout = Duration::from_millis(400);
    let config = WebSocketConfig::default()
        .with_ping_interval(None)
        .with_ping_timeout(Some(timeout));
    let ws = step(
        WebSocketClient::builder(format!("ws://{addr}/"))
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    let chunk = Bytes::from(vec![0u8; 512 * 1024]);
    let (sent, err, stalled_for) = step(async {
        let mut sent = 0usize;
        loop {
            let started = Instant::now();
            match ws.send(chunk.clone()).await {
                Ok(()) => sent += 1,
                Err(e) => break (sent, e, started.elapsed()),
            }
        }
    })
    .await;
    assert!(sent > 0, "some writes fit in the socket buffers");
    assert!(
        matches!(&err, WebSocketError::ConnectionClosed { code: 1011, reason } if reason == "write timed out"),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(stalled_for >= timeout, "{stalled_for:?}");
    assert!(
        stalled_for < timeout + Duration::from_secs(1),
        "{stalled_for:?}"
    );
    assert!(!ws.is_connected());
}

#[tokio::test]
async fn sends_from_one_task_while_another_receives() {
    let mut server = TestServer::start().await;
    const N: usize = 300;
    // A small queue exercises backpressure both ways.
    let config = quiet().with_max_queue_size(2);
    let mut ws = step(
        WebSocketClient::builder(server.url(&format!("/duplex/{N}")))
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    let sender = ws.sender();
    let (sent_tx, sent_rx) = oneshot::channel();
    let up = tokio::spawn(async move {
        for i in 0..N {
            step(sender.send(format!("up-{i}"))).await.unwrap();
        }
        let _ = sent_tx.send(());
    });
    for i in 0..N {
        let m = step(ws.recv()).await.unwrap();
        assert_eq!(m.as_text(), Some(format!("down-{i}").as_str()));
    }
    step(sent_rx).await.unwrap();
    step(up).await.unwrap();
    assert_eq!(
        step(ws.recv()).await.unwrap().as_text(),
        Some(format!("got {N}").as_str())
    );
    assert_eq!(server.next_seen().await, Seen::Received(N));
    step(ws.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn authentication_failures_carry_status_and_body() {
    let server = TestServer::start().await;
    let err = step(WebSocketClient::builder(server.url("/forbidden")).connect())
        .await
        .unwrap_err();
    let WebSocketError::Authentication { status, body } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*status, 403);
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["reason"], "Insufficient scope");
    assert!(!err.is_retryable());

    let err = step(WebSocketClient::builder(server.url("/unauthorized")).connect())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WebSocketError::Authentication { status: 401, body } if body == "Token expired"),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_input_gives_errors_not_panics() {
    // Malformed URLs.
    for url in [
        "",
        "ws//nope",
        "http://127.0.0.1/",
        "ws://",
        "wss://exa mple.com/",
    ] {
        let err = step(WebSocketClient::builder(url).connect())
            .await
            .unwrap_err();
        assert!(
            matches!(err, WebSocketError::ConnectionFailed { .. }),
            "{url:?}: {err:?}"
        );
    }
    // Bad headers and subprotocols.
    for builder in [
        WebSocketClient::builder("ws://127.0.0.1:1/").header("Bad Name", "x"),
        WebSocketClient::builder("ws://127.0.0.1:1/").header("X-Ok", "a\r\nInjected: 1"),
        WebSocketClient::builder("ws://127.0.0.1:1/").header("Sec-WebSocket-Key", "x"),
        WebSocketClient::builder("ws://127.0.0.1:1/").subprotocols(["two words"]),
    ] {
        let err = step(builder.connect()).await.unwrap_err();
        assert!(
            matches!(err, WebSocketError::ConnectionFailed { .. }),
            "{err:?}"
        );
    }
    // A bad config.
    let err = step(
        WebSocketClient::builder("ws://127.0.0.1:1/")
            .config(WebSocketConfig::default().with_max_message_size(0))
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WebSocketError::Config(_)), "{err:?}");

    // Nothing listens.
    let addr = closed_port().await;
    let err = step(WebSocketClient::builder(format!("ws://{addr}/")).connect())
        .await
        .unwrap_err();
    assert!(
        matches!(err, WebSocketError::ConnectionFailed { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());

    // An unresolvable host name.
    let err = step(WebSocketClient::builder("ws://no-such-host.invalid/").connect())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WebSocketError::ConnectionFailed { .. } | WebSocketError::Timeout { .. }
        ),
        "{err:?}"
    );

    // A plain HTTP answer (200) and a 503.
    let server = TestServer::start().await;
    let err = step(WebSocketClient::builder(server.url("/plain")).connect())
        .await
        .unwrap_err();
    let WebSocketError::ConnectionFailed { source, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(source.to_string().contains("HTTP 200"), "{source}");
    assert!(
        matches!(source, ConnectFailure::HttpStatus { status: 200, .. }),
        "{source:?}"
    );
    let err = step(WebSocketClient::builder(server.url("/unavailable")).connect())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert!(err.is_retryable());

    // Garbage instead of HTTP.
    let (addr, _) = raw_server(|mut s| async move {
        let _ = read_request(&mut s).await;
        let _ = s.write_all(b"\x00\x01garbage\r\n\r\n").await;
    })
    .await;
    let err = step(WebSocketClient::builder(format!("ws://{addr}/")).connect())
        .await
        .unwrap_err();
    assert!(matches!(err, WebSocketError::Protocol(_)), "{err:?}");

    // Closed in the middle of the handshake.
    let (addr, _) = raw_server(|mut s| async move {
        let _ = read_request(&mut s).await;
    })
    .await;
    let err = step(WebSocketClient::builder(format!("ws://{addr}/")).connect())
        .await
        .unwrap_err();
    assert!(
        matches!(err, WebSocketError::ConnectionFailed { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn absurd_durations_do_not_panic() {
    assert!(WebSocketConfig::from_vars([("WS_OPEN_TIMEOUT", "1e20")]).is_err());
    assert!(WebSocketConfig::from_vars([("WS_PING_INTERVAL", "1e300")]).is_err());
    let huge = Duration::MAX;
    let config = WebSocketConfig::default()
        .with_open_timeout(huge)
        .with_close_timeout(huge)
        .with_ping_interval(Some(huge))
        .with_ping_timeout(Some(huge))
        .with_reconnect_backoff_max(huge);
    let _ = config.jittered_backoff_delay(80);
    let server = TestServer::start().await;
    let mut ws = step(
        WebSocketClient::builder(server.url("/echo"))
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    step(ws.send("x")).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("x"));
    step(ws.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn open_timeout_covers_a_silent_server() {
    let (addr, _) = raw_server(|s| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let err = step(
        WebSocketClient::builder(format!("ws://{addr}/"))
            .config(WebSocketConfig::default().with_open_timeout(limit))
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, WebSocketError::Timeout { after, .. } if after == limit),
        "{err:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= limit && took < limit + Duration::from_millis(500),
        "{took:?}"
    );
}

#[tokio::test]
async fn invalid_utf8_from_the_peer_is_a_protocol_error_and_closes_1007() {
    let (report_tx, report_rx) = oneshot::channel();
    let report_tx = std::sync::Mutex::new(Some(report_tx));
    let (addr, _) = raw_server(move |mut s| {
        let report = report_tx.lock().unwrap().take();
        async move {
            raw_handshake(&mut s, "").await;
            s.write_all(&server_frame(0x1, b"ok")).await.unwrap();
            s.write_all(&server_frame(0x1, &[0xff, 0xfe, 0x41]))
                .await
                .unwrap();
            let close = read_client_close(&mut s).await;
            if let Some(report) = report {
                let _ = report.send(close);
            }
        }
    })
    .await;
    let mut ws = connect(&format!("ws://{addr}/")).await;
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("ok"));
    let err = step(ws.recv()).await.unwrap_err();
    assert!(matches!(err, WebSocketError::Protocol(_)), "{err:?}");
    assert!(!ws.is_connected());
    let close = step(report_rx).await.unwrap();
    assert_eq!(close.map(|c| c.0), Some(1007));
}

#[tokio::test]
async fn a_dropped_tcp_connection_is_1006() {
    let (addr, _) = raw_server(|mut s| async move {
        raw_handshake(&mut s, "").await;
        s.write_all(&server_frame(0x2, b"\x01\x02")).await.unwrap();
        // Drop without a close frame.
    })
    .await;
    let mut ws = connect(&format!("ws://{addr}/")).await;
    assert_eq!(step(ws.recv()).await.unwrap().as_bytes(), b"\x01\x02");
    let item = step(ws.next()).await.expect("an error");
    let err = item.unwrap_err();
    assert_eq!(err.to_string(), "Connection closed: 1006");
    assert!(err.is_retryable());
    assert!(step(ws.next()).await.is_none());
    assert!(!ws.is_connected());
}
