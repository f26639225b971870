//! `GET /v1/stats`: the cluster's members as this node sees them, and this node's counters
//! and gauges — the same numbers `/metrics` exposes on the admin port, as JSON on the client
//! port, for the dashboard (`/dashboard`) and anyone else who reads them from a browser.
//!
//! With `?scope=cluster` the answer holds every member's numbers, fetched from them by this
//! node ([`super::cluster_stats`]); `?scope=node` (the default) only this node's.
//!
//! The answer shows member addresses and traffic, not events; still, it is for whoever may
//! see everything: with `auth = token` the caller's token must allow subscribing to `>`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::cluster_stats::MemberStats;
use super::{ApiError, HttpApi, admit, forbidden};
use crate::cluster::membership::MemberInfo;
use crate::frontdoor::listener::ClientConnection;
use crate::metrics::StateSnapshot;
use crate::node::NodeState;

/// The pattern a token must be allowed to subscribe to for the stats: every topic.
pub const STATS_PATTERN: &str = ">";

#[derive(Debug, Serialize)]
struct Stats {
    /// The node answering.
    node: String,
    /// Every member this node knows of, itself included, with its state.
    members: Vec<MemberInfo>,
    /// Per-node numbers: the answering node's.
    nodes: Vec<NodeStats>,
}

#[derive(Debug, Deserialize)]
pub(super) struct StatsQuery {
    scope: Option<String>,
}

/// `?scope=cluster`: every member, each with its numbers or why they are missing.
#[derive(Debug, Serialize)]
struct ClusterStats {
    /// The node answering.
    node: String,
    scope: &'static str,
    /// Every member this node knows of, itself included, in name order.
    nodes: Vec<MemberStats<NodeStats>>,
}

#[derive(Debug, Serialize)]
struct NodeStats {
    name: String,
    /// Milliseconds since the Unix epoch when these numbers were read.
    at_ms: u64,
    /// Open client WebSocket connections.
    connections: i64,
    /// Subscriptions held by this node's clients.
    subscriptions: i64,
    /// Topics this node keeps bookkeeping for (sequenced here or copied as a replica).
    topics: i64,
    history: HistoryStats,
    publish_buffer_used_bytes: i64,
    /// Monotonic counts since the node started; rates are their differences over time.
    counters: Counters,
    /// This node's links to its peers.
    peers: Vec<PeerStats>,
}

#[derive(Debug, Serialize)]
struct HistoryStats {
    topics: i64,
    events: i64,
    bytes: i64,
}

#[derive(Debug, Serialize)]
struct Counters {
    events_received: u64,
    events_published: u64,
    events_from_peers: u64,
    deliveries: u64,
    gaps_sent: u64,
    slow_consumer_disconnects: u64,
    resync_signals: u64,
    queue_redeliveries: u64,
    queue_deliveries_lost: u64,
    publish_errors: u64,
    publishes_rate_limited: u64,
    peer_publishes_waited: u64,
    auth_refusals: u64,
    bytes_received: u64,
    bytes_sent: u64,
}

#[derive(Debug, Serialize)]
struct PeerStats {
    name: String,
    rtt_ms: f64,
    queue_depth: i64,
    events_forwarded: u64,
    events_dropped: u64,
}

pub(super) async fn stats(
    State(node): State<Arc<NodeState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    connection: Option<Extension<Arc<ClientConnection>>>,
    Extension(api): Extension<Arc<HttpApi>>,
    headers: HeaderMap,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Response {
    let connection = connection.as_deref().map(|c| &**c);
    let scope = match query {
        Ok(Query(query)) => query.scope,
        Err(rejection) => return ApiError::invalid_request(rejection.body_text()).into_response(),
    };
    let answer = match scope.as_deref() {
        None | Some("node") => serve(&node, peer, connection, &headers)
            .await
            .map(|stats| Json(stats).into_response()),
        Some("cluster") => serve_cluster(&node, &api, peer, connection, &headers)
            .await
            .map(|stats| Json(stats).into_response()),
        Some(other) => Err(ApiError::invalid_request(format!(
            "scope must be `node` or `cluster`, not `{other}`"
        ))),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// Lets in a caller who may see everything.
async fn admit_operator(
    node: &NodeState,
    peer: SocketAddr,
    connection: Option<&ClientConnection>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let caller = admit(node, peer, connection, headers).await?;
    if !caller.identity.permissions.can_subscribe(STATS_PATTERN) {
        return Err(forbidden(
            node,
            format!("the stats need a token that may subscribe to `{STATS_PATTERN}`"),
        ));
    }
    Ok(())
}

async fn serve(
    node: &NodeState,
    peer: SocketAddr,
    connection: Option<&ClientConnection>,
    headers: &HeaderMap,
) -> Result<Stats, ApiError> {
    admit_operator(node, peer, connection, headers).await?;
    let name = node.cluster.name().to_string();
    Ok(Stats {
        members: node.cluster.members(),
        nodes: vec![node_stats(node, name.clone())],
        node: name,
    })
}

async fn serve_cluster(
    node: &NodeState,
    api: &HttpApi,
    peer: SocketAddr,
    connection: Option<&ClientConnection>,
    headers: &HeaderMap,
) -> Result<ClusterStats, ApiError> {
    admit_operator(node, peer, connection, headers).await?;
    let name = node.cluster.name().to_string();
    let own = node_stats(node, name.clone());
    let nodes = api
        .peer_stats
        .gather(node, own, headers.get(header::AUTHORIZATION))
        .await?;
    Ok(ClusterStats {
        node: name,
        scope: "cluster",
        nodes,
    })
}

fn node_stats(node: &NodeState, name: String) -> NodeStats {
    let snapshot = StateSnapshot::take(node);
    let metrics = &node.metrics;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    NodeStats {
        name,
        at_ms,
        connections: metrics.connections.get(),
        subscriptions: snapshot.subscriptions,
        topics: snapshot.topics,
        history: HistoryStats {
            topics: snapshot.history_topics,
            events: snapshot.history_events,
            bytes: snapshot.history_bytes,
        },
        publish_buffer_used_bytes: snapshot.publish_buffer_used,
        counters: Counters {
            events_received: metrics.events_received.get(),
            events_published: snapshot.events_published,
            events_from_peers: snapshot.events_from_peers,
            deliveries: metrics.deliveries.get(),
            gaps_sent: metrics.gaps_sent.get(),
            slow_consumer_disconnects: metrics.slow_consumer_disconnects.get(),
            resync_signals: snapshot.resync_signals,
            queue_redeliveries: metrics.queue_redeliveries.get(),
            queue_deliveries_lost: snapshot.group_deliveries_lost,
            publish_errors: metrics.publish_errors.get(),
            publishes_rate_limited: metrics.publishes_rate_limited.get(),
            peer_publishes_waited: snapshot.peer_publishes_waited,
            auth_refusals: metrics.auth_refusals.get(),
            bytes_received: metrics.bytes_received.get(),
            bytes_sent: metrics.bytes_sent.get(),
        },
        peers: snapshot
            .peers
            .into_iter()
            .map(|p| PeerStats {
                name: p.name,
                rtt_ms: p.rtt_seconds * 1000.0,
                queue_depth: p.queue_depth,
                events_forwarded: p.events_forwarded,
                events_dropped: p.events_dropped,
            })
            .collect(),
    }
}
