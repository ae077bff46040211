//! The fuzzing entry point shared by `fuzz_targets/auth_extract.rs` (cargo fuzz, nightly) and
//! `crates/svc-infra/tests/auth_fuzz.rs` (a seeded random loop on stable).
//!
//! The input is split on `0xFF` bytes into up to six fields: query string, `Authorization`,
//! `Sec-WebSocket-Protocol`, `X-API-Key`, a raw token for `verify_token`, and a policy selector.
//! Invalid header bytes are skipped (hyper would refuse them before us). Checked properties:
//! nothing panics, and no input authenticates except the known API key (no JWT can be forged
//! without the secret).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use svc_infra::auth::{ApiKey, AuthPolicy, TokenSource, WsAuth, WsAuthConfig};

/// The secret of the authenticator under test.
pub(crate) const SECRET: &str = "fuzz-secret-0123456789abcdef0123456789abcdef";
/// The one API key that is allowed to authenticate.
pub(crate) const API_KEY: &str = "fuzz-api-key-0123456789";

/// The authenticator under test: a secret, one API key, aud/iss not configured.
pub(crate) fn auth() -> WsAuth {
    WsAuthConfig::default()
        .with_secret(SECRET)
        .with_api_key(ApiKey::new("fuzz", API_KEY, ["admin"]))
        .build()
        .expect("fuzz auth config")
}

/// Runs one input; panics only if a property is violated.
pub(crate) fn run(rt: &tokio::runtime::Runtime, auth: &WsAuth, data: &[u8]) {
    let mut fields = data.split(|b| *b == 0xFF);
    let query = fields.next().and_then(|f| std::str::from_utf8(f).ok());
    let mut headers = HeaderMap::new();
    for name in ["authorization", "sec-websocket-protocol", "x-api-key"] {
        if let Some(v) = fields.next().and_then(|f| HeaderValue::from_bytes(f).ok()) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let raw_token = fields.next().map(String::from_utf8_lossy);
    let policy = match fields.next().and_then(|f| f.first()).map(|b| b % 5) {
        Some(0) => AuthPolicy::jwt_only(),
        Some(1) => AuthPolicy::optional(),
        Some(2) => AuthPolicy::all_scopes(["admin"]),
        Some(3) => AuthPolicy::any_scope(Vec::<String>::new()),
        _ => AuthPolicy::required(),
    };

    rt.block_on(async {
        if let Ok(Some(p)) = auth.authenticate(query, &headers, &policy).await {
            assert_eq!(p.via, TokenSource::ApiKey, "forged JWT accepted: {p:?}");
            assert_eq!(p.id, "fuzz");
        }
        if let Some(t) = raw_token {
            let r = auth.verify_token(&t, TokenSource::Query).await;
            assert!(r.is_err(), "forged token accepted: {t:?}");
        }
    });
}
