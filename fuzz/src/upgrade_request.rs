//! `upgrade_request`: the server's upgrade extractor (`WsUpgrade`'s `FromRequestParts`), its
//! subprotocol selection and its origin check (`WebSocketConfig::allows_origin`), on
//! request parts built from the input, then the answer (`on_upgrade`).
//!
//! Input: a method byte ([`METHODS`]), a version byte ([`VERSIONS`]), a flags byte (bit 0:
//! no `OnUpgrade` in the extensions, as when hyper does not serve the connection; bits 1–2:
//! the allowed origins, from [`ORIGIN_POLICIES`]; bit 3: a `ConnectionManager` installed,
//! whose admission limits are checked; bit 4: that manager is shutting down), then headers
//! separated by `0xFF`: each
//! starts with a byte that picks its name from [`NAMES`] (or, past the list, takes the name
//! from the header's bytes up to a `:`), and the rest is its value. Header names and values
//! that hyper would refuse are skipped.
//!
//! Properties (a violation panics):
//! - the request is accepted exactly when, by an independent reading, it is a `GET` over
//!   HTTP/1.1 with an `upgrade` token in `Connection`, a `websocket` token in `Upgrade`,
//!   `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key` and an `OnUpgrade`; a refusal is
//!   answered 400, 405 or 426;
//! - the offered subprotocols are the `Sec-WebSocket-Protocol` list, and the one selected
//!   is the first supported one the client offered, as the client spelled it;
//! - the answer is 403 exactly when an `Origin` is present and not allowed, else 503 with
//!   `Retry-After` when the installed manager is shutting down, else 101 with `Upgrade`,
//!   `Connection` and the right `Sec-WebSocket-Accept` (tungstenite computes the expected
//!   one);
//! - the upgrade task it starts ends (no task is left behind).

use axum::{
    extract::FromRequestParts,
    http::{HeaderName, HeaderValue, Method, Request, StatusCode, Version, header},
    response::IntoResponse,
};
use svc_infra::websocket::{ConnectionManager, WebSocketConfig, WsUpgrade};

/// The methods a request can have.
pub const METHODS: [&str; 6] = ["GET", "GET", "GET", "POST", "HEAD", "get"];

/// The versions a request can have.
pub const VERSIONS: [Version; 5] = [
    Version::HTTP_11,
    Version::HTTP_11,
    Version::HTTP_10,
    Version::HTTP_2,
    Version::HTTP_09,
];

/// The header names a header's first byte picks from.
pub const NAMES: [&str; 7] = [
    "connection",
    "upgrade",
    "sec-websocket-version",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "origin",
    "host",
];

/// The allowed-origin lists a run can configure (`None`: any origin).
pub const ORIGIN_POLICIES: [Option<&[&str]>; 4] = [
    None,
    Some(&["https://a.example"]),
    Some(&["https://a.example", "HTTP://B.example"]),
    Some(&[]),
];

/// The subprotocols the server supports, in its order of preference.
const SUPPORTED: [&str; 2] = ["superchat", "chat"];

