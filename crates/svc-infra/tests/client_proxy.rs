//! `WebSocketClient` through an HTTP proxy set on the builder: a `CONNECT` proxy in the
//! test (`common::proxy`) in front of the axum echo server and a `wss://` echo server, all
//! on 127.0.0.1. The proxy from the environment is tested in `client_proxy_env.rs`.
#![cfg(feature = "client")]

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{
    client_server::{Seen, TestServer},
    proxy::{Mode, SelfSigned, TestProxy, tls_echo_server},
    raw::closed_port,
    step,
};
use futures_util::StreamExt;
use svc_infra::websocket::{
    ClientBuilder, ConnectFailure, WebSocketClient, WebSocketConfig, WebSocketError,
    websocket_connect,
};

fn quiet() -> WebSocketConfig {
    WebSocketConfig::default().with_ping_interval(None)
}

/// Sends a text and a binary message that spans many reads, and expects them back.
async fn echo_through(builder: ClientBuilder) {
    let mut ws = step(builder.config(quiet()).connect())
        .await
        .expect("connect");
    step(ws.send("through the tunnel")).await.unwrap();
    assert_eq!(
        step(ws.recv()).await.unwrap().as_text(),
        Some("through the tunnel")
    );
    step(ws.send(vec![7u8; 70_000])).await.unwrap();
    assert_eq!(
        step(ws.recv()).await.unwrap().as_bytes(),
        &[7u8; 70_000][..]
    );
    step(ws.close(1000, "")).await.unwrap();
}

/// The connect error of `builder` (with `quiet()` unless it has a config).
async fn connect_error(builder: ClientBuilder) -> WebSocketError {
    step(builder.connect()).await.expect_err("must not connect")
}

#[tokio::test]
async fn ws_goes_through_the_proxy() {
    let mut server = TestServer::start().await;
    let proxy = TestProxy::start(Mode::Tunnel).await;
    echo_through(WebSocketClient::builder(server.url("/echo")).proxy(proxy.url())).await;

    // The proxy was asked for a tunnel to the server, without credentials.
    let authority = server.addr.to_string();
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, authority);
    assert_eq!(seen[0].host.as_deref(), Some(authority.as_str()));
    assert_eq!(seen[0].authorization, None);
    // The server got the usual upgrade request through it.
    let Seen::Upgrade { headers, .. } = server.next_seen().await else {
        panic!("no upgrade");
    };
    assert_eq!(headers.get("host"), Some(&authority));
    assert!(!headers.contains_key("proxy-authorization"));

    // no_proxy() after proxy(): the last word wins, and it is "directly".
    echo_through(
        WebSocketClient::builder(server.url("/echo"))
            .proxy(proxy.url())
            .no_proxy(),
    )
    .await;
    assert_eq!(proxy.seen().len(), 1);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn an_open_timeout_past_the_clock_does_not_panic_through_the_proxy() {
    let server = TestServer::start().await;
    let proxy = TestProxy::start(Mode::Tunnel).await;
    let mut ws = step(
        WebSocketClient::builder(server.url("/echo"))
            .config(quiet().with_open_timeout(Duration::MAX))
            .proxy(proxy.url())
            .connect(),
    )
    .await
    .unwrap();
    step(ws.send("x")).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("x"));
    assert_eq!(proxy.seen().len(), 1);
}

#[tokio::test]
async fn credentials_in_the_proxy_url_are_sent_as_basic_auth() {
    let mut server = TestServer::start().await;
    let proxy = TestProxy::start(Mode::Tunnel).await;
    let url = proxy.url_with("al%40ice:p%3Ass%20w@");
    echo_through(WebSocketClient::builder(server.url("/echo")).proxy(url)).await;

    let expected = base64::engine::general_purpose::STANDARD.encode("al@ice:p:ss w");
    let seen = proxy.seen();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Basic {expected}").as_str())
    );
    // They go to the proxy only, not through the tunnel to the server.
    let Seen::Upgrade { headers, .. } = server.next_seen().await else {
        panic!("no upgrade");
    };
    assert!(!headers.contains_key("proxy-authorization"), "{headers:?}");
    assert!(!headers.contains_key("authorization"), "{headers:?}");
}

