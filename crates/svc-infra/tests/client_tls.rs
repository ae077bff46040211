//! `wss://` with a private root: a self-signed certificate made in the test (rcgen), a
//! tokio-rustls server on 127.0.0.1, and our client trusting that root.
#![cfg(feature = "client")]

mod common;

use std::sync::Arc;

use common::step;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use svc_infra::websocket::{RootCertificate, WebSocketClient, WebSocketConfig, WebSocketError};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Starts a TLS echo server for `localhost`/`127.0.0.1`; returns its port and the
/// certificate in PEM and DER.
async fn tls_echo_server() -> (u16, String, Vec<u8>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_der = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = step(TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = step(acceptor.accept(tcp)).await else {
                    return; // the client refused our certificate
                };
                let Ok(mut ws) = step(tokio_tungstenite::accept_async(tls)).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, certified.cert.pem(), cert_der.to_vec())
}

fn quiet() -> WebSocketConfig {
    WebSocketConfig::default().with_ping_interval(None)
}

#[tokio::test]
async fn tls_round_trip_with_a_self_signed_root() {
    let (port, pem, der) = tls_echo_server().await;

    // PEM root, by host name.
    let roots = RootCertificate::from_pem(&pem).unwrap();
    assert_eq!(roots.len(), 1);
    let mut ws = step(
        WebSocketClient::builder(format!("wss://localhost:{port}/echo"))
            .config(quiet())
            .root_certificates(roots)
            .connect(),
    )
    .await
    .unwrap();
    step(ws.send("over tls")).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().as_text(), Some("over tls"));
    step(ws.send(vec![9u8; 70_000])).await.unwrap();
    assert_eq!(step(ws.recv()).await.unwrap().len(), 70_000);
    step(ws.close(1000, "")).await.unwrap();

    // DER root, by IP address, trusting only that root.
    let mut ws = step(
        WebSocketClient::builder(format!("wss://127.0.0.1:{port}/"))
            .config(quiet())
            .webpki_roots(false)
            .root_certificate(RootCertificate::from_der(der))
            .connect(),
    )
    .await
    .unwrap();
    step(ws.send_json(&serde_json::json!({"tls": true})))
        .await
        .unwrap();
    let v: serde_json::Value = step(ws.recv_json()).await.unwrap();
    assert_eq!(v["tls"], true);
}

#[tokio::test]
async fn tls_refuses_an_untrusted_certificate() {
    let (port, _, _) = tls_echo_server().await;
    let err = step(
        WebSocketClient::builder(format!("wss://localhost:{port}/"))
            .config(quiet())
            .connect(),
    )
    .await
    .unwrap_err();
    let WebSocketError::ConnectionFailed { source, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        source.to_string().to_lowercase().contains("certificate"),
        "{source}"
    );

    // websocket_connect does not retry an untrusted certificate.
    let mut clients = svc_infra::websocket::websocket_connect(
        WebSocketClient::builder(format!("wss://localhost:{port}/")).config(
            quiet()
                .with_reconnect_max_attempts(0)
                .with_reconnect_backoff_base(std::time::Duration::from_millis(10)),
        ),
    );
    let err = step(clients.next()).await.unwrap().unwrap_err();
    assert!(
        matches!(err, WebSocketError::ConnectionFailed { .. }),
        "{err:?}"
    );
    assert!(step(clients.next()).await.is_none());

    // No roots at all is a clear error too.
    let err = step(
        WebSocketClient::builder(format!("wss://localhost:{port}/"))
            .webpki_roots(false)
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no root certificates"), "{err}");

    // A PEM without certificates is refused when read.
    assert!(matches!(
        RootCertificate::from_pem("not pem"),
        Err(WebSocketError::Config(_))
    ));
}
