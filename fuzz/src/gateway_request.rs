//! `gateway_request`: the gateway's `/ws` protocol (`docs/protocol.md`), from a received
//! message to its answer (`svc_infra::fuzzing::gateway_answer`: the JSON request parsed,
//! run against a real in-memory gateway, answered), for a sequence of messages of one
//! connection.
//!
//! Input: a flags byte (bit 0: the user has the broadcast scope; bit 1: a 256-byte
//! `max_message_size` instead of the default), then messages separated by `0xFF`: UTF-8 ones
//! are text messages, the others binary. A new gateway per input.
//!
//! Properties (a violation panics):
//! - every answer is a JSON object whose `type` is `ack`, `error`, `echo` or `presence`;
//! - a binary message, and text that is not a request, are answered with an `error`;
//! - only a valid `join`, `leave`, `publish`, `send` or `broadcast` without an `id` goes
//!   unanswered; an answer carries the request's `id` when it has one (`null` included
//!   for requests that do not parse);
//! - `echo` answers the request's `data`, `broadcast` without the scope is an `error`;
//! - `presence` agrees with the rooms the connection joined and left: a room lists the user
//!   exactly when a `join` of it succeeded and no `leave` followed; no user is connected.

use std::collections::HashSet;

use serde_json::Value;
use svc_infra::{
    fuzzing::gateway_answer,
    gateway::{Gateway, GatewayConfig},
    websocket::{WebSocketConfig, WebSocketMessage},
};

/// The user the messages come from.
pub const USER: &str = "fuzz-user";

/// The request types of the protocol.
const TYPES: [&str; 7] = [
    "join",
    "leave",
    "publish",
    "send",
    "broadcast",
    "echo",
    "presence",
];

/// Runs one input; panics only if a property is violated. Returns how deep it reached: the
/// number of requests that were not answered with an error.
pub fn run(rt: &tokio::runtime::Runtime, data: &[u8]) -> usize {
    let Some((&flags, rest)) = data.split_first() else {
        return 0;
    };
    let can_broadcast = flags & 1 != 0;
    let mut websocket = WebSocketConfig::default();
    if flags & 2 != 0 {
        websocket = websocket.with_max_message_size(256);
    }
    let config = GatewayConfig::default()
        .with_anonymous(true)
        .with_metrics(false)
        .with_websocket(websocket);
    let gateway = Gateway::new(config).expect("gateway");
    let mut joined = HashSet::new();
    rt.block_on(async {
        let mut served = 0;
        for bytes in rest.split(|b| *b == 0xFF) {
            let message = match std::str::from_utf8(bytes) {
                Ok(text) => WebSocketMessage::text(text),
                Err(_) => WebSocketMessage::binary(bytes.to_vec()),
            };
            served += usize::from(check(&gateway, can_broadcast, &message, &mut joined).await);
        }
        served
    })
}

/// Sends one message and checks its answer; true unless it was an error.
async fn check(
    gateway: &Gateway,
    can_broadcast: bool,
    message: &WebSocketMessage,
    joined: &mut HashSet<String>,
) -> bool {
    let answer = gateway_answer(gateway, USER, can_broadcast, message).await;
    let answer: Option<Value> = answer.map(|a| serde_json::from_str(&a).expect("answer is JSON"));
    let kind = answer.as_ref().map(|a| {
        let kind = a.get("type").and_then(Value::as_str).expect("answer type");
        assert!(["ack", "error", "echo", "presence"].contains(&kind), "{a}");
        if kind == "error" {
            assert!(a.get("error").is_some_and(Value::is_string), "{a}");
        }
        kind.to_owned()
    });
    let kind = kind.as_deref();

    let Some(text) = message.as_text() else {
        assert_eq!(kind, Some("error"), "binary message answered {answer:?}");
        return false;
    };
    let request: Option<Value> = serde_json::from_str(text).ok();
    let field = |name: &str| request.as_ref().and_then(|r| r.get(name));
    let id = field("id");
    let typ = field("type").and_then(Value::as_str);
    if !request.as_ref().is_some_and(Value::is_object) || !typ.is_some_and(|t| TYPES.contains(&t)) {
        assert_eq!(kind, Some("error"), "{text:?} answered {answer:?}");
    }
    let Some(answer) = answer else {
        assert!(
            matches!(
                typ,
                Some("join" | "leave" | "publish" | "send" | "broadcast")
            ),
            "{text:?} got no answer"
        );
        assert!(
            id.is_none_or(Value::is_null),
            "{text:?} has an id, got no answer"
        );
        if typ == Some("join") {
            joined.insert(room(field("room")));
        } else if typ == Some("leave") {
            joined.remove(&room(field("room")));
        }
        return true;
    };
    match (id, answer.get("id")) {
        (Some(sent), Some(got)) => assert_eq!(sent, got, "{text:?}"),
        (Some(sent), None) => assert!(sent.is_null(), "{text:?}: the answer lost the id"),
        (None, Some(got)) => panic!("{text:?}: answer has an id {got} the request had not"),
        (None, None) => {}
    }
    match (typ, kind) {
        (Some("join"), Some("ack")) => {
            joined.insert(room(field("room")));
        }
        (Some("leave"), Some("ack")) => {
            joined.remove(&room(field("room")));
        }
        (Some("echo"), Some("echo")) => assert_eq!(answer.get("data"), field("data")),
        (Some("broadcast"), Some(k)) if !can_broadcast => assert_eq!(k, "error"),
        (Some("presence"), Some("presence")) => {
            let users = answer
                .get("users")
                .and_then(Value::as_array)
                .expect("users");
            let expected: Vec<Value> = match field("room") {
                Some(Value::String(r)) if joined.contains(r) => vec![Value::from(USER)],
                _ => Vec::new(),
            };
            assert_eq!(users, &expected, "{text:?} (joined {joined:?})");
        }
        (_, Some("ack" | "error")) => {}
        (t, k) => panic!("{text:?} ({t:?}) answered {k:?}"),
    }
    kind != Some("error")
}

fn room(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .expect("a valid request's room")
        .to_owned()
}
