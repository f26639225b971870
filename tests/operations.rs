//! What an operator watches: `/metrics` series that move under load, and `/readyz`.

use std::time::Duration;

use murmur_tests::{
    TEST_CLUSTER_KEY, WsClient, gossip_addr, murmur_binary, start_cluster, start_node, wait_until,
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
    let (status, publisher_side) = http_get(nodes[0].admin_addr(), "/metrics").await?;
    assert_eq!(status, 200);
    let (_, subscriber_side) = http_get(nodes[1].admin_addr(), "/metrics").await?;
    for series in [
        "murmur_connections",
        "murmur_subscriptions",
        "murmur_events_received_total",
        "murmur_events_published_total",
        "murmur_deliveries_total",
        "murmur_event_writes_total",
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
    // 50 events took at least one socket write and at most one each.
    let writes = sample(&subscriber_side, "murmur_event_writes_total").unwrap_or(0.0);
    assert!((1.0..=50.0).contains(&writes), "{writes} event writes");
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

struct Process {
    child: std::process::Child,
    listen: std::net::SocketAddr,
    /// `/v1/cluster` and `/metrics`.
    admin: std::net::SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn spawn_node(name: &str, gossip: std::net::SocketAddr, seed: std::net::SocketAddr) -> Process {
    let (listen, admin) = (free_tcp(), free_tcp());
    let child = std::process::Command::new(murmur_binary())
        .args(["serve", "--name", name, "--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args([
            "--gossip",
            &gossip.to_string(),
            "--quic",
            &free_udp().to_string(),
        ])
        .args(["--seeds", &seed.to_string(), "--shutdown-grace", "3s"])
        .env("MURMUR_CLUSTER_KEY", TEST_CLUSTER_KEY)
        .env_remove("MURMUR_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("murmur serve starts");
    Process {
        child,
        listen,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_without_losing_or_gapping() -> TestResult {
    use std::sync::{Arc, Mutex};

    use murmur_tests::{Acked, Record, resuming_subscriber, steady_publisher};

    let gossips: Vec<_> = (0..3).map(|_| free_udp()).collect();
    let mut nodes: Vec<Process> = (0..3)
        .map(|i| spawn_node(&format!("p{i}"), gossips[i], gossips[0]))
        .collect();
    for node in &nodes {
        let addr = node.listen;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while http_get(addr, "/readyz").await.map(|r| r.0).unwrap_or(0) != 200 {
            assert!(tokio::time::Instant::now() < deadline, "{addr} never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("ws://{}/ws", n.listen))
        .collect();
    // The subscriber and the publisher start on the node that will be drained.
    let (stop_subscriber, subscriber_stop) = tokio::sync::watch::channel(false);
    let (stop_publisher, publisher_stop) = tokio::sync::watch::channel(false);
    let record = Arc::new(Mutex::new(Record::default()));
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let subscriber = resuming_subscriber(
        Arc::new(Mutex::new(urls.clone())),
        "drain.>".into(),
        record.clone(),
        subscriber_stop,
        ready,
    );
    is_ready.await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked: Acked = Arc::default();
    let topics = (0..8).map(|i| format!("drain.t{i}")).collect();
    let publisher = steady_publisher(
        Arc::new(Mutex::new(urls)),
        topics,
        acked.clone(),
        publisher_stop,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let drained = nodes.remove(0);
    let pid = drained.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    let mut drained = drained;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = drained.child.try_wait()? {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the node did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    let drain_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_publisher.send(true);
    let failed = publisher.await?;
    let acked = acked.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let positions = record.lock().unwrap().positions();
        if acked.iter().all(|a| positions.contains(a)) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_subscriber.send(true);
    subscriber.abort();
    let record = record.lock().unwrap().clone();
    eprintln!(
        "drained in {drain_time:?}; {} acknowledged, {failed} failed; subscriber got {} after {} reconnects",
        acked.len(),
        record.events.len(),
        record.reconnects
    );
    assert!(
        record.reconnects >= 1,
        "the subscriber was moved off the drained node"
    );
    assert!(record.gaps.is_empty(), "gaps: {:?}", record.gaps);
    assert!(
        record.out_of_order.is_empty(),
        "out of order: {:?}",
        record.out_of_order
    );
    let positions = record.positions();
    let missing: Vec<_> = acked.iter().filter(|a| !positions.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never received: {missing:?}"
    );
    assert!(acked.len() > 50, "the load ran");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_failure_detection_never_reuses_a_sequence_number() -> TestResult {
    use murmur::routing::ownership::rank;
    let gossips: Vec<_> = (0..3).map(|_| free_udp()).collect();
    let nodes: Vec<Process> = (0..3)
        .map(|i| spawn_node(&format!("p{i}"), gossips[i], gossips[0]))
        .collect();
    for node in &nodes {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while http_get(node.listen, "/readyz")
            .await
            .map(|r| r.0)
            .unwrap_or(0)
            != 200
        {
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let topic = (0..)
        .map(|i| format!("paused.{i}"))
        .find(|t| rank(t, ["p0", "p1", "p2"])[0] == "p2")
        .unwrap();
    let url = format!("ws://{}/ws", nodes[0].listen);
    let mut publisher = WsClient::connect_url(&url).await?;
    publisher.recv_json().await?;
    let mut positions: Vec<(String, u64)> = Vec::new();
    // Retried while the answer is `unavailable` (an owner fenced after its stall, say).
    let publish = async |client: &mut WsClient, n: usize| -> anyhow::Result<(String, u64)> {
        for _ in 0..100 {
            let reference = format!("p{n}");
            client
                .send_json(json!({"op": "pub", "topic": &topic, "data": n, "ref": &reference}))
                .await?;
            let answer = loop {
                let frame = client.recv_json().await?;
                if frame["ref"] == reference.as_str() {
                    break frame;
                }
            };
            if answer["op"] == "ok" {
                return Ok((
                    answer["epoch"].as_str().unwrap().to_owned(),
                    answer["seq"].as_u64().unwrap(),
                ));
            }
            assert_eq!(answer["code"], "unavailable", "{answer}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("pub p{n} stayed unavailable")
    };
    for n in 0..3 {
        positions.push(publish(&mut publisher, n).await?);
    }
    // A client of the owner itself: its publish will wait in the paused owner's socket.
    let mut stalled = WsClient::connect_url(&format!("ws://{}/ws", nodes[2].listen)).await?;
    stalled.recv_json().await?;
    let owner_pid = nodes[2].child.id().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &owner_pid])
        .status()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(nodes[0].admin, "/v1/cluster").await?;
        if body.contains(r#""name":"p2","state":"down""#) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "p2 never declared down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 3..6 {
        positions.push(publish(&mut publisher, n).await?);
    }
    // Read by the owner when it wakes, before it learns the others carried on without it.
    stalled
        .send_json(json!({"op": "pub", "topic": &topic, "data": "stalled", "ref": "stalled"}))
        .await?;
    std::process::Command::new("kill")
        .args(["-CONT", &owner_pid])
        .status()?;
    // Refused (`unavailable`) or sequenced after the owner caught up, never at a position
    // the others gave meanwhile.
    let answer = tokio::time::timeout(Duration::from_secs(10), stalled.recv_json()).await;
    if let Ok(Ok(answer)) = &answer
        && answer["op"] == "ok"
    {
        positions.push((
            answer["epoch"].as_str().unwrap().to_owned(),
            answer["seq"].as_u64().unwrap(),
        ));
    } else if let Ok(Ok(answer)) = &answer {
        assert_eq!(answer["code"], "unavailable", "{answer}");
    }
    // The owner noticed its stall and fenced itself: it sequenced nothing until it heard
    // from the others again.
    let (_, metrics) = http_get(nodes[2].admin, "/metrics").await?;
    let fences = sample(&metrics, "murmur_stall_fences_total").unwrap_or(0.0);
    assert!(fences >= 1.0, "no stall fence counted:\n{metrics}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(nodes[0].admin, "/v1/cluster").await?;
        if body.matches(r#""state":"alive""#).count() == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "p2 never came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 6..9 {
        positions.push(publish(&mut publisher, n).await?);
    }
    // Once it heard from a majority, the fence is lifted: it owns and sequences again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http_get(nodes[2].admin, "/metrics").await?;
        if sample(&metrics, "murmur_fenced") == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "p2 stayed fenced:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    positions.push(publish(&mut stalled, 9).await?);
    let mut seen = std::collections::HashSet::new();
    for p in &positions {
        assert!(
            seen.insert(p.clone()),
            "{p:?} was given twice: {positions:?}"
        );
    }
    Ok(())
}
