//! Token sources, precedence, the subprotocol echo, the five factories, scopes, API keys and
//! rotation, over real sockets.

mod common;

use axum::{Extension, Router, extract::ws::WebSocketUpgrade, response::Response, routing::get};
use common::{auth::*, server::serve, step};
use serde_json::json;
use svc_infra::auth::{AuthPolicy, WsAuthConfig, WsIdentity, ws_protected_router};

#[tokio::test]
async fn each_token_source_is_accepted_and_reported() {
    let addr = serve(app(auth())).await;
    let tok = user_token("alice", &["read"]);

    let o = connect(addr, &format!("/protected/ws?token={tok}"), &[]).await;
    assert_eq!(
        o.hello(),
        &json!({"id":"alice","email":"alice@example.com","scopes":["read"],"via":"query"})
    );

    let o = connect(
        addr,
        "/protected/ws",
        &[("authorization", &format!("Bearer {tok}"))],
    )
    .await;
    assert_eq!(o.hello()["via"], "header");
    // scheme is case-insensitive
    let o = connect(
        addr,
        "/protected/ws",
        &[("authorization", &format!("bEaReR {tok}"))],
    )
    .await;
    assert_eq!(o.hello()["via"], "header");

    let o = connect(
        addr,
        "/protected/ws",
        &[("sec-websocket-protocol", &format!("bearer, {tok}"))],
    )
    .await;
    assert_eq!(o.hello()["via"], "subprotocol");
}

