//! Prometheus metrics on `GET /metrics`, through `prometheus-client`.
//!
//! Counters the connection tasks bump as things happen live in [`Metrics`]; everything that
//! is state (subscriptions, history, peers, members, gossip, topic owners' counters) is read
//! at scrape time, so nothing on the hot path keeps a second copy of it.

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::node::NodeState;

/// Counted as it happens.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Gauge,
    /// `pub` frames accepted from clients.
    pub events_received: Counter,
    /// `event` frames written to clients (replays included).
    pub deliveries: Counter,
    /// Socket flushes that carried live events: `deliveries` over this is how many events a
    /// connection's wake-up and write carry, which decides what a delivery costs.
    pub event_writes: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub slow_consumer_disconnects: Counter,
    /// Queue-group events handed to another member (ack timeout, unsub, disconnect).
    pub queue_redeliveries: Counter,
    pub gaps_sent: Counter,
    /// Acknowledged publishes answered with an error.
    pub publish_errors: Counter,
    /// Publishes refused because their connection went over `publish_rate`.
    pub publishes_rate_limited: Counter,
    /// Connections and requests refused by authentication or permissions.
    pub auth_refusals: Counter,
    /// The client port's accepts, refusals and handshake deadlines.
    pub listener: crate::frontdoor::listener::ListenerMetrics,
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        let counters: [(&str, &str, &Counter); 11] = [
            (
                "murmur_events_received",
                "Publish frames accepted from clients",
                &self.events_received,
            ),
            (
                "murmur_deliveries",
                "Event frames written to clients",
                &self.deliveries,
            ),
            (
                "murmur_bytes_received",
                "WebSocket payload bytes received from clients",
                &self.bytes_received,
            ),
            (
                "murmur_event_writes",
                "Socket flushes that carried live events (murmur_deliveries / this: events per write)",
                &self.event_writes,
            ),
            (
                "murmur_bytes_sent",
                "WebSocket payload bytes sent to clients",
                &self.bytes_sent,
            ),
            (
                "murmur_slow_consumer_disconnects",
                "Connections closed as slow consumers",
                &self.slow_consumer_disconnects,
            ),
            (
                "murmur_queue_redeliveries",
                "Queue-group events handed to another member",
                &self.queue_redeliveries,
            ),
            (
                "murmur_gaps_sent",
                "Gap frames sent to resuming subscribers",
                &self.gaps_sent,
            ),
            (
                "murmur_publish_errors",
                "Acknowledged publishes answered with an error",
                &self.publish_errors,
            ),
            (
                "murmur_publishes_rate_limited",
                "Publishes refused because their connection went over publish_rate",
                &self.publishes_rate_limited,
            ),
            (
                "murmur_auth_refusals",
                "Connections and requests refused by authentication or permissions",
                &self.auth_refusals,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "murmur_connections",
            "Open client WebSocket connections",
            self.connections.clone(),
        );
        self.register_listener(&mut registry);
        registry
    }

    fn register_listener(&self, registry: &mut Registry) {
        let listener = &self.listener;
        registry.register(
            "murmur_client_sockets",
            "Open TCP connections on the client port, handshakes included",
            listener.sockets.clone(),
        );
        registry.register(
            "murmur_connections_refused",
            "WebSocket upgrades refused, by reason (max_connections, max_connections_per_ip, origin)",
            listener.refused.clone(),
        );
        registry.register(
            "murmur_handshake_timeouts",
            "Client connections closed without a complete request within handshake_timeout",
            listener.handshake_timeouts.clone(),
        );
        registry.register(
            "murmur_tls_handshake_failures",
            "Client TLS handshakes that failed",
            listener.tls_handshake_failures.clone(),
        );
        registry.register(
            "murmur_accept_errors",
            "Failed accepts on the client port (out of file descriptors, say)",
            listener.accept_errors.clone(),
        );
    }

    /// The text exposition of every metric.
    pub fn render(&self, node: &NodeState) -> String {
        let mut registry = self.registry();
        registry.register_collector(Box::new(StateSnapshot::take(node)));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

/// Node state read at scrape time; also what `GET /v1/stats` reports (frontdoor::http_api).
#[derive(Debug)]
pub(crate) struct StateSnapshot {
    pub subscriptions: i64,
    pub topics: i64,
    pub history_topics: i64,
    pub history_events: i64,
    pub history_bytes: i64,
    pub publish_buffer_used: i64,
    pub peer_publishes_waited: u64,
    pub replicas_refused: u64,
    pub resumes_asked_everyone: u64,
    pub replay_requests_served: u64,
    pub stall_fences: u64,
    pub fenced: bool,
    pub events_published: u64,
    pub events_not_stored: u64,
    pub history_disk_failed: bool,
    pub events_from_peers: u64,
    pub group_deliveries_lost: u64,
    pub group_events_kept: u64,
    pub group_events_placed_late: u64,
    pub group_events_gapped: u64,
    pub group_events_waiting: i64,
    /// Publishes answered from a remembered id (no second event).
    pub publish_duplicates: u64,
    /// Publish ids remembered now, their bytes, and those forgotten early to stay under
    /// `dedupe_max_bytes`.
    pub dedupe_ids: i64,
    pub dedupe_bytes: i64,
    pub dedupe_forgotten_early: u64,
    /// Times this node told its subscribers to resync (it lost contact with a peer).
    pub resync_signals: u64,
    fanout: Vec<(f64, u64)>,
    fanout_sum: f64,
    fanout_count: u64,
    members: Vec<(&'static str, i64)>,
    gossip: [(&'static str, u64); 3],
    gossip_refused: [(&'static str, u64); 6],
    pub peers: Vec<PeerSnapshot>,
}

#[derive(Debug)]
pub(crate) struct PeerSnapshot {
    pub name: String,
    pub rtt_seconds: f64,
    pub queue_depth: i64,
    pub events_forwarded: u64,
    pub events_dropped: u64,
}

impl StateSnapshot {
    pub(crate) fn take(node: &NodeState) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let broker = &node.broker;
        let (topics, events) = broker.history_size();
        let members = node.cluster.members();
        let count = |state: &str| {
            members
                .iter()
                .filter(|m| {
                    serde_json::to_value(m.state)
                        .ok()
                        .as_ref()
                        .and_then(|v| v.as_str())
                        == Some(state)
                })
                .count() as i64
        };
        let gossip = &node.cluster.gossip.stats;
        let (fanout, fanout_sum, fanout_count) = broker.stats.fanout.snapshot();
        let (dedupe_ids, dedupe_bytes, dedupe_forgotten_early) = broker.dedupe_size();
        Self {
            subscriptions: broker.subscriptions() as i64,
            topics: broker.topics_known() as i64,
            history_topics: topics as i64,
            history_events: events as i64,
            history_bytes: broker.history_bytes() as i64,
            publish_buffer_used: node.cluster.publish_buffer_in_use() as i64,
            peer_publishes_waited: node.cluster.stats.peer_publishes_waited.load(Relaxed),
            replicas_refused: node.cluster.stats.replicas_refused.load(Relaxed),
            resumes_asked_everyone: node.cluster.stats.resumes_asked_everyone.load(Relaxed),
            replay_requests_served: node.cluster.stats.replay_requests_served.load(Relaxed),
            stall_fences: node.cluster.gossip.fence.stalls.load(Relaxed),
            fenced: node.cluster.gossip.fence.is_fenced(),
            events_published: broker.stats.events_published.load(Relaxed),
            events_not_stored: broker.stats.events_not_stored.load(Relaxed),
            history_disk_failed: disk_history_failed(broker),
            events_from_peers: broker.stats.events_from_peers.load(Relaxed),
            group_deliveries_lost: broker.stats.group_deliveries_lost.load(Relaxed),
            group_events_kept: broker.stats.group_events_kept.load(Relaxed),
            group_events_placed_late: broker.stats.group_events_placed_late.load(Relaxed),
            group_events_gapped: broker.stats.group_events_gapped.load(Relaxed),
            group_events_waiting: broker.stats.group_events_waiting.load(Relaxed) as i64,
            publish_duplicates: broker.stats.publish_duplicates.load(Relaxed),
            dedupe_ids: dedupe_ids as i64,
            dedupe_bytes: dedupe_bytes as i64,
            dedupe_forgotten_early,
            resync_signals: *node.cluster.resync_signal().borrow(),
            fanout,
            fanout_sum,
            fanout_count,
            members: ["alive", "suspect", "down", "left"]
                .into_iter()
                .map(|s| (s, count(s)))
                .collect(),
            gossip: [
                ("in", gossip.packets_in.load(Relaxed)),
                ("out", gossip.packets_out.load(Relaxed)),
                ("rejected", gossip.packets_rejected.load(Relaxed)),
            ],
            gossip_refused: gossip.refused.by_reason(),
            peers: node
                .cluster
                .links()
                .iter()
                .map(|l| PeerSnapshot {
                    name: l.name.to_string(),
                    rtt_seconds: l.rtt().as_secs_f64(),
                    queue_depth: l.queue_depth() as i64,
                    events_forwarded: l.stats.events_forwarded.load(Relaxed),
                    events_dropped: l.stats.events_dropped.load(Relaxed),
                })
                .collect(),
        }
    }
}

#[cfg(feature = "disk")]
fn disk_history_failed(broker: &crate::broker::Broker) -> bool {
    broker.disk_history_failed()
}

#[cfg(not(feature = "disk"))]
fn disk_history_failed(_broker: &crate::broker::Broker) -> bool {
    false
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for StateSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        gauge(
            &mut encoder,
            "murmur_subscriptions",
            "Subscriptions held by this node's clients",
            self.subscriptions,
        )?;
        gauge(
            &mut encoder,
            "murmur_topics",
            "Topics this node keeps bookkeeping for (epoch, last seq): sequenced here or \
             copied as a replica, and not yet forgotten (topic_idle_forget)",
            self.topics,
        )?;
        gauge(
            &mut encoder,
            "murmur_history_topics",
            "Topics with retained events on this node",
            self.history_topics,
        )?;
        gauge(
            &mut encoder,
            "murmur_history_events",
            "Events retained on this node (owned and replica copies)",
            self.history_events,
        )?;
        gauge(
            &mut encoder,
            "murmur_history_bytes",
            "Bytes of events retained on this node (owned and replica copies), against \
             history_max_total_bytes",
            self.history_bytes,
        )?;
        gauge(
            &mut encoder,
            "murmur_publish_buffer_used_bytes",
            "Bytes of publish_buffer_bytes held by publishes on their way to an owner or \
             waiting for their replicas; at the bound, publishers are pushed back",
            self.publish_buffer_used,
        )?;
        counter(
            &mut encoder,
            "murmur_peer_publishes_waited",
            "Publishes from peers that waited, as this node is the topic's owner, for room in \
             its publish buffer (their peer's publish stream was read no further meanwhile)",
            self.peer_publishes_waited,
        )?;
        counter(
            &mut encoder,
            "murmur_replicas_refused",
            "Events this node refused to store as a replica because it no longer recognises \
             their sender as the topic's owner (the sender fails them and claims the topic again)",
            self.replicas_refused,
        )?;
        counter(
            &mut encoder,
            "murmur_replay_requests_served",
            "Replay requests from peers (resumes of their clients) this node answered",
            self.replay_requests_served,
        )?;
        counter(
            &mut encoder,
            "murmur_resumes_asked_everyone",
            "Single-topic resumes whose placement (owner and replicas) could not replay the \
             topic without a gap, so the other nodes were asked too",
            self.resumes_asked_everyone,
        )?;
        counter(
            &mut encoder,
            "murmur_stall_fences",
            "Times this node stalled (paused, or its gossip thread stuck) past the threshold and \
             fenced itself: no sequencing and no queue-group placement until it heard from a \
             majority again",
            self.stall_fences,
        )?;
        gauge(
            &mut encoder,
            "murmur_fenced",
            "1 while this node is fenced after a stall, else 0",
            i64::from(self.fenced),
        )?;
        counter(
            &mut encoder,
            "murmur_events_published",
            "Events sequenced by this node as their topic's owner",
            self.events_published,
        )?;
        counter(
            &mut encoder,
            "murmur_events_not_stored",
            "Events (or whole copies of a topic) this node's history failed to store: the publish was refused, or the copy dropped",
            self.events_not_stored,
        )?;
        gauge(
            &mut encoder,
            "murmur_history_disk_failed",
            "1 while the history on disk refuses writes (a full disk, an I/O error) and publishes get unavailable; the node reopens it every 5 s",
            i64::from(self.history_disk_failed),
        )?;
        counter(
            &mut encoder,
            "murmur_events_from_peers",
            "Events peers forwarded to this node's subscribers",
            self.events_from_peers,
        )?;
        counter(
            &mut encoder,
            "murmur_queue_deliveries_lost",
            "Queue-group events dropped with no group left to tell: kept for a group without \
             members past the history's max_age",
            self.group_deliveries_lost,
        )?;
        counter(
            &mut encoder,
            "murmur_queue_events_kept",
            "Queue-group events no member could take at once, kept until one could",
            self.group_events_kept,
        )?;
        counter(
            &mut encoder,
            "murmur_queue_events_placed_late",
            "Kept queue-group events placed on a member later",
            self.group_events_placed_late,
        )?;
        counter(
            &mut encoder,
            "murmur_queue_events_gapped",
            "Kept queue-group events that reached the topic's history bound while waiting: \
             named to the group as a gap",
            self.group_events_gapped,
        )?;
        gauge(
            &mut encoder,
            "murmur_queue_events_waiting",
            "Queue-group events waiting for a member now",
            self.group_events_waiting,
        )?;
        counter(
            &mut encoder,
            "murmur_publish_duplicates",
            "Publishes whose id this node (as the topic's owner) remembered: answered with the \
             first one's position, no second event",
            self.publish_duplicates,
        )?;
        gauge(
            &mut encoder,
            "murmur_dedupe_ids",
            "Publish ids remembered on this node (owned topics and replica copies) for \
             dedupe_window",
            self.dedupe_ids,
        )?;
        gauge(
            &mut encoder,
            "murmur_dedupe_bytes",
            "Bytes of remembered publish ids, against dedupe_max_bytes",
            self.dedupe_bytes,
        )?;
        counter(
            &mut encoder,
            "murmur_dedupe_ids_forgotten_early",
            "Publish ids forgotten before dedupe_window ended, to stay under dedupe_max_bytes: \
             a publish sent again with one of them would be a second event",
            self.dedupe_forgotten_early,
        )?;
        counter(
            &mut encoder,
            "murmur_resync_signals",
            "Times this node told its subscribers to resync (reconnect and resume) because it \
             lost contact with a peer, or a peer dropped events forwarded to it, and it may \
             have missed some",
            self.resync_signals,
        )?;

        let histogram = encoder.encode_descriptor(
            "murmur_fanout_subscribers",
            "Local subscriptions (and queue groups) each fanned-out event was queued to",
            None,
            MetricType::Histogram,
        )?;
        let mut histogram = histogram;
        histogram.encode_histogram::<Vec<(String, String)>>(
            self.fanout_sum,
            self.fanout_count,
            &self.fanout,
            None,
        )?;

        let mut members = encoder.encode_descriptor(
            "murmur_members",
            "Cluster members by state, as this node sees them",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &self.members {
            let labels = [("state", *state)];
            ConstGauge::new(*n).encode(members.encode_family(&labels)?)?;
        }
        let mut gossip = encoder.encode_descriptor(
            "murmur_gossip_packets",
            "Gossip packets, by direction (rejected: refused before membership saw them, for any reason)",
            None,
            MetricType::Counter,
        )?;
        for (direction, n) in &self.gossip {
            let labels = [("direction", *direction)];
            ConstCounter::new(*n).encode(gossip.encode_family(&labels)?)?;
        }
        let mut refused = encoder.encode_descriptor(
            "murmur_gossip_packets_refused",
            "Gossip packets refused, by reason: bad_key, malformed, too_old, from_future, replayed, memory_full",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &self.gossip_refused {
            let labels = [("reason", *reason)];
            ConstCounter::new(*n).encode(refused.encode_family(&labels)?)?;
        }
        let mut rtt = encoder.encode_descriptor(
            "murmur_peer_rtt_seconds",
            "QUIC round-trip time to each peer",
            None,
            MetricType::Gauge,
        )?;
        for peer in &self.peers {
            let labels = [("peer", peer.name.as_str())];
            ConstGauge::new(peer.rtt_seconds).encode(rtt.encode_family(&labels)?)?;
        }
        let mut depth = encoder.encode_descriptor(
            "murmur_peer_queue_depth",
            "Events queued towards each peer",
            None,
            MetricType::Gauge,
        )?;
        for peer in &self.peers {
            let labels = [("peer", peer.name.as_str())];
            ConstGauge::new(peer.queue_depth).encode(depth.encode_family(&labels)?)?;
        }
        let mut forwarded = encoder.encode_descriptor(
            "murmur_peer_events_forwarded",
            "Events queued towards each peer",
            None,
            MetricType::Counter,
        )?;
        for peer in &self.peers {
            let labels = [("peer", peer.name.as_str())];
            ConstCounter::new(peer.events_forwarded).encode(forwarded.encode_family(&labels)?)?;
        }
        let mut dropped = encoder.encode_descriptor(
            "murmur_peer_events_dropped",
            "Events not sent to a peer because its queue was full",
            None,
            MetricType::Counter,
        )?;
        for peer in &self.peers {
            let labels = [("peer", peer.name.as_str())];
            ConstCounter::new(peer.events_dropped).encode(dropped.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A histogram of small counts (fan-out per event) that the broker fills without locking:
/// one atomic per bucket.
#[derive(Debug)]
pub struct CountHistogram {
    bounds: &'static [f64],
    buckets: Vec<std::sync::atomic::AtomicU64>,
    sum: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

const FANOUT_BOUNDS: &[f64] = &[0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0];

impl Default for CountHistogram {
    fn default() -> Self {
        Self {
            bounds: FANOUT_BOUNDS,
            buckets: (0..=FANOUT_BOUNDS.len())
                .map(|_| Default::default())
                .collect(),
            sum: Default::default(),
            count: Default::default(),
        }
    }
}

impl CountHistogram {
    pub fn observe(&self, value: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let v = value as f64;
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(value as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Cumulative buckets (upper bound, count), sum and count.
    fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut cumulative = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            out.push((bound, cumulative));
        }
        (out, self.sum.load(Relaxed) as f64, self.count.load(Relaxed))
    }
}
