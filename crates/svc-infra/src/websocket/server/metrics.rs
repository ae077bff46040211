//! What a server exposes through the [`metrics`] facade: every series in one catalogue
//! ([`SERIES`]), described and set to zero by [`describe_metrics`] so that the first scrape
//! already lists them all, and the gauges sampled once a second by each manager.
//!
//! Install an exporter before building the manager, for example
//! `metrics_exporter_prometheus::PrometheusBuilder::new().install()?` (the gateway does this
//! for its `/metrics`); [`ConnectionManager::builder`](super::ConnectionManager::builder)
//! then describes every series. Counters and histograms are process-wide: a process with
//! several managers adds them up; the gauges show the manager that sampled last.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use super::manager::{ConnectionManager, Inner};
use crate::websocket::backplane::BackplaneStatus;

/// The kind of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (`_total`).
    Counter,
    /// A value now.
    Gauge,
    /// A distribution (`_seconds`), with buckets where the exporter is told them.
    Histogram,
}

/// One series of the catalogue.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MetricSeries {
    /// Its name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// Its labels, each with every value it takes (all of them exist from the start).
    pub labels: &'static [(&'static str, &'static [&'static str])],
}

impl MetricSeries {
    /// A series: its name, kind, `# HELP` text and labels with all their values.
    pub const fn new(
        name: &'static str,
        kind: MetricKind,
        help: &'static str,
        labels: &'static [(&'static str, &'static [&'static str])],
    ) -> Self {
        Self {
            name,
            kind,
            help,
            labels,
        }
    }
}

const fn series(
    name: &'static str,
    kind: MetricKind,
    help: &'static str,
    labels: &'static [(&'static str, &'static [&'static str])],
) -> MetricSeries {
    MetricSeries::new(name, kind, help, labels)
}

use MetricKind::{Counter, Gauge, Histogram};

/// Why an upgrade was answered without upgrading (`svc_ws_upgrades_refused_total{reason}`).
pub(crate) const UPGRADE_REFUSALS: &[&str] = &[
    "bad_request",
    "unauthorized",
    "forbidden",
    "origin",
    "user_full",
    "node_full",
    "shutting_down",
    "keys_unavailable",
];