/// Runs one input; panics only if a property is violated. Returns how deep it reached:
/// 0 refused, 1 accepted then refused for its origin, 2 answered 101.
pub fn run(rt: &tokio::runtime::Runtime, data: &[u8]) -> usize {
    let [method, version, flags, rest @ ..] = data else {
        return 0;
    };
    let method = Method::from_bytes(METHODS[usize::from(*method) % METHODS.len()].as_bytes())
        .expect("method");
    let version = VERSIONS[usize::from(*version) % VERSIONS.len()];
    let upgradable = flags & 1 == 0;
    let policy = ORIGIN_POLICIES[usize::from((flags >> 1) & 3)];
    let manager = (flags & 8 != 0).then(|| ConnectionManager::new(WebSocketConfig::default()));
    let shutting_down = manager.is_some() && flags & 16 != 0;

    let mut request = Request::builder()
        .method(method.clone())
        .version(version)
        .uri("/ws")
        .body(())
        .expect("request");
    if !rest.is_empty() {
        for entry in rest.split(|b| *b == 0xFF) {
            let Some((&pick, value)) = entry.split_first() else {
                continue;
            };
            let (name, value) = match NAMES.get(usize::from(pick) % (NAMES.len() + 1)) {
                Some(name) => (HeaderName::from_static(name), value),
                None => {
                    let at = value.iter().position(|b| *b == b':').unwrap_or(value.len());
                    let Ok(name) = HeaderName::from_bytes(&value[..at]) else {
                        continue;
                    };
                    (name, value.get(at + 1..).unwrap_or_default())
                }
            };
            if let Ok(value) = HeaderValue::from_bytes(value) {
                request.headers_mut().append(name, value);
            }
        }
    }
    // Without hyper's connection behind it this is the "no upgrade" handle: awaiting it
    // fails at once, as a client that went away.
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, ()) = request.into_parts();
    if upgradable {
        parts.extensions.insert(on_upgrade);
    }
    if let Some(manager) = &manager {
        parts.extensions.insert(manager.clone());
    }
    let headers = parts.headers.clone();

    let should_accept = method == Method::GET
        && version == Version::HTTP_11
        && has_token(&headers, &header::CONNECTION, "upgrade")
        && has_token(&headers, &header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
        && headers.contains_key(header::SEC_WEBSOCKET_KEY)
        && upgradable;

    rt.block_on(async {
        if let (true, Some(manager)) = (shutting_down, &manager) {
            manager.shutdown(1001, "", std::time::Duration::ZERO).await;
        }
        let upgrade = match WsUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => {
                assert!(!should_accept, "refused ({rejection}) a valid request");
                let status = rejection.into_response().status();
                assert!(
                    [400, 405, 426].contains(&status.as_u16()),
                    "refused with {status}"
                );
                return 0;
            }
        };
        assert!(should_accept, "accepted an invalid request: {headers:?}");

        let offered = tokens(&headers, &header::SEC_WEBSOCKET_PROTOCOL);
        assert_eq!(upgrade.offered_protocols(), offered.as_slice());
        let selected = SUPPORTED
            .iter()
            .find_map(|s| offered.iter().find(|o| o.eq_ignore_ascii_case(s)));

        let mut config = WebSocketConfig::default();
        if let Some(list) = policy {
            config = config.with_allowed_origins(list.iter().copied());
        }
        let origin = headers.get(header::ORIGIN);
        let origin_ok = match (policy, origin) {
            (None, _) | (Some(_), None) => true,
            (Some(list), Some(origin)) => {
                visible_ascii(origin)
                    && list
                        .iter()
                        .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
            }
        };

        let response = upgrade
            .config(config)
            .protocols(SUPPORTED)
            .for_user("fuzz-user")
            .on_upgrade(|_socket| async {});
        let reached = if origin_ok && !shutting_down { 2 } else { 1 };
        if !origin_ok {
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{origin:?}");
        } else if shutting_down {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(response.headers().contains_key(header::RETRY_AFTER));
        } else {
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            let h = response.headers();
            let key = headers.get(header::SEC_WEBSOCKET_KEY).expect("key");
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            assert_eq!(
                h.get(header::SEC_WEBSOCKET_ACCEPT).map(|v| v.as_bytes()),
                Some(accept.as_bytes())
            );
            assert_eq!(
                h.get(header::UPGRADE).map(|v| v.as_bytes()),
                Some(&b"websocket"[..])
            );
            assert_eq!(
                h.get(header::CONNECTION).map(|v| v.as_bytes()),
                Some(&b"upgrade"[..])
            );
            assert_eq!(
                h.get(header::SEC_WEBSOCKET_PROTOCOL).map(|v| v.as_bytes()),
                selected.map(String::as_bytes),
            );
        }
        // The upgrade task fails at once (nothing to upgrade) and must end.
        for _ in 0..16 {
            if tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                == 0
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0,
            "the upgrade task did not end"
        );
        reached
    })
}

/// Visible ASCII, space and tab only: what `HeaderValue::to_str` reads as text.
fn visible_ascii(v: &HeaderValue) -> bool {
    v.as_bytes()
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7F).contains(b))
}

/// The comma-separated items of every text value of `name`, trimmed, empty ones dropped.
fn tokens(headers: &axum::http::HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter(|v| visible_ascii(v))
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim_matches([' ', '\t']).to_owned())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn has_token(headers: &axum::http::HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(token))
}
