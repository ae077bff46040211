//! The benchmark app behaves exactly as issue 3 specifies (the same code `svc-ws bench`
//! measures), including bad input: malformed JSON is ignored and the connection stays.

#[allow(dead_code)]
#[path = "../examples/bench_app.rs"]
mod bench_app;
mod common;

use std::time::Duration;

use common::{eventually, raw::http, server::*, within};
use futures_util::SinkExt;
use svc_infra::websocket::ConnectionManager;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn echo_broadcast_stats_and_the_echo_endpoint() {
    let manager = ConnectionManager::default();
    let addr = serve(bench_app::app(manager.clone())).await;
    let mut a = connect(addr, "/ws/a").await;
    let mut b = connect(addr, "/ws/b").await;
    eventually("2 connections", || manager.connection_count() == 2).await;

    // Malformed JSON, JSON without a known type, binary: ignored; the connection stays.
    for junk in [
        "{not json",
        "[1,2",
        r#"{"type":"nope"}"#,
        r#"{"type":7}"#,
        "42",
    ] {
        send_text(&mut a, junk).await;
    }
    within("binary", a.send(Message::binary(vec![1u8, 2, 3])))
        .await
        .unwrap();
    // "echo" goes back unchanged to the sender only.
    let echo = r#"{"type":"echo","n":1,"s":"é"}"#;
    send_text(&mut a, echo).await;
    assert_eq!(next_text(&mut a).await, echo);
    assert_silent(&mut b, Duration::from_millis(100)).await;
    // "broadcast" goes unchanged to everyone, the sender included.
    let all = r#"{"type":"broadcast","seq":1,"ts":2}"#;
    send_text(&mut b, all).await;
    assert_eq!(next_text(&mut a).await, all);
    assert_eq!(next_text(&mut b).await, all);

    // /stats counts connections.
    let (status, body) = http(addr, "GET", "/stats", "", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"connections":2}"#));

    // /echo echoes text and binary unchanged.
    let mut e = connect(addr, "/echo").await;
    send_text(&mut e, "plain text").await;
    assert_eq!(next_text(&mut e).await, "plain text");
    within("binary", e.send(Message::binary(vec![0u8, 255])))
        .await
        .unwrap();
    loop {
        match within("binary echo", futures_util::StreamExt::next(&mut e)).await {
            Some(Ok(Message::Binary(data))) => {
                assert_eq!(&data[..], &[0, 255]);
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected the binary echo, got {other:?}"),
        }
    }
    assert_eq!(manager.connection_count(), 2, "/echo is not registered");
}
