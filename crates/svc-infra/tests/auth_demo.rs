//! The `auth_demo` example's own router, exercised over real sockets: every route, the hello
//! message, the echo, API keys from `WS_API_KEYS` (through `from_vars`).

mod common;
#[allow(dead_code)]
#[path = "../examples/auth_demo.rs"]
mod demo;

use common::{auth::*, server::serve};
use serde_json::json;
use svc_infra::auth::WsAuthConfig;

#[tokio::test]
async fn demo_routes_behave_as_the_issue_specifies() {
    let auth = WsAuthConfig::from_vars([
        ("AUTH_JWT__SECRET", SECRET),
        (
            "WS_API_KEYS",
            "billing:billing-key-123:admin,reader:reader-key-456:read",
        ),
    ])
    .unwrap()
    .build()
    .unwrap();
    let addr = serve(demo::app(auth)).await;
    let user = user_token("alice", &["read"]);
    let ops = user_token("olga", &["ops"]);

    assert_eq!(connect(addr, "/public/ws", &[]).await.hello(), &json!(null));
    assert_eq!(
        connect(addr, "/optional/ws/", &[]).await.hello(),
        &json!(null)
    );
    assert_eq!(
        connect(addr, &format!("/protected/ws?token={user}"), &[])
            .await
            .hello(),
        &json!({"id":"alice","email":"alice@example.com","scopes":["read"],"via":"query"})
    );
    assert_eq!(
        connect(addr, "/protected/ws", &[("x-api-key", "billing-key-123")])
            .await
            .hello(),
        &json!({"id":"billing","email":null,"scopes":["admin"],"via":"api_key"})
    );
    assert_refused(
        &connect(addr, "/user/ws", &[("x-api-key", "billing-key-123")]).await,
        401,
        "Missing or invalid authentication",
    );
    let o = connect(
        addr,
        "/user/ws/",
        &[("sec-websocket-protocol", &format!("bearer, {user}"))],
    )
    .await;
    assert_eq!(o.hello()["via"], "subprotocol");
    assert_refused(
        &connect(addr, &format!("/scoped/ws?token={user}"), &[]).await,
        403,
        "Insufficient scope",
    );
    assert_eq!(
        connect(addr, "/scoped/ws?api_key=billing-key-123", &[])
            .await
            .hello()["id"],
        "billing"
    );
    assert_eq!(
        connect(addr, &format!("/any/ws?token={ops}"), &[])
            .await
            .hello()["id"],
        "olga"
    );
    assert_refused(
        &connect(addr, &format!("/any/ws?token={user}"), &[]).await,
        403,
        "Insufficient scope",
    );
    assert_refused(
        &connect(addr, "/any/ws?api_key=reader-key-456", &[]).await,
        403,
        "Insufficient scope",
    );
    assert_refused(
        &connect(addr, "/optional/ws?token=bad", &[]).await,
        401,
        "Invalid token: Not enough segments",
    );
}