#[tokio::test]
async fn a_proxy_refusing_the_tunnel_is_an_error_with_its_status() {
    let server = TestServer::start().await;
    for (answer, status, retryable) in [
        ("407 Proxy Authentication Required", 407, false),
        ("403 Forbidden", 403, false),
        ("502 Bad Gateway", 502, true),
        ("503 Service Unavailable", 503, true),
    ] {
        let proxy = TestProxy::start(Mode::Refuse(answer)).await;
        let builder = WebSocketClient::builder(server.url("/echo"))
            .config(quiet())
            .proxy(proxy.url_with("al:hunter2@"));
        let err = connect_error(builder).await;
        let WebSocketError::ConnectionFailed {
            source:
                ConnectFailure::ProxyRefused {
                    proxy: shown,
                    status: got,
                    reason,
                },
            ..
        } = &err
        else {
            panic!("{answer}: {err:?}");
        };
        assert_eq!(*got, status);
        assert_eq!(format!("{got} {reason}"), answer);
        assert_eq!(*shown, format!("http://al:****@{}", proxy.addr));
        assert_eq!(err.is_retryable(), retryable, "{answer}");
        let text = err.to_string();
        assert!(text.contains(&status.to_string()), "{text}");
        assert!(text.contains(&proxy.addr.to_string()), "{text}");
        assert!(!format!("{text} {err:?}").contains("hunter2"), "{text}");
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn websocket_connect_gives_up_on_407_and_retries_502() {
    let server = TestServer::start().await;
    let config = quiet()
        .with_reconnect_backoff_base(Duration::from_millis(10))
        .with_reconnect_backoff_max(Duration::from_millis(10))
        .with_reconnect_max_attempts(3);
    for (answer, attempts) in [
        ("407 Proxy Authentication Required", 1),
        ("502 Bad Gateway", 3),
    ] {
        let proxy = TestProxy::start(Mode::Refuse(answer)).await;
        let builder = WebSocketClient::builder(server.url("/echo"))
            .config(config.clone())
            .proxy(proxy.url());
        let mut connections = websocket_connect(builder);
        let last = step(connections.next()).await.unwrap();
        assert!(
            matches!(
                last,
                Err(WebSocketError::ConnectionFailed {
                    source: ConnectFailure::ProxyRefused { .. },
                    ..
                })
            ),
            "{answer}: {last:?}"
        );
        assert!(step(connections.next()).await.is_none());
        assert_eq!(proxy.seen().len(), attempts, "{answer}");
    }
}

#[tokio::test]
async fn wss_goes_through_the_proxy_with_tls_end_to_end() {
    let cert = SelfSigned::new();
    let server = tls_echo_server(&cert).await;
    let proxy = TestProxy::start(Mode::Tunnel).await;
    let url = format!("wss://localhost:{}/", server.port());
    echo_through(
        WebSocketClient::builder(&url)
            .webpki_roots(false)
            .root_certificate(cert.root())
            .proxy(proxy.url()),
    )
    .await;
    assert_eq!(proxy.targets(), [format!("localhost:{}", server.port())]);

    // The certificate is checked against the server's name through the tunnel too.
    let err = connect_error(
        WebSocketClient::builder(&url)
            .config(quiet())
            .proxy(proxy.url()),
    )
    .await;
    assert!(
        matches!(
            err,
            WebSocketError::ConnectionFailed {
                source: ConnectFailure::Tls(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn https_proxies_carry_ws_and_wss_in_tls() {
    let cert = SelfSigned::new();
    let plain = TestServer::start().await;
    let secure = tls_echo_server(&cert).await;
    let proxy = TestProxy::start_tls(Mode::Tunnel, &cert).await;
    let trusting = |url: String| {
        WebSocketClient::builder(url)
            .webpki_roots(false)
            .root_certificate(cert.root())
            .proxy(proxy.url())
    };

    // ws:// in the proxy's TLS, and wss:// in TLS inside the proxy's TLS.
    echo_through(trusting(plain.url("/echo"))).await;
    echo_through(trusting(format!("wss://localhost:{}/", secure.port()))).await;
    assert_eq!(
        proxy.targets(),
        [
            plain.addr.to_string(),
            format!("localhost:{}", secure.port())
        ]
    );

    // A proxy whose certificate we do not trust: a permanent TLS error that names it.
    let err = connect_error(
        WebSocketClient::builder(plain.url("/echo"))
            .config(quiet())
            .proxy(proxy.url()),
    )
    .await;
    let WebSocketError::ConnectionFailed {
        source: ConnectFailure::Tls(why),
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(why.contains(&proxy.url()), "{why}");
    assert!(!err.is_retryable());
    assert_eq!(proxy.seen().len(), 2);
}

#[tokio::test]
async fn a_proxy_that_never_answers_times_out_within_the_open_timeout() {
    let server = TestServer::start().await;
    let proxy = TestProxy::start(Mode::Silent).await;
    let open_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = connect_error(
        WebSocketClient::builder(server.url("/echo"))
            .config(quiet().with_open_timeout(open_timeout))
            .proxy(proxy.url()),
    )
    .await;
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            WebSocketError::Timeout {
                operation: "connecting through the proxy",
                after,
            } if after == open_timeout
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(
        took >= open_timeout && took < open_timeout + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(proxy.seen().len(), 1);
}

#[tokio::test]
async fn a_proxy_that_hangs_up_or_is_down_is_a_retryable_error_naming_it() {
    let server = TestServer::start().await;
    let hangs_up = TestProxy::start(Mode::HangUp).await;
    let down = closed_port().await;
    for (proxy, what) in [
        (
            hangs_up.url_with("u:hunter2@"),
            "closed the connection before answering CONNECT",
        ),
        (format!("http://u:hunter2@{down}"), ""),
    ] {
        let err = connect_error(
            WebSocketClient::builder(server.url("/echo"))
                .config(quiet())
                .proxy(&proxy),
        )
        .await;
        let WebSocketError::ConnectionFailed {
            source: ConnectFailure::Io(io),
            ..
        } = &err
        else {
            panic!("{proxy}: {err:?}");
        };
        let text = io.to_string();
        let shown = proxy.replace("hunter2", "****");
        assert!(text.starts_with(&format!("proxy {shown}: ")), "{text}");
        assert!(text.contains(what), "{text}");
        assert!(err.is_retryable());
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn an_endless_answer_to_connect_is_cut_at_the_head_limit() {
    let server = TestServer::start().await;
    let proxy = TestProxy::start(Mode::EndlessHead).await;
    let err = connect_error(
        WebSocketClient::builder(server.url("/echo"))
            .config(quiet())
            .proxy(proxy.url()),
    )
    .await;
    let WebSocketError::ConnectionFailed {
        source: ConnectFailure::Io(io),
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(io.to_string().contains("larger than 16384 bytes"), "{io}");
}

#[tokio::test]
async fn socks_proxies_are_a_permanent_error_not_a_direct_connection() {
    let server = TestServer::start().await;
    for proxy in [
        "socks5://127.0.0.1:1080",
        "socks5h://u:hunter2@127.0.0.1:1080",
    ] {
        let err = connect_error(
            WebSocketClient::builder(server.url("/echo"))
                .config(quiet())
                .proxy(proxy),
        )
        .await;
        let WebSocketError::ConnectionFailed {
            source: ConnectFailure::InvalidRequest(why),
            ..
        } = &err
        else {
            panic!("{proxy}: {err:?}");
        };
        assert!(why.contains("SOCKS proxies are not supported"), "{why}");
        assert!(!err.is_retryable());
        assert!(!format!("{err} {err:?}").contains("hunter2"));

        // websocket_connect yields it once and stops.
        let builder = WebSocketClient::builder(server.url("/echo"))
            .config(quiet())
            .proxy(proxy);
        let mut connections = websocket_connect(builder);
        assert!(step(connections.next()).await.unwrap().is_err());
        assert!(step(connections.next()).await.is_none());
    }
    assert_eq!(server.hits(), 0);
}
