//! The cluster's own security, seen from outside: replayed gossip does not bring a dead node
//! back, and a node that cannot reach the cluster it was seeded with (down seeds, another
//! cluster key) is not ready and refuses publishes instead of serving as an island.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use murmur::RunningNode;
use murmur::config::Secret;
use murmur_tests::{
    OTHER_CLUSTER_KEY, TEST_CLUSTER_KEY, WsClient, expect_error, members_in_state, start_node,
    wait_until,
};
use serde_json::json;

type TestResult = anyhow::Result<()>;

/// `GET path` on a node's port: (status, body), whatever the status.
async fn http_get(node: &RunningNode, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(node.admin_addr()).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange).await??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response: {response}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head}"))?;
    Ok((status, body.to_owned()))
}

/// A free UDP port on 127.0.0.1, for a node whose address others must know before it starts.
fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

/// Publishes with a ref and returns the answer (ok or error).
async fn publish(node: &RunningNode, topic: &str) -> anyhow::Result<serde_json::Value> {
    let (mut client, _) = WsClient::connect_json(node).await?;
    client
        .request(json!({"op": "pub", "topic": topic, "data": "hello", "ref": "p"}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_gossip_does_not_bring_a_dead_node_back() -> TestResult {
    const WINDOW: Duration = Duration::from_secs(2);
    // The victim is seeded with an address the test holds, so the announcements it sends
    // there every second can be recorded, as an attacker on the network would.
    let recorder = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let recorded_at = recorder.local_addr()?;
    let victim = start_node(|s| {
        s.name = "victim".into();
        s.seeds = vec![recorded_at.to_string()];
        s.cluster_key = Some(Secret(TEST_CLUSTER_KEY.into()));
        s.gossip_replay_window = WINDOW;
    })
    .await;
    let mut captured = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while captured.len() < 3 {
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), recorder.recv_from(&mut buf))
            .await
            .map_err(|_| anyhow::anyhow!("the victim announced nothing"))??;
        captured.push(buf[..len].to_vec());
    }
    let last_capture = Instant::now();
    victim.halt();
    drop(recorder);

    // Later, a node comes up at the address the packets were meant for: the announcements
    // are addressed to it, and it has never heard of the victim (as the cluster forgets a
    // node 15 minutes after it went down).
    let witness = start_node(|s| {
        s.name = "witness".into();
        s.gossip = recorded_at;
        s.cluster_key = Some(Secret(TEST_CLUSTER_KEY.into()));
        s.gossip_replay_window = WINDOW;
    })
    .await;
    tokio::time::sleep((WINDOW + Duration::from_secs(1)).saturating_sub(last_capture.elapsed()))
        .await;
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    for _ in 0..3 {
        for packet in &captured {
            attacker.send_to(packet, recorded_at).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything admitted would show alive for a second or more, until a probe failed.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let (_, view) = http_get(&witness, "/v1/cluster").await?;
        assert!(
            !view.contains("victim"),
            "the dead node is back in the witness's view: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = &witness.state().cluster.gossip.stats.refused;
    wait_until(
        "the witness has refused every replayed packet",
        Duration::from_secs(5),
        || refused.too_old.load(Ordering::Relaxed) >= 3 * captured.len() as u64,
    )
    .await;
    assert_eq!(members_in_state(&witness, "alive"), ["witness"]);
    let (_, metrics) = http_get(&witness, "/metrics").await?;
    assert!(
        metrics.contains("murmur_gossip_packets_refused_total{reason=\"too_old\"}"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cluster_key_is_not_ready_and_refuses_publishes() -> TestResult {
    // Seeded with each other, as every node of a deployment is: each announces to the
    // other, and each refuses what the other sends.
    let (gossip_a, gossip_b) = (free_udp(), free_udp());
    let started = Instant::now();
    let a = start_node(|s| {
        s.name = "keyed-a".into();
        s.gossip = gossip_a;
        s.seeds = vec![gossip_b.to_string()];
        s.cluster_key = Some(Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    let b = start_node(|s| {
        s.name = "keyed-b".into();
        s.gossip = gossip_b;
        s.seeds = vec![gossip_a.to_string()];
        s.cluster_key = Some(Secret(OTHER_CLUSTER_KEY.into()));
    })
    .await;
    let bad_key = |node: &RunningNode| {
        node.state()
            .cluster
            .gossip
            .stats
            .refused
            .bad_key
            .load(Ordering::Relaxed)
    };
    wait_until(
        "each node refuses the other's packets",
        Duration::from_secs(10),
        || bad_key(&a) >= 2 && bad_key(&b) >= 2,
    )
    .await;
    // However long it waits (the nodes used to give up on their seeds after 10 s and serve
    // alone), a node that never found its cluster does not become an island.
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(started.elapsed())).await;
    for node in [&a, &b] {
        let (status, body) = http_get(node, "/readyz").await?;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("not joined: no seed answered"), "{body}");
        assert!(
            body.contains("gossip packets refused: bad key"),
            "/readyz names the refused packets: {body}"
        );
        let answer = publish(node, "orders.1").await?;
        expect_error(&answer, "unavailable", Some("p"));
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains("not joined"), "{answer}");
        assert_eq!(
            node.state().broker.history_size(),
            (0, 0),
            "nothing was sequenced as an island"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_started_one_node_at_a_time_becomes_ready() -> TestResult {
    // Every node is seeded with all three addresses, its own included (as in deploy/).
    let gossips: Vec<_> = (0..3).map(|_| free_udp()).collect();
    let seeds: Vec<String> = gossips.iter().map(ToString::to_string).collect();
    let start = |i: usize| {
        let seeds = seeds.clone();
        let gossip = gossips[i];
        start_node(move |s| {
            s.name = format!("fresh-{i}");
            s.gossip = gossip;
            s.seeds = seeds;
            s.cluster_key = Some(Secret(TEST_CLUSTER_KEY.into()));
        })
    };
    let first = start(0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = http_get(&first, "/readyz").await?;
    assert_eq!(status, 503, "alone with seeds to find: not ready ({body})");
    assert!(body.contains("not joined"), "{body}");
    expect_error(
        &publish(&first, "orders.1").await?,
        "unavailable",
        Some("p"),
    );

    let mut nodes = vec![first];
    for i in 1..3 {
        nodes.push(start(i).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &nodes {
        loop {
            let (status, body) = http_get(node, "/readyz").await?;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready: {body}",
                node.state().cluster.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let answer = publish(&nodes[0], "orders.1").await?;
    assert_eq!(answer["op"], "ok", "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_seeds_name_only_itself_serves_alone() -> TestResult {
    let gossip = free_udp();
    let node = start_node(|s| {
        s.name = "lonely".into();
        s.gossip = gossip;
        s.seeds = vec![gossip.to_string()];
        s.cluster_key = Some(Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    assert_eq!(http_get(&node, "/readyz").await?.0, 503);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&node, "/readyz").await?.0 != 200 {
        assert!(Instant::now() < deadline, "never ready alone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = publish(&node, "orders.1").await?;
    assert_eq!(answer["op"], "ok", "{answer}");
    Ok(())
}