#[tokio::test]
async fn precedence_is_query_then_header_then_subprotocol_without_fallback() {
    let addr = serve(app(auth())).await;
    let good = user_token("alice", &[]);
    let other = user_token("bob", &[]);
    let sub = format!("bearer, {}", user_token("carol", &[]));
    let bearer = format!("Bearer {other}");

    // all three: the query wins
    let o = connect(
        addr,
        &format!("/protected/ws?token={good}"),
        &[("authorization", &bearer), ("sec-websocket-protocol", &sub)],
    )
    .await;
    assert_eq!(o.hello()["id"], "alice");
    assert_eq!(o.hello()["via"], "query");
    // the offered `bearer` is still selected, or a browser would fail the handshake
    assert!(
        matches!(&o, Outcome::Open { protocol: Some(p), .. } if p == "bearer"),
        "{o:?}"
    );

    // header beats subprotocol
    let o = connect(
        addr,
        "/protected/ws",
        &[("authorization", &bearer), ("sec-websocket-protocol", &sub)],
    )
    .await;
    assert_eq!(o.hello()["id"], "bob");

    // a bad query token is not rescued by a good header
    let o = connect(
        addr,
        "/protected/ws?token=garbage",
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    assert_refused(&o, 401, "Invalid token: Not enough segments");

    // a whitespace-only query token still wins, and rejects
    let o = connect(
        addr,
        "/protected/ws?token=%20%20",
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    assert_refused(&o, 401, "Missing or invalid authentication");

    // an empty one does not count
    let o = connect(
        addr,
        "/protected/ws?token=",
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    assert_eq!(o.hello()["via"], "header");

    // a repeated ?token=: the last one wins (Starlette parity)
    let o = connect(
        addr,
        &format!("/protected/ws?token=garbage&token={good}"),
        &[],
    )
    .await;
    assert_eq!(o.hello()["id"], "alice");

    // another scheme is ignored and extraction continues to the subprotocol
    let o = connect(
        addr,
        "/protected/ws",
        &[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("sec-websocket-protocol", &sub),
        ],
    )
    .await;
    assert_eq!(o.hello()["id"], "carol");
}

#[tokio::test]
async fn subprotocol_bearer_is_echoed_so_strict_clients_accept_it() {
    let addr = serve(app(auth())).await;
    let tok = user_token("alice", &[]);
    // tokio-tungstenite, like browsers, fails the handshake when it offered protocols and none
    // was selected; these connections succeeding proves the echo.
    for (path, offered, expected) in [
        ("/protected/ws", format!("bearer, {tok}"), "bearer"),
        ("/user/ws/", format!("chat, Bearer, {tok}"), "Bearer"),
        ("/optional/ws", format!("bearer, {tok}"), "bearer"),
    ] {
        match connect(addr, path, &[("sec-websocket-protocol", &offered)]).await {
            Outcome::Open { protocol, hello } => {
                assert_eq!(protocol.as_deref(), Some(expected), "{path}");
                assert_eq!(hello["via"], "subprotocol");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    // a token by query with an unrelated offered protocol: nothing is selected for it
    let o = connect(
        addr,
        &format!("/protected/ws?token={tok}"),
        &[("sec-websocket-protocol", "chat")],
    )
    .await;
    assert!(matches!(o, Outcome::ClientError(_)), "{o:?}");
}

#[tokio::test]
async fn without_the_layer_no_echo_happens_and_strict_clients_fail() {
    // The extractor alone (plain route + Extension) authenticates, but nothing selects
    // `bearer`: tungstenite refuses the handshake. This shows the echo test above can fail.
    async fn plain(ws: WebSocketUpgrade, WsIdentity(_p): WsIdentity) -> Response {
        ws.on_upgrade(|_s| async {})
    }
    let app = Router::new()
        .route("/plain", get(plain))
        .layer(Extension(auth()));
    let addr = serve(app).await;
    let tok = user_token("alice", &[]);
    let o = connect(
        addr,
        "/plain",
        &[("sec-websocket-protocol", &format!("bearer, {tok}"))],
    )
    .await;
    match o {
        Outcome::ClientError(e) => assert!(e.to_lowercase().contains("subprotocol"), "{e}"),
        other => panic!("expected a client-side subprotocol failure, got {other:?}"),
    }
    // and the extractor still rejects before the upgrade on its own
    let o = connect(addr, "/plain", &[]).await;
    assert_refused(&o, 401, "Missing or invalid authentication");
}

#[tokio::test]
async fn a_handler_choosing_its_own_protocol_keeps_it() {
    async fn chat(ws: WebSocketUpgrade, WsIdentity(_p): WsIdentity) -> Response {
        ws.protocols(["chat"]).on_upgrade(|_s| async {})
    }
    let app: Router = ws_protected_router("/x", auth()).ws("/ws", chat).into();
    let addr = serve(app).await;
    let tok = user_token("alice", &[]);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/x/ws"),
    )
    .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("chat, bearer, {tok}").parse().unwrap(),
    );
    let (_ws, resp) = step(tokio_tungstenite::connect_async(req)).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
}

#[tokio::test]
async fn factories_behave_as_documented() {
    let addr = serve(app(auth())).await;
    let tok = user_token("alice", &["read"]);
    let admin = user_token("root", &["admin"]);
    let q = |p: &str, t: &str| format!("{p}?token={t}");

    // public: no auth at all, even with a garbage token
    assert_eq!(connect(addr, "/public/ws", &[]).await.hello(), &json!(null));
    assert_eq!(connect(addr, "/public/ws?token=x", &[]).await.status(), 101);

    // protected / user: 401 without, 101 with
    for p in ["/protected/ws", "/user/ws", "/scoped/ws", "/any/ws"] {
        assert_refused(
            &connect(addr, p, &[]).await,
            401,
            "Missing or invalid authentication",
        );
    }
    assert_eq!(
        connect(addr, &q("/protected/ws", &tok), &[]).await.status(),
        101
    );
    assert_eq!(connect(addr, &q("/user/ws", &tok), &[]).await.status(), 101);

    // scoped (all of ["admin"])
    assert_refused(
        &connect(addr, &q("/scoped/ws", &tok), &[]).await,
        403,
        "Insufficient scope",
    );
    assert_eq!(
        connect(addr, &q("/scoped/ws", &admin), &[]).await.hello()["id"],
        "root"
    );

    // optional: anonymous gets null, a valid token the principal, an invalid one 401
    assert_eq!(
        connect(addr, "/optional/ws", &[]).await.hello(),
        &json!(null)
    );
    assert_eq!(
        connect(addr, &q("/optional/ws", &tok), &[]).await.hello()["id"],
        "alice"
    );
    assert_refused(
        &connect(addr, "/optional/ws?token=a.b.c", &[]).await,
        401,
        "Invalid token: Invalid header padding",
    );
    let expired = hs256(SECRET, &json!({"sub":"alice","exp": now() - 10}));
    assert_refused(
        &connect(addr, &q("/optional/ws", &expired), &[]).await,
        401,
        "Token expired",
    );
}

#[tokio::test]
async fn every_route_answers_with_and_without_trailing_slash() {
    let addr = serve(app(auth())).await;
    let tok = user_token("alice", &["admin"]);
    for p in [
        "/public/ws",
        "/protected/ws",
        "/user/ws",
        "/scoped/ws",
        "/any/ws",
        "/optional/ws",
    ] {
        for path in [p.to_owned(), format!("{p}/")] {
            let o = connect(addr, &format!("{path}?token={tok}"), &[]).await;
            assert_eq!(o.status(), 101, "{path}");
        }
    }
    // unknown paths are 404, not 401 (the guard is a route layer)
    let o = connect(addr, "/protected/nope", &[]).await;
    assert!(matches!(o, Outcome::Refused { status: 404, .. }), "{o:?}");
}

#[tokio::test]
async fn any_of_scopes() {
    let addr = serve(app(auth())).await;
    let q = |t: String| format!("/any/ws?token={t}");
    assert_eq!(
        connect(addr, &q(user_token("a", &["ops"])), &[])
            .await
            .status(),
        101
    );
    assert_eq!(
        connect(addr, &q(user_token("b", &["admin", "x"])), &[])
            .await
            .status(),
        101
    );
    assert_refused(
        &connect(addr, &q(user_token("c", &["read"])), &[]).await,
        403,
        "Insufficient scope",
    );
    // no scopes listed: always rejected (reference §10.4)
    assert_refused(
        &connect(
            addr,
            &format!("/any/none?token={}", user_token("d", &["admin", "ops"])),
            &[],
        )
        .await,
        403,
        "Insufficient scope",
    );
    // the space-separated `scope` claim counts too
    let t = hs256(SECRET, &claims("e", json!({"scope": "read  ops"})));
    assert_eq!(
        connect(addr, &q(t), &[]).await.hello()["scopes"],
        json!(["read", "ops"])
    );
}

#[tokio::test]
async fn api_keys_on_protected_but_not_on_user_routes() {
    let addr = serve(app(auth())).await;

    let o = connect(
        addr,
        "/protected/ws",
        &[("x-api-key", "admin-key-0123456789")],
    )
    .await;
    assert_eq!(
        o.hello(),
        &json!({"id":"svc-admin","email":null,"scopes":["admin"],"via":"api_key"})
    );
    let o = connect(addr, "/protected/ws?api_key=plain-key-0123456789", &[]).await;
    assert_eq!(o.hello()["id"], "svc-plain");

    // scopes of the key count
    assert_eq!(
        connect(addr, "/scoped/ws?api_key=admin-key-0123456789", &[])
            .await
            .status(),
        101
    );
    assert_refused(
        &connect(addr, "/scoped/ws?api_key=plain-key-0123456789", &[]).await,
        403,
        "Insufficient scope",
    );

    // wrong key
    assert_refused(
        &connect(
            addr,
            "/protected/ws",
            &[("x-api-key", "admin-key-012345678X")],
        )
        .await,
        401,
        "Invalid API key",
    );
    // the user router is JWT only
    assert_refused(
        &connect(addr, "/user/ws", &[("x-api-key", "admin-key-0123456789")]).await,
        401,
        "Missing or invalid authentication",
    );
    // a JWT takes precedence over an API key
    let tok = user_token("alice", &[]);
    let o = connect(
        addr,
        &format!("/protected/ws?token={tok}"),
        &[("x-api-key", "admin-key-0123456789")],
    )
    .await;
    assert_eq!(o.hello()["via"], "query");
}

#[tokio::test]
async fn old_secrets_are_accepted_for_rotation() {
    let auth = WsAuthConfig::default()
        .with_secret(SECRET)
        .with_old_secret(OLD_SECRET)
        .build()
        .unwrap();
    let addr = serve(app(auth)).await;
    let old = hs256(OLD_SECRET, &claims("old-user", json!({})));
    let new = hs256(SECRET, &claims("new-user", json!({})));
    let other = hs256(
        "some-other-secret-0123456789abcdef0123",
        &claims("x", json!({})),
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={old}"), &[])
            .await
            .hello()["id"],
        "old-user"
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={new}"), &[])
            .await
            .hello()["id"],
        "new-user"
    );
    assert_refused(
        &connect(addr, &format!("/user/ws?token={other}"), &[]).await,
        401,
        "Invalid token: Signature verification failed",
    );
    // a claim error from the key whose signature matched is reported as such, not masked by
    // the last key's signature error (the Python code masks it, reference §10.3)
    let no_exp = hs256(OLD_SECRET, &json!({"sub": "x"}));
    assert_refused(
        &connect(addr, &format!("/user/ws?token={no_exp}"), &[]).await,
        401,
        "Invalid token: Token is missing the \"exp\" claim",
    );
    let expired = hs256(OLD_SECRET, &json!({"sub": "x", "exp": now() - 5}));
    assert_refused(
        &connect(addr, &format!("/user/ws?token={expired}"), &[]).await,
        401,
        "Token expired",
    );
}

#[tokio::test]
async fn rejections_carry_www_authenticate_and_json() {
    let addr = serve(app(auth())).await;
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/protected/ws"),
    )
    .unwrap();
    match step(tokio_tungstenite::connect_async(req)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(resp.headers()["content-type"], "application/json");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(
                body,
                json!({"error":"unauthorized","reason":"Missing or invalid authentication"})
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn extractors_work_on_plain_routes_with_an_extension() {
    let app = Router::new()
        .route("/ws", get(identity_ws))
        .route("/opt", get(optional_ws))
        .route("/any", get(any_ws))
        .layer(Extension(auth()));
    let addr = serve(app).await;
    let tok = user_token("alice", &["ops"]);
    assert_eq!(
        connect(addr, &format!("/ws?token={tok}"), &[])
            .await
            .hello()["id"],
        "alice"
    );
    assert_eq!(
        connect(addr, "/ws?api_key=admin-key-0123456789", &[])
            .await
            .hello()["id"],
        "svc-admin"
    );
    assert_eq!(connect(addr, "/opt", &[]).await.hello(), &json!(null));
    assert_refused(
        &connect(addr, "/opt?token=zzz", &[]).await,
        401,
        "Invalid token: Not enough segments",
    );
    assert_eq!(
        connect(addr, &format!("/any?token={tok}"), &[])
            .await
            .status(),
        101
    );
    let t2 = user_token("bob", &["read"]);
    assert_refused(
        &connect(addr, &format!("/any?token={t2}"), &[]).await,
        403,
        "Insufficient scope",
    );
}

#[tokio::test]
async fn extractors_without_any_auth_configured_answer_500_not_panic() {
    let app = Router::new().route("/ws", get(identity_ws));
    let addr = serve(app).await;
    let o = connect(addr, "/ws", &[]).await;
    assert!(matches!(o, Outcome::Refused { status: 500, .. }), "{o:?}");
}

#[tokio::test]
async fn the_layer_works_on_any_router() {
    let app = Router::new()
        .route("/ops", get(identity_ws))
        .route_layer(auth().layer(AuthPolicy::any_scope(["ops", "admin"])));
    let addr = serve(app).await;
    let ops = user_token("olga", &["ops"]);
    let o = connect(
        addr,
        "/ops",
        &[("sec-websocket-protocol", &format!("bearer, {ops}"))],
    )
    .await;
    match o {
        Outcome::Open { protocol, hello } => {
            assert_eq!(protocol.as_deref(), Some("bearer"));
            assert_eq!(hello["id"], "olga");
        }
        other => panic!("{other:?}"),
    }
    let read = user_token("rita", &["read"]);
    assert_refused(
        &connect(addr, &format!("/ops?token={read}"), &[]).await,
        403,
        "Insufficient scope",
    );
    assert_refused(
        &connect(addr, "/ops", &[]).await,
        401,
        "Missing or invalid authentication",
    );
}