/// Every series of the server side (the library's); the gateway adds its own
/// (`svc_infra::gateway::METRICS`).
pub const SERIES: &[MetricSeries] = &[
    // Gauges, sampled every second (and by the gateway before each scrape).
    series(
        "svc_ws_connections",
        Gauge,
        "WebSocket connections open on this node.",
        &[],
    ),
    series(
        "svc_ws_users",
        Gauge,
        "Users with at least one connection on this node.",
        &[],
    ),
    series(
        "svc_ws_rooms",
        Gauge,
        "Rooms with at least one member on this node.",
        &[],
    ),
    series(
        "svc_ws_cluster_connections",
        Gauge,
        "WebSocket connections in the cluster, as this node knows them (other nodes as of their last presence heartbeat); without a backplane, this node's.",
        &[],
    ),
    series(
        "svc_ws_cluster_users",
        Gauge,
        "Users connected anywhere in the cluster, as this node knows them.",
        &[],
    ),
    series(
        "svc_ws_cluster_rooms",
        Gauge,
        "Rooms with a member anywhere in the cluster, as this node knows them.",
        &[],
    ),
    series(
        "svc_ws_backplane_connected",
        Gauge,
        "1 while the backplane (Redis) is connected, 0 while it is not or when there is none.",
        &[],
    ),
    series(
        "svc_ws_flush_queue_connections",
        Gauge,
        "Connections whose socket could not take a broadcast at once, waiting for the flush task.",
        &[],
    ),
    // Upgrades and connections.
    series(
        "svc_ws_upgrades_accepted_total",
        Counter,
        "Upgrades completed (101 sent and the socket handed over).",
        &[],
    ),
    series(
        "svc_ws_upgrades_refused_total",
        Counter,
        "Upgrade requests answered without upgrading, by reason: bad_request (400/405/426), unauthorized (401), forbidden (403, scope), origin (403), user_full (429), node_full and shutting_down (503), keys_unavailable (503, JWKS).",
        &[("reason", UPGRADE_REFUSALS)],
    ),
    series(
        "svc_ws_handshake_duration_seconds",
        Histogram,
        "From an upgrade request's headers to its socket handed to the handler.",
        &[],
    ),
    series(
        "svc_ws_handshake_timeouts_total",
        Counter,
        "Connections closed because their TLS handshake (with TLS) or their HTTP request did not complete within WS_HANDSHAKE_TIMEOUT.",
        &[],
    ),
    series(
        "svc_ws_connects_total",
        Counter,
        "Connections registered with the manager.",
        &[],
    ),
    series(
        "svc_ws_disconnects_total",
        Counter,
        "Connections removed from the manager.",
        &[],
    ),
    series(
        "svc_ws_connections_refused_total",
        Counter,
        "Connections closed at registration because a limit was reached after the upgrade's check (node_full 1013, user_full 1008, shutting_down 1001).",
        &[("reason", &["node_full", "user_full", "shutting_down"])],
    ),
    // Traffic.
    series(
        "svc_ws_messages_sent_total",
        Counter,
        "Messages handed to connections (written or queued), one per recipient.",
        &[],
    ),
    series(
        "svc_ws_bytes_sent_total",
        Counter,
        "Bytes of the frames handed to connections, one frame per recipient (compressed frames at their compressed size).",
        &[],
    ),
    series(
        "svc_ws_messages_deflated_total",
        Counter,
        "Messages deflated for permessage-deflate: once per broadcast whatever the number of recipients, once per send to one connection.",
        &[],
    ),
    series(
        "svc_ws_messages_received_total",
        Counter,
        "Messages received from registered connections.",
        &[],
    ),
    series(
        "svc_ws_bytes_received_total",
        Counter,
        "Payload bytes of the messages received from registered connections.",
        &[],
    ),
    series(
        "svc_ws_broadcast_duration_seconds",
        Histogram,
        "From a broadcast, room message or message to a user until every local connection has the frame written or queued.",
        &[],
    ),
    series(
        "svc_ws_read_pauses_total",
        Counter,
        "Times a connection sent faster than WS_MAX_INCOMING_RATE and the server paused reading it.",
        &[],
    ),
    // Slow consumers and keepalive.
    series(
        "svc_ws_messages_dropped_total",
        Counter,
        "Messages dropped by the drop_newest or drop_oldest slow-consumer policy.",
        &[],
    ),
    series(
        "svc_ws_slow_consumer_disconnects_total",
        Counter,
        "Connections closed with 1013 by the disconnect slow-consumer policy (queue full).",
        &[],
    ),
    series(
        "svc_ws_keepalive_timeouts_total",
        Counter,
        "Connections closed with 1011 because they did not answer a keepalive ping in time.",
        &[],
    ),
    // The backplane.
    series(
        "svc_ws_backplane_published_total",
        Counter,
        "Envelopes and presence messages published to the backplane.",
        &[],
    ),
    series(
        "svc_ws_backplane_received_total",
        Counter,
        "Envelopes from other nodes delivered here.",
        &[],
    ),
    series(
        "svc_ws_backplane_delivery_lag_seconds",
        Histogram,
        "From a send on another node to its hand-off to this node's connections, by the envelope's timestamp (the two hosts' clocks must agree; a negative lag counts as 0).",
        &[],
    ),
    series(
        "svc_ws_backplane_dropped_total",
        Counter,
        "Messages for other nodes dropped because the backplane was disconnected or its queue full.",
        &[],
    ),
    series(
        "svc_ws_backplane_malformed_total",
        Counter,
        "Backplane messages that did not decode, or whose deflated frame did not inflate for a recipient that needed it plain (dropped with a warning).",
        &[],
    ),
    series(
        "svc_ws_backplane_reconnects_total",
        Counter,
        "Times the backplane lost Redis and connected again.",
        &[],
    ),
];

