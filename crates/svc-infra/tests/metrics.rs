//! `/metrics` of a gateway, read with a parser of the Prometheus exposition format
//! (`openmetrics-parser`): every series of the catalogue (`websocket::metrics::SERIES` and
//! `gateway::METRICS`, the table of `docs/operations.md`) is there from the first scrape,
//! described, of its type and at zero; nothing outside the catalogue is; and after a scripted
//! run (connect, refusals of every kind, join, publish, bad requests, HTTP publishes, a slow
//! consumer) the counters and gauges say what happened.
//!
//! One test in this binary: the recorder is process-wide, so "fresh" means a process whose
//! first gateway this is.

mod common;

use std::collections::HashSet;

use common::{
    gateway::*,
    raw::{http, read_server_frame, upgrade_on, upgrade_request},
    within,
};
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue, prometheus};
use serde_json::{Value, json};
use svc_infra::{
    gateway::{GatewayConfig, METRICS},
    websocket::{
        metrics::{MetricKind, MetricSeries, SERIES},
        protocol,
    },
};
use tokio::{io::AsyncWriteExt, net::TcpStream};

type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

async fn scrape(gw: &Running) -> Exposition {
    let (status, text) = http(gw.addr, "GET", "/metrics", "", "").await;
    assert_eq!(status, 200, "{text}");
    prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("not valid exposition format: {e:?}\n{text}"))
}

/// The value of a counter or gauge, or the count of a histogram, with these labels.
fn value(expo: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let family = expo
        .families
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"));
    let wanted: Vec<String> = family
        .get_label_names()
        .iter()
        .map(|n| {
            labels
                .iter()
                .find(|(k, _)| k == n)
                .unwrap_or_else(|| panic!("{name}: label {n} not given"))
                .1
                .to_owned()
        })
        .collect();
    let sample = family
        .get_sample_by_label_values(&wanted)
        .unwrap_or_else(|| panic!("{name}{labels:?} missing"));
    match &sample.value {
        PrometheusValue::Counter(c) => c.value.as_f64(),
        PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
        PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
        PrometheusValue::Summary(s) => s.count.unwrap_or(0) as f64,
    }
}

/// Every label combination of a series, as (name, value) pairs.
fn label_sets(s: &MetricSeries) -> Vec<Vec<(&'static str, &'static str)>> {
    let mut sets = vec![Vec::new()];
    for (key, values) in s.labels {
        sets = sets
            .into_iter()
            .flat_map(|set| {
                values.iter().map(move |v| {
                    let mut set = set.clone();
                    set.push((*key, *v));
                    set
                })
            })
            .collect();
    }
    sets
}

fn text_frame(v: &Value) -> bytes::Bytes {
    protocol::encode_masked_frame(protocol::OP_TEXT, v.to_string().as_bytes(), [3, 1, 4, 1])
}

