//! The proxy from the environment (`http_proxy`, `HTTPS_PROXY`, `NO_PROXY`), end to end.
//!
//! The environment is the process's, and changing it in a running test is `unsafe` (and
//! would race other tests), so this binary holds one test that runs itself again as a
//! child process with the proxy variables set: the parent starts the servers and the
//! proxies and checks what the proxies saw; the child connects as a user would.
#![cfg(feature = "client")]

mod common;

use std::time::Duration;

use common::{
    client_server::TestServer,
    proxy::{Mode, SelfSigned, TestProxy, tls_echo_server},
    step,
};
use futures_util::StreamExt;
use svc_infra::websocket::{
    ClientBuilder, RootCertificate, WebSocketClient, WebSocketConfig, websocket_connect,
};

/// Set in the child: where the servers are, and what to trust.
const CHILD: &str = "SVC_INFRA_TEST_PROXY_CHILD";
const WS_URL: &str = "SVC_INFRA_TEST_WS";
const WS_LOCALHOST_URL: &str = "SVC_INFRA_TEST_WS_LOCALHOST";
const WSS_URL: &str = "SVC_INFRA_TEST_WSS";
const ROOT_PEM: &str = "SVC_INFRA_TEST_ROOT_PEM";
const OTHER_PROXY: &str = "SVC_INFRA_TEST_OTHER_PROXY";

/// Every variable that could name a proxy: cleared in the child before ours are set.
const PROXY_VARS: &[&str] = &[
    "ws_proxy",
    "WS_PROXY",
    "wss_proxy",
    "WSS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
];

#[tokio::test]
async fn proxy_from_the_environment() {
    if std::env::var_os(CHILD).is_some() {
        child().await;
    } else {
        parent().await;
    }
}

async fn parent() {
    let server = TestServer::start().await;
    let cert = SelfSigned::new();
    let secure = tls_echo_server(&cert).await;
    let from_env = TestProxy::start(Mode::Tunnel).await;
    let explicit = TestProxy::start(Mode::Tunnel).await;
    let port = server.addr.port();

    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "proxy_from_the_environment", "--nocapture"])
        .kill_on_drop(true);
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    command
        .env(CHILD, "1")
        .env(WS_URL, server.url("/echo"))
        .env(WS_LOCALHOST_URL, format!("ws://localhost:{port}/echo"))
        .env(WSS_URL, format!("wss://localhost:{}/", secure.port()))
        .env(ROOT_PEM, &cert.pem)
        .env(OTHER_PROXY, explicit.url())
        // ws:// by the lowercase name, wss:// by the uppercase one.
        .env("http_proxy", from_env.url())
        .env("HTTPS_PROXY", from_env.url())
        // Port-specific: ws://localhost:{port} goes directly, wss://localhost:{other} not.
        .env("NO_PROXY", format!("example.invalid, localhost:{port}"));
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the child test timed out")
        .unwrap();
    assert!(
        output.status.success(),
        "the child test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // http_proxy carried the first ws:// connection and websocket_connect's; HTTPS_PROXY
    // the wss:// one; NO_PROXY and no_proxy() sent two directly; proxy() overrode it all.
    assert_eq!(
        from_env.targets(),
        [
            server.addr.to_string(),
            format!("localhost:{}", secure.port()),
            server.addr.to_string(),
        ]
    );
    assert_eq!(explicit.targets(), [server.addr.to_string()]);
    assert_eq!(server.hits(), 5);
}

fn quiet() -> WebSocketConfig {
    WebSocketConfig::default().with_ping_interval(None)
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

async fn echo(builder: ClientBuilder, what: &str) {
    let mut ws = step(builder.config(quiet()).connect())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    step(ws.send(what)).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some(what));
    step(ws.close(1000, "")).await.unwrap();
}

/// The connections, in the order the parent expects to see them at the proxies.
async fn child() {
    let ws = var(WS_URL);
    // 1. http_proxy.
    echo(WebSocketClient::builder(&ws), "via http_proxy").await;
    // 2. NO_PROXY lists localhost on this port: directly.
    echo(WebSocketClient::builder(var(WS_LOCALHOST_URL)), "NO_PROXY").await;
    // 3. no_proxy(): directly.
    echo(WebSocketClient::builder(&ws).no_proxy(), "no_proxy()").await;
    // 4. proxy(): the other proxy, whatever the environment says.
    echo(
        WebSocketClient::builder(&ws).proxy(var(OTHER_PROXY)),
        "proxy()",
    )
    .await;
    // 5. wss:// through HTTPS_PROXY (NO_PROXY's localhost entry is for another port).
    let roots = RootCertificate::from_pem(var(ROOT_PEM)).unwrap();
    echo(
        WebSocketClient::builder(var(WSS_URL))
            .webpki_roots(false)
            .root_certificates(roots),
        "via HTTPS_PROXY",
    )
    .await;
    // 6. websocket_connect chooses the same way.
    let mut connections = websocket_connect(WebSocketClient::builder(&ws).config(quiet()));
    let mut client = step(connections.next()).await.unwrap().unwrap();
    step(client.send("websocket_connect")).await.unwrap();
    assert_eq!(
        step(client.recv()).await.unwrap().as_text(),
        Some("websocket_connect")
    );
    step(client.close(1000, "")).await.unwrap();
    assert!(step(connections.next()).await.is_none());
}
