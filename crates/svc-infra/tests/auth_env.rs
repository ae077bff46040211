//! Configuration from environment variables (through `from_vars`, so tests never mutate the
//! process environment): secret resolution, production startup failure, dev fallback.

mod common;

use common::{auth::*, server::serve};
use serde_json::json;
use svc_infra::auth::{AuthConfigError, WsAuthConfig};

#[test]
fn production_like_environment_without_a_key_fails_at_startup() {
    for (var, value) in [
        ("APP_ENV", "production"),
        ("APP_ENV", "prod"),
        ("APP_ENV", "Staging"),
        ("APP_ENV", "test"),
        ("APP_ENV", "preview"),
        ("APP_ENV", "uat"),
        ("RAILWAY_ENVIRONMENT_NAME", "production"),
    ] {
        let err = WsAuthConfig::from_vars([(var, value)])
            .unwrap()
            .build()
            .expect_err(value);
        assert!(
            matches!(err, AuthConfigError::MissingSecret { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("AUTH_JWT__SECRET"), "{msg}");
        assert!(msg.contains(value), "{msg}");
    }
    // a secret, a public key or a JWKS URL each satisfy it
    for extra in [
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("AUTH_JWT__PUBLIC_KEY", RSA1_PUB),
        ("AUTH_JWT__JWKS_URL", "https://issuer.example/jwks.json"),
    ] {
        WsAuthConfig::from_vars([("APP_ENV", "production"), extra])
            .unwrap()
            .build()
            .unwrap_or_else(|e| panic!("{}: {e}", extra.0));
    }
    // an empty secret counts as none
    assert!(
        WsAuthConfig::from_vars([("APP_ENV", "prod"), ("AUTH_JWT__SECRET", "")])
            .unwrap()
            .build()
            .is_err()
    );
    // programmatic: the same rule
    assert!(
        WsAuthConfig::default()
            .with_production(true)
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn outside_production_a_missing_secret_is_random_never_the_python_default() {
    let auth = WsAuthConfig::from_vars([("APP_ENV", "development")])
        .unwrap()
        .build()
        .unwrap();
    let addr = serve(app(auth)).await;
    let python_default = hs256(
        "dev-only-jwt-secret-not-for-production",
        &claims("a", json!({})),
    );
    assert_refused(
        &connect(addr, &format!("/user/ws?token={python_default}"), &[]).await,
        401,
        "Invalid token: Signature verification failed",
    );
    // the same for an empty secret
    let empty = hs256("", &claims("a", json!({})));
    assert_refused(
        &connect(addr, &format!("/user/ws?token={empty}"), &[]).await,
        401,
        "Invalid token: Signature verification failed",
    );
}

#[tokio::test]
async fn full_configuration_from_variables() {
    let auth = WsAuthConfig::from_vars([
        ("JWT_SECRET", "ignored-because-a-higher-one-is-set-000000"),
        ("AUTH_JWT_SECRET", SECRET),
        ("AUTH_JWT__OLD_SECRETS", &format!("[\"{OLD_SECRET}\"]")),
        ("AUTH_JWT__AUDIENCE", "my-api, other-api"),
        ("AUTH_JWT__ISSUER", "https://issuer"),
        ("AUTH_JWT__LEEWAY", "0"),
        (
            "WS_API_KEYS",
            "svc-a:key-a-0123456789:admin publish, svc-b:key-b-0123456789",
        ),
        ("APP_ENV", "production"),
        ("UNRELATED", "x"),
    ])
    .unwrap()
    .build()
    .unwrap();
    let addr = serve(app(auth)).await;
    let c = claims("u", json!({"aud": "other-api", "iss": "https://issuer"}));
    let new = hs256(SECRET, &c);
    let old = hs256(OLD_SECRET, &c);
    let ignored = hs256("ignored-because-a-higher-one-is-set-000000", &c);
    assert_eq!(
        connect(addr, &format!("/user/ws?token={new}"), &[])
            .await
            .status(),
        101
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={old}"), &[])
            .await
            .status(),
        101
    );
    assert_eq!(
        connect(addr, &format!("/user/ws?token={ignored}"), &[])
            .await
            .status(),
        401
    );
    let no_aud = hs256(SECRET, &claims("u", json!({"iss": "https://issuer"})));
    assert_eq!(
        connect(addr, &format!("/user/ws?token={no_aud}"), &[])
            .await
            .status(),
        401
    );

    let o = connect(addr, "/scoped/ws", &[("x-api-key", "key-a-0123456789")]).await;
    assert_eq!(
        o.hello(),
        &json!({"id":"svc-a","email":null,"scopes":["admin","publish"],"via":"api_key"})
    );
    assert_refused(
        &connect(addr, "/scoped/ws?api_key=key-b-0123456789", &[]).await,
        403,
        "Insufficient scope",
    );
}

#[test]
fn bad_values_are_startup_errors_naming_the_variable() {
    for (var, value) in [
        ("AUTH_JWT__OLD_SECRETS", "not-json"),
        ("AUTH_JWT__LEEWAY", "soon"),
        ("AUTH_JWT__ALGORITHMS", "HS256,none"),
        ("AUTH_JWT__MAX_TOKEN_BYTES", "0"),
        (
            "AUTH_JWT__PUBLIC_KEY",
            "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----",
        ),
        ("AUTH_JWT__JWKS_URL", "ftp://x"),
        ("WS_API_KEYS", "name-without-key"),
    ] {
        let err = WsAuthConfig::from_vars([(var, value)]).expect_err(var);
        let msg = err.to_string();
        assert!(msg.contains(var), "{var}: {msg}");
    }
}