#[tokio::test]
async fn metrics_exist_from_the_first_scrape_and_move_as_documented() {
    let gw = start(
        GatewayConfig::from_vars([
            ("WS_GATEWAY_ANONYMOUS", "true"),
            ("AUTH_JWT__SECRET", SECRET),
            ("WS_API_KEYS", "ops:ops-key-123456:admin"),
            ("WS_ALLOWED_ORIGINS", "https://ok.example"),
            ("WS_MAX_CONNECTIONS_PER_USER", "1"),
            ("WS_MAX_QUEUE_SIZE", "1"),
        ])
        .unwrap(),
    )
    .await;

    // The first scrape: the whole catalogue, described, typed, at zero; nothing else.
    let fresh = scrape(&gw).await;
    let catalogue: Vec<&MetricSeries> = SERIES.iter().chain(METRICS).collect();
    for s in &catalogue {
        let family = fresh
            .families
            .get(s.name)
            .unwrap_or_else(|| panic!("{} is not in the first scrape", s.name));
        assert_eq!(family.help, s.help, "{}", s.name);
        let expected = match s.kind {
            MetricKind::Counter => PrometheusType::Counter,
            MetricKind::Gauge => PrometheusType::Gauge,
            MetricKind::Histogram => PrometheusType::Histogram,
            _ => unreachable!("a kind the test does not know"),
        };
        assert_eq!(family.family_type, expected, "{}", s.name);
        for labels in label_sets(s) {
            assert_eq!(value(&fresh, s.name, &labels), 0.0, "{} {labels:?}", s.name);
        }
    }
    let known: HashSet<&str> = catalogue.iter().map(|s| s.name).collect();
    for name in fresh.families.keys() {
        assert!(
            known.contains(name.as_str()),
            "{name} is not in the catalogue"
        );
    }

    // The scripted run.
    let mut alice = connect(&gw, "?user=alice").await;
    let mut bob = connect(&gw, "?user=bob").await;
    // Refusals: the per-user limit, an origin, a request that is no upgrade, a bad token.
    let tcp = within("tcp", TcpStream::connect(gw.addr)).await.unwrap();
    let (_, head) = upgrade_request(tcp, gw.addr, "/ws?user=alice").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let origin = "Origin: https://evil.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, _) = http(gw.addr, "GET", "/ws?user=carol", origin, "").await;
    assert_eq!(status, 403);
    let (status, _) = http(gw.addr, "GET", "/ws?user=carol", "", "").await;
    assert!((400..=426).contains(&status), "{status}");
    let tcp = within("tcp", TcpStream::connect(gw.addr)).await.unwrap();
    let (_, head) = upgrade_request(tcp, gw.addr, "/ws?token=not-a-jwt").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // Requests: two joins, a publish, an echo, an invalid one.
    for ws in [&mut alice, &mut bob] {
        send(ws, json!({"type": "join", "room": "lobby", "id": 1})).await;
        assert_eq!(next(ws).await["type"], "ack");
    }
    send(
        &mut bob,
        json!({"type": "publish", "room": "lobby", "data": "hi", "id": 2}),
    )
    .await;
    assert_eq!(next(&mut bob).await["type"], "ack");
    assert_eq!(next(&mut alice).await["data"], "hi");
    send(&mut alice, json!({"type": "echo", "data": 1})).await;
    assert_eq!(next(&mut alice).await["type"], "echo");
    send(&mut alice, json!({"type": "no-such-request"})).await;
    assert_eq!(next(&mut alice).await["type"], "error");
    // HTTP publishes: one with the key, one without.
    let key = "X-API-Key: ops-key-123456\r\n";
    let (status, body) = publish(&gw, key, json!({"room": "lobby", "data": "ops"})).await;
    assert_eq!((status, &body), (200, &json!({"delivered": 2})));
    let (status, _) = publish(&gw, "", json!({"room": "lobby", "data": "nokey"})).await;
    assert_eq!(status, 401);
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next(ws).await["data"], "ops");
    }

    let after = scrape(&gw).await;
    let v = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels);
    assert_eq!(v("svc_ws_upgrades_accepted_total", &[]), 2.0);
    assert_eq!(v("svc_ws_handshake_duration_seconds", &[]), 2.0);
    assert_eq!(v("svc_ws_connects_total", &[]), 2.0);
    for (reason, n) in [
        ("user_full", 1.0),
        ("origin", 1.0),
        ("bad_request", 1.0),
        ("unauthorized", 1.0),
        ("node_full", 0.0),
        ("forbidden", 0.0),
    ] {
        assert_eq!(
            v("svc_ws_upgrades_refused_total", &[("reason", reason)]),
            n,
            "{reason}"
        );
    }
    let request = |kind, outcome| {
        v(
            "svc_ws_gateway_requests_total",
            &[("type", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(request("join", "ok"), 2.0);
    assert_eq!(request("publish", "ok"), 1.0);
    assert_eq!(request("echo", "ok"), 1.0);
    assert_eq!(request("invalid", "error"), 1.0);
    assert_eq!(request("send", "ok"), 0.0);
    assert_eq!(v("svc_ws_http_publishes_total", &[("status", "200")]), 1.0);
    assert_eq!(v("svc_ws_http_publishes_total", &[("status", "401")]), 1.0);
    assert_eq!(v("svc_ws_http_publish_duration_seconds", &[]), 2.0);
    // Received: 5 requests; sent: 5 answers, the publish to alice, the HTTP one to both.
    assert_eq!(v("svc_ws_messages_received_total", &[]), 5.0);
    assert_eq!(v("svc_ws_messages_sent_total", &[]), 8.0);
    assert!(v("svc_ws_bytes_sent_total", &[]) >= 8.0 * 10.0);
    assert!(v("svc_ws_bytes_received_total", &[]) >= 5.0 * 10.0);
    // Deliveries: the publish and the HTTP publish (answers are not deliveries).
    assert_eq!(v("svc_ws_broadcast_duration_seconds", &[]), 2.0);
    // Gauges, sampled at the scrape.
    assert_eq!(v("svc_ws_connections", &[]), 2.0);
    assert_eq!(v("svc_ws_users", &[]), 2.0);
    assert_eq!(v("svc_ws_rooms", &[]), 1.0);
    assert_eq!(v("svc_ws_cluster_connections", &[]), 2.0);
    assert_eq!(v("svc_ws_cluster_users", &[]), 2.0);
    assert_eq!(v("svc_ws_cluster_rooms", &[]), 1.0);
    assert_eq!(v("svc_ws_backplane_connected", &[]), 0.0);

    // A slow consumer: a client that never reads, fed until the queue of 1 overflows.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = within("tcp", socket.connect(gw.addr)).await.unwrap();
    let mut sloth = upgrade_on(tcp, gw.addr, "/ws?user=sloth").await;
    sloth
        .write_all(&text_frame(
            &json!({"type": "join", "room": "slow", "id": 1}),
        ))
        .await
        .unwrap();
    let (_, ack) = read_server_frame(&mut sloth).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&ack).unwrap()["type"],
        "ack"
    );
    let big = "x".repeat(256 * 1024);
    within("the slow consumer is closed", async {
        loop {
            let (status, body) = publish(&gw, key, json!({"room": "slow", "data": big})).await;
            assert_eq!(status, 200, "{body}");
            if body["delivered"] == 0 {
                return;
            }
        }
    })
    .await;
    let last = scrape(&gw).await;
    assert_eq!(
        value(&last, "svc_ws_slow_consumer_disconnects_total", &[]),
        1.0
    );
    assert_eq!(value(&last, "svc_ws_disconnects_total", &[]), 1.0);
    assert_eq!(value(&last, "svc_ws_connections", &[]), 2.0);
    drop(sloth);
}

/// The table of `docs/operations.md` is the catalogue: every series in it, nothing else.
#[test]
fn the_operations_doc_lists_the_catalogue() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    let rows: HashSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `svc_ws_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let catalogue: HashSet<String> = SERIES
        .iter()
        .chain(METRICS)
        .map(|s| s.name.trim_start_matches("svc_ws_").to_owned())
        .collect();
    let rows: HashSet<String> = rows.into_iter().map(str::to_owned).collect();
    assert_eq!(
        rows, catalogue,
        "docs/operations.md's table and the catalogue differ"
    );
}

/// The Grafana dashboard (`deploy/grafana/svc-ws.json`) queries only series `/metrics`
/// exposes, and has a panel for connections, message rates, p99 latencies, refusals and the
/// backplane.
#[test]
fn the_dashboard_queries_only_exposed_series() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/svc-ws.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let catalogue: Vec<&MetricSeries> = SERIES.iter().chain(METRICS).collect();
    let mut queried = HashSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut named = 0;
            for (at, _) in expr.match_indices("svc_ws_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let series = catalogue.iter().find(|s| {
                    name == s.name
                        || (s.kind == MetricKind::Histogram
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|suffix| name == format!("{}{suffix}", s.name)))
                });
                let series = series.unwrap_or_else(|| panic!("{name} in `{expr}` is not exposed"));
                queried.insert(series.name);
                named += 1;
            }
            assert!(named > 0, "`{expr}` names no series");
        }
    }
    for wanted in [
        "svc_ws_connections",
        "svc_ws_messages_sent_total",
        "svc_ws_broadcast_duration_seconds",
        "svc_ws_upgrades_refused_total",
        "svc_ws_backplane_connected",
    ] {
        assert!(queried.contains(wanted), "no panel shows {wanted}");
    }
}