/// Describes every series of `series` (`# HELP`) and sets it to zero, each label value
/// included, in the installed recorder. Idempotent; does nothing without a recorder.
pub fn describe(series: &[MetricSeries]) {
    for s in series {
        let labels = label_sets(s.labels);
        match s.kind {
            Counter => {
                metrics::describe_counter!(s.name, s.help);
                for l in labels {
                    metrics::counter!(s.name, l).increment(0);
                }
            }
            Gauge => {
                metrics::describe_gauge!(s.name, s.help);
                for l in labels {
                    metrics::gauge!(s.name, l).increment(0.0);
                }
            }
            Histogram => {
                metrics::describe_histogram!(s.name, metrics::Unit::Seconds, s.help);
                for l in labels {
                    // Registers the series with no sample yet.
                    drop(metrics::histogram!(s.name, l));
                }
            }
        }
    }
}

/// Describes every series of the server side ([`SERIES`]) and sets it to zero; the manager's
/// builder calls it, so an application only needs to install an exporter first.
pub fn describe_metrics() {
    describe(SERIES);
}

/// Every combination of the label values (one empty set without labels).
fn label_sets(labels: &[(&'static str, &'static [&'static str])]) -> Vec<Vec<metrics::Label>> {
    let mut sets = vec![Vec::new()];
    for (key, values) in labels {
        sets = sets
            .into_iter()
            .flat_map(|set| {
                values.iter().map(move |v| {
                    let mut set = set.clone();
                    set.push(metrics::Label::new(*key, *v));
                    set
                })
            })
            .collect();
    }
    sets
}

/// How often a manager samples its gauges.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl ConnectionManager {
    /// Sets the gauges of [`SERIES`] from this manager now: connections, users and rooms on
    /// this node and in the cluster, the backplane's state, the flush queue. A manager does
    /// this every second once it has had a connection; call it before a scrape for exact
    /// figures (the gateway's `/metrics` does). The cluster's users and rooms cost a pass over
    /// every user the cluster has.
    pub fn update_gauges(&self) {
        let (connections, users, rooms) = {
            let reg = self.read();
            (reg.connections, reg.users.len(), reg.rooms.len())
        };
        metrics::gauge!("svc_ws_connections").set(connections as f64);
        metrics::gauge!("svc_ws_users").set(users as f64);
        metrics::gauge!("svc_ws_rooms").set(rooms as f64);
        let (cluster_connections, cluster_users, cluster_rooms) = match self.backplane_status() {
            None => (connections, users, rooms),
            Some(_) => (
                self.connection_count(),
                self.active_users().len(),
                self.room_count(),
            ),
        };
        metrics::gauge!("svc_ws_cluster_connections").set(cluster_connections as f64);
        metrics::gauge!("svc_ws_cluster_users").set(cluster_users as f64);
        metrics::gauge!("svc_ws_cluster_rooms").set(cluster_rooms as f64);
        let connected = self.backplane_status() == Some(BackplaneStatus::Connected);
        metrics::gauge!("svc_ws_backplane_connected").set(if connected { 1.0 } else { 0.0 });
        metrics::gauge!("svc_ws_flush_queue_connections").set(self.inner.flush_queue.len() as f64);
    }

    /// Starts the manager's gauge sampler (once; it ends with the manager).
    pub(super) fn start_sampler(&self) {
        if self.inner.sampler_started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(sample(Arc::downgrade(&self.inner)));
    }
}

async fn sample(inner: Weak<Inner>) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        ConnectionManager { inner }.update_gauges();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for s in SERIES {
            assert!(seen.insert(s.name), "{} twice", s.name);
            assert!(s.name.starts_with("svc_ws_"), "{}", s.name);
            match s.kind {
                Counter => assert!(s.name.ends_with("_total"), "{}", s.name),
                Histogram => assert!(s.name.ends_with("_seconds"), "{}", s.name),
                Gauge => assert!(!s.name.ends_with("_total"), "{}", s.name),
            }
            assert!(s.help.ends_with('.'), "{}", s.name);
        }
    }

    #[test]
    fn label_sets_are_every_combination() {
        assert_eq!(label_sets(&[]).len(), 1);
        let sets = label_sets(&[("a", &["1", "2"]), ("b", &["x", "y", "z"])]);
        assert_eq!(sets.len(), 6);
        assert!(sets.iter().all(|s| s.len() == 2));
    }
}
