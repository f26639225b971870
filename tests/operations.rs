//! What an operator watches: `/metrics` series that move under load, and `/readyz`.

use std::time::Duration;

use murmur_tests::{
    TEST_CLUSTER_KEY, WsClient, gossip_addr, start_cluster, start_node, wait_until,
};
use serde_json::json;

type TestResult = anyhow::Result<()>;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let body = murmur::client::http_get(&format!("http://{addr}"), path).await;
    match body {
        Ok(body) => Ok((200, body)),
        Err(murmur::client::ClientError::Http { message, .. }) => {
            let status = message
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Ok((status, message))
        }
        Err(err) => Err(err.into()),
    }
}

/// The value of the first sample of `series` (a name, or a name with its `{labels}`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            let labelled = !series.contains('{') && name.starts_with(&format!("{series}{{"));
            (name == series || labelled)
                .then(|| value.parse().ok())
                .flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_named_series_and_they_move_under_load() -> TestResult {
    let nodes = start_cluster(2, |_, _| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    subscriber.sub("s", "metered.>").await?;
    wait_until("interest reached node-0", Duration::from_secs(10), || {
        nodes[0].state().broker.peer_interests() == 1
    })
    .await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    for i in 0..50 {
        publisher
            .publish(&format!("metered.t{}", i % 5), json!(i), &format!("p{i}"))
            .await?;
    }
    for _ in 0..50 {
        subscriber.recv_json().await?;
    }
    let (status, publisher_side) = http_get(nodes[0].local_addr(), "/metrics").await?;
    assert_eq!(status, 200);
    let (_, subscriber_side) = http_get(nodes[1].local_addr(), "/metrics").await?;
    for series in [
        "murmur_connections",
        "murmur_subscriptions",
        "murmur_events_received_total",
        "murmur_events_published_total",
        "murmur_deliveries_total",
        "murmur_bytes_received_total",
        "murmur_bytes_sent_total",
        "murmur_slow_consumer_disconnects_total",
        "murmur_queue_redeliveries_total",
        "murmur_gaps_sent_total",
        "murmur_publish_errors_total",
        "murmur_history_topics",
        "murmur_history_events",
        "murmur_fanout_subscribers_count",
        "murmur_members",
        "murmur_gossip_packets_total",
        "murmur_peer_rtt_seconds",
        "murmur_peer_queue_depth",
        "murmur_peer_events_dropped_total",
    ] {
        assert!(
            sample(&publisher_side, series).is_some(),
            "no {series} in:\n{publisher_side}"
        );
    }
    assert_eq!(
        sample(&publisher_side, "murmur_events_received_total"),
        Some(50.0)
    );
    assert!(sample(&publisher_side, "murmur_bytes_received_total").unwrap() > 0.0);
    assert_eq!(
        sample(&subscriber_side, "murmur_deliveries_total"),
        Some(50.0)
    );
    assert_eq!(sample(&subscriber_side, "murmur_subscriptions"), Some(1.0));
    assert_eq!(sample(&subscriber_side, "murmur_connections"), Some(1.0));
    let published: f64 = [&publisher_side, &subscriber_side]
        .iter()
        .filter_map(|m| sample(m, "murmur_events_published_total"))
        .sum();
    assert_eq!(published, 50.0, "each event sequenced once, by its owner");
    assert_eq!(
        sample(&publisher_side, "murmur_members{state=\"alive\"}"),
        Some(2.0)
    );
    assert!(
        sample(
            &publisher_side,
            "murmur_gossip_packets_total{direction=\"in\"}"
        )
        .unwrap()
            > 0.0
    );
    assert!(sample(&publisher_side, "murmur_peer_rtt_seconds{peer=\"node-1\"}").is_some());
    assert!(
        sample(&subscriber_side, "murmur_fanout_subscribers_count").unwrap_or(0.0)
            + sample(&publisher_side, "murmur_fanout_subscribers_count").unwrap_or(0.0)
            >= 50.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_cluster() -> TestResult {
    let alone = start_node(|_| {}).await;
    assert_eq!(
        http_get(alone.local_addr(), "/readyz").await?.0,
        200,
        "no seeds: ready at once"
    );

    // Seeds that are not up yet: not ready until a peer is found and linked.
    let seed_socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let seed = seed_socket.local_addr()?;
    drop(seed_socket);
    let waiting = start_node(|s| {
        s.name = "waiting".into();
        s.seeds = vec![seed.to_string()];
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    let (status, body) = http_get(waiting.local_addr(), "/readyz").await?;
    assert_eq!(status, 503, "{body}");
    let peer = start_node(|s| {
        s.name = "peer".into();
        s.seeds = vec![gossip_addr(&waiting)];
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    let addr = waiting.local_addr();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if http_get(addr, "/readyz").await?.0 == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(peer);
    Ok(())
}
