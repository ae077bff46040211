//! Asymmetric keys: PEM public keys, and JWKS served by a local test server (cache, refetch on
//! unknown `kid`, rate limit, rollover, outage, size cap).

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use common::{auth::*, server::serve, step};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use svc_infra::auth::{WsAuth, WsAuthConfig};

#[derive(Clone)]
struct JwksServer {
    doc: Arc<Mutex<(StatusCode, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn set_keys(&self, kids: &[&str]) {
        let all: Value = serde_json::from_str(JWKS_KEYS).unwrap();
        let keys: Vec<Value> = kids.iter().map(|k| all[*k].clone()).collect();
        *self.doc.lock().unwrap() = (StatusCode::OK, json!({ "keys": keys }).to_string());
    }

    fn set_raw(&self, status: StatusCode, body: String) {
        *self.doc.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn jwks_handler(State(s): State<JwksServer>) -> impl IntoResponse {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    let (status, body) = s.doc.lock().unwrap().clone();
    (status, [("content-type", "application/json")], body)
}

async fn jwks_server(kids: &[&str]) -> (JwksServer, String) {
    let s = JwksServer {
        doc: Arc::new(Mutex::new((StatusCode::OK, String::new()))),
        fetches: Arc::new(AtomicUsize::new(0)),
    };
    s.set_keys(kids);
    let app = Router::new()
        .route("/.well-known/jwks.json", get(jwks_handler))
        .with_state(s.clone());
    let addr = serve(app).await;
    (s, format!("http://{addr}/.well-known/jwks.json"))
}

fn jwks_auth(url: &str, min_refresh: Duration, ttl: Duration) -> WsAuth {
    WsAuthConfig::default()
        .with_jwks_url(url)
        .with_jwks_min_refresh_interval(min_refresh)
        .with_jwks_cache_ttl(ttl)
        .with_jwks_timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

fn rs(kid: &str, priv_pem: &str, sub: &str) -> String {
    sign(
        Algorithm::RS256,
        &rsa_key(priv_pem),
        Some(kid),
        &claims(sub, json!({"scopes": ["read"]})),
    )
}

#[tokio::test]
async fn jwks_rsa_ec_and_ed25519_keys_verify() {
    let (jwks, url) = jwks_server(&["rsa1", "ec", "ed"]).await;
    let addr = serve(app(jwks_auth(
        &url,
        Duration::from_secs(60),
        Duration::from_secs(300),
    )))
    .await;

    let t = rs("rsa1", RSA1_PRIV, "r");
    assert_eq!(
        connect(addr, &format!("/user/ws?token={t}"), &[])
            .await
            .hello()["id"],
        "r"
    );

    let ec = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC_PRIV.as_bytes()).unwrap(),
        Some("ec"),
        &claims("e", json!({})),
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={ec}"), &[])
            .await
            .hello()["id"],
        "e"
    );

    let ed = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(ED_PRIV.as_bytes()).unwrap(),
        Some("ed"),
        &claims("d", json!({})),
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={ed}"), &[])
            .await
            .hello()["id"],
        "d"
    );

    // no kid: every key of the right type is tried
    let nokid = sign(
        Algorithm::RS256,
        &rsa_key(RSA1_PRIV),
        None,
        &claims("n", json!({})),
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={nokid}"), &[])
            .await
            .hello()["id"],
        "n"
    );

    // a kid of one key with the signature of another is refused
    let wrong = rs("rsa1", RSA2_PRIV, "w");
    assert_refused(
        &connect(addr, &format!("/user/ws?token={wrong}"), &[]).await,
        401,
        "Invalid token: Signature verification failed",
    );
    // the key alg is pinned by the JWK: PS256 under an RS256 key is refused
    let ps = sign(
        Algorithm::PS256,
        &rsa_key(RSA1_PRIV),
        Some("rsa1"),
        &claims("p", json!({})),
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={ps}"), &[])
            .await
            .status(),
        401
    );
    // the cache served all of that from one fetch
    assert_eq!(jwks.fetches(), 1);
}

#[tokio::test]
async fn key_rollover_refetches_on_unknown_kid() {
    let (jwks, url) = jwks_server(&["rsa1"]).await;
    let addr = serve(app(jwks_auth(
        &url,
        Duration::ZERO,
        Duration::from_secs(300),
    )))
    .await;

    let t1 = rs("rsa1", RSA1_PRIV, "one");
    assert_eq!(
        connect(addr, &format!("/user/ws?token={t1}"), &[])
            .await
            .hello()["id"],
        "one"
    );
    assert_eq!(jwks.fetches(), 1);

    // the issuer rolls over to rsa2 and publishes both keys
    jwks.set_keys(&["rsa1", "rsa2"]);
    let t2 = rs("rsa2", RSA2_PRIV, "two");
    assert_eq!(
        connect(addr, &format!("/user/ws?token={t2}"), &[])
            .await
            .hello()["id"],
        "two"
    );
    assert_eq!(
        jwks.fetches(),
        2,
        "an unknown kid caused exactly one refetch"
    );
    // known kids do not refetch
    assert_eq!(
        connect(addr, &format!("/user/ws?token={t1}"), &[])
            .await
            .status(),
        101
    );
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn retired_keys_stop_working_after_the_cache_expires() {
    let (jwks, url) = jwks_server(&["rsa1"]).await;
    let addr = serve(app(jwks_auth(
        &url,
        Duration::ZERO,
        Duration::from_millis(200),
    )))
    .await;
    let t1 = rs("rsa1", RSA1_PRIV, "one");
    assert_eq!(
        connect(addr, &format!("/user/ws?token={t1}"), &[])
            .await
            .status(),
        101
    );
    jwks.set_keys(&["rsa2"]);
    step(tokio::time::sleep(Duration::from_millis(300))).await;
    assert_refused(
        &connect(addr, &format!("/user/ws?token={t1}"), &[]).await,
        401,
        "Invalid token: Unknown key id (kid)",
    );
    assert!(jwks.fetches() >= 2);
}

#[tokio::test]
async fn unknown_kids_cannot_hammer_the_jwks_endpoint() {
    let (jwks, url) = jwks_server(&["rsa1"]).await;
    let addr = serve(app(jwks_auth(
        &url,
        Duration::from_secs(60),
        Duration::from_secs(300),
    )))
    .await;
    let good = rs("rsa1", RSA1_PRIV, "g");
    assert_eq!(
        connect(addr, &format!("/user/ws?token={good}"), &[])
            .await
            .status(),
        101
    );
    assert_eq!(jwks.fetches(), 1);
    for i in 0..20 {
        let t = rs(&format!("made-up-{i}"), RSA1_PRIV, "x");
        assert_refused(
            &connect(addr, &format!("/user/ws?token={t}"), &[]).await,
            401,
            "Invalid token: Unknown key id (kid)",
        );
    }
    assert_eq!(
        jwks.fetches(),
        1,
        "rate limit: no refetch within the interval"
    );
}

#[tokio::test]
async fn jwks_outage_is_503_and_recovers() {
    let (jwks, url) = jwks_server(&["rsa1"]).await;
    jwks.set_raw(StatusCode::INTERNAL_SERVER_ERROR, "oops".into());
    let addr = serve(app(jwks_auth(
        &url,
        Duration::ZERO,
        Duration::from_secs(300),
    )))
    .await;
    let t = rs("rsa1", RSA1_PRIV, "one");
    assert_refused(
        &connect(addr, &format!("/user/ws?token={t}"), &[]).await,
        503,
        "Signing keys unavailable",
    );
    // garbage and oversized documents count as outages too
    jwks.set_raw(StatusCode::OK, "{not json".into());
    assert_eq!(
        connect(addr, &format!("/user/ws?token={t}"), &[])
            .await
            .status(),
        503
    );
    jwks.set_raw(
        StatusCode::OK,
        format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(300 * 1024)),
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={t}"), &[])
            .await
            .status(),
        503
    );
    // back up
    jwks.set_keys(&["rsa1"]);
    assert_eq!(
        connect(addr, &format!("/user/ws?token={t}"), &[])
            .await
            .hello()["id"],
        "one"
    );
    // a request without a token never touches the JWKS
    let before = jwks.fetches();
    assert_eq!(connect(addr, "/user/ws", &[]).await.status(), 401);
    assert_eq!(jwks.fetches(), before);
}

#[tokio::test]
async fn unreachable_jwks_url_is_503_within_the_timeout() {
    // bind then drop to get a port with nothing listening
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let auth = jwks_auth(
        &format!("http://127.0.0.1:{port}/jwks"),
        Duration::ZERO,
        Duration::from_secs(300),
    );
    let addr = serve(app(auth)).await;
    let t = rs("rsa1", RSA1_PRIV, "one");
    assert_refused(
        &connect(addr, &format!("/user/ws?token={t}"), &[]).await,
        503,
        "Signing keys unavailable",
    );
}

#[tokio::test]
async fn pem_public_keys_of_each_type() {
    let auth = WsAuthConfig::default()
        .with_public_key_pem(RSA1_PUB)
        .unwrap()
        .with_public_key_pem(EC_PUB)
        .unwrap()
        .with_public_key_pem(ED_PUB)
        .unwrap()
        .build()
        .unwrap();
    let addr = serve(app(auth)).await;
    let c = claims("k", json!({}));
    for (alg, key) in [
        (Algorithm::RS256, rsa_key(RSA1_PRIV)),
        (Algorithm::RS512, rsa_key(RSA1_PRIV)),
        (Algorithm::PS256, rsa_key(RSA1_PRIV)),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PRIV.as_bytes()).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_PRIV.as_bytes()).unwrap(),
        ),
    ] {
        let t = sign(alg, &key, None, &c);
        assert_eq!(
            connect(addr, &format!("/user/ws?token={t}"), &[])
                .await
                .status(),
            101,
            "{alg:?}"
        );
    }
    // no secret configured: HS256 is not accepted at all
    let hs = hs256(SECRET, &c);
    assert_refused(
        &connect(addr, &format!("/user/ws?token={hs}"), &[]).await,
        401,
        "Invalid token: The specified alg value is not allowed",
    );
    // bad PEM is a startup error
    assert!(
        WsAuthConfig::default()
            .with_public_key_pem("not a key")
            .is_err()
    );
}
