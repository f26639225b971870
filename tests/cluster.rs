//! Clusters of in-process nodes on 127.0.0.1: membership, the authenticated mesh, interest
//! routing and cluster-wide queue groups.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use murmur_tests::{
    OTHER_CLUSTER_KEY, TEST_CLUSTER_KEY, WsClient, gossip_addr, linked_peers, members_in_state,
    start_cluster, start_node, wait_for_mesh, wait_until,
};
use serde_json::json;

type TestResult = anyhow::Result<()>;

/// Waits until `node` knows `count` peer interests (patterns with subscribers elsewhere).
async fn wait_for_peer_interests(node: &murmur::RunningNode, count: usize) {
    wait_until(
        "peer interest has propagated",
        Duration::from_secs(10),
        || node.state().broker.peer_interests() == count,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_nodes_for_exact_and_wildcard_subscriptions() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    let (mut exact, _) = WsClient::connect_json(&nodes[1]).await?;
    exact.sub("x", "orders.eu.created").await?;
    exact.sub("end", "end").await?;
    let (mut wild, _) = WsClient::connect_json(&nodes[2]).await?;
    wild.sub("w", "orders.*.created").await?;
    wild.sub("r", "orders.>").await?;
    wild.sub("end", "end").await?;
    // node-0 learns 5 interests: 2 from node-1, 3 from node-2.
    wait_for_peer_interests(&nodes[0], 5).await;

    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    for (i, topic) in [
        "orders.eu.created",
        "orders.us.created",
        "orders.eu",
        "billing",
    ]
    .iter()
    .enumerate()
    {
        publisher.publish(topic, json!(i), &format!("p{i}")).await?;
    }
    publisher.publish("end", json!(null), "end").await?;

    let got: Vec<(String, String)> = exact
        .events_until("end")
        .await?
        .iter()
        .map(|e| {
            (
                e["sub"].as_str().unwrap().into(),
                e["topic"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(got, vec![("x".into(), "orders.eu.created".into())]);
    let mut got: Vec<(String, String)> = wild
        .events_until("end")
        .await?
        .iter()
        .map(|e| {
            (
                e["sub"].as_str().unwrap().into(),
                e["topic"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    let mut expected: Vec<(String, String)> = vec![
        ("w".into(), "orders.eu.created".into()),
        ("w".into(), "orders.us.created".into()),
        ("r".into(), "orders.eu.created".into()),
        ("r".into(), "orders.us.created".into()),
        ("r".into(), "orders.eu".into()),
    ];
    expected.sort();
    assert_eq!(
        got, expected,
        "each subscription once per event, across nodes"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_only_to_nodes_with_interest_and_keep_their_order() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    subscriber.sub("s", "metrics.>").await?;
    wait_for_peer_interests(&nodes[0], 1).await;
    wait_for_peer_interests(&nodes[2], 1).await;

    // A topic node-0 owns: node-0 sequences it and sends it on only where it is wanted.
    let topic = (0..)
        .map(|i| format!("metrics.cpu{i}"))
        .find(|t| nodes[0].state().cluster.placement(t)[0] == "node-0")
        .unwrap();
    const EVENTS: u64 = 300;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    for i in 0..EVENTS {
        publisher
            .send_json(json!({"op": "pub", "topic": &topic, "data": i}))
            .await?;
    }
    publisher.publish(&topic, json!("last"), "last").await?;
    for i in 0..=EVENTS {
        let event = subscriber.recv_json().await?;
        assert_eq!(event["seq"], i + 1, "in order across the hop");
    }
    let received_by = |node: &murmur::RunningNode| {
        node.state()
            .broker
            .stats
            .events_from_peers
            .load(Ordering::Relaxed)
    };
    assert_eq!(received_by(&nodes[1]), EVENTS + 1);
    assert_eq!(
        received_by(&nodes[2]),
        0,
        "node-2 has no subscriber: nothing was sent to it"
    );
    let forwarded_to: HashMap<String, u64> = nodes[0]
        .state()
        .cluster
        .links()
        .iter()
        .map(|l| {
            (
                l.name.to_string(),
                l.stats.events_forwarded.load(Ordering::Relaxed),
            )
        })
        .collect();
    assert_eq!(forwarded_to["node-1"], EVENTS + 1);
    assert_eq!(forwarded_to["node-2"], 0);

    // Interest leaves with the subscription.
    subscriber
        .request(json!({"op": "unsub", "id": "s"}))
        .await?;
    wait_for_peer_interests(&nodes[0], 0).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_without_ref_through_a_non_owner_arrive_in_order_and_get_no_answer() -> TestResult
{
    let nodes = start_cluster(3, |_, _| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    subscriber.sub("s", "unanswered.>").await?;
    wait_for_peer_interests(&nodes[0], 1).await;
    wait_for_peer_interests(&nodes[2], 1).await;

    // Published on node-2, sequenced by node-0, stored on a replica, delivered on node-1.
    let topic = (0..)
        .map(|i| format!("unanswered.t{i}"))
        .find(|t| nodes[2].state().cluster.placement(t)[0] == "node-0")
        .unwrap();
    const EVENTS: u64 = 500;
    let (mut publisher, _) = WsClient::connect_json(&nodes[2]).await?;
    for i in 0..EVENTS {
        publisher
            .send_json(json!({"op": "pub", "topic": &topic, "data": i}))
            .await?;
    }
    // Fails on any frame but this `ok`: the publishes without `ref` are never answered.
    let (ok, _) = publisher.publish(&topic, json!("last"), "last").await?;
    assert_eq!(
        ok["seq"],
        EVENTS + 1,
        "sequenced after every unanswered one"
    );
    publisher.ping("after").await?;
    for i in 0..EVENTS {
        let event = subscriber.recv_json().await?;
        assert_eq!(
            (&event["seq"], &event["data"]),
            (&json!(i + 1), &json!(i)),
            "every unanswered publish, in the order sent"
        );
    }
    assert_eq!(subscriber.recv_json().await?["data"], "last");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_spread_over_nodes_gets_each_event_exactly_once() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (mut member, _) = WsClient::connect_json(node).await?;
        member
            .sub_group(&format!("m{i}"), "jobs.*", "workers")
            .await?;
        member.sub("end", "end").await?;
        members.push(member);
    }
    wait_for_peer_interests(&nodes[0], 4).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    const EVENTS: u64 = 60;
    for i in 0..EVENTS {
        publisher
            .publish("jobs.run", json!(i), &format!("p{i}"))
            .await?;
    }
    publisher.publish("end", json!(null), "end").await?;
    let mut per_event: HashMap<u64, usize> = HashMap::new();
    let mut per_member = Vec::new();
    for member in &mut members {
        let events = member.events_until("end").await?;
        per_member.push(events.len());
        for event in events {
            assert_eq!(event["redelivered"], false);
            *per_event
                .entry(event["data"].as_u64().unwrap())
                .or_default() += 1;
            member
                .send_json(json!({"op": "ack", "delivery": event["delivery"]}))
                .await?;
        }
    }
    assert_eq!(
        per_event.len() as u64,
        EVENTS,
        "every event delivered: {per_member:?}"
    );
    assert!(
        per_event.values().all(|&n| n == 1),
        "each event to exactly one member"
    );
    assert!(
        per_member.iter().all(|&n| n > 0),
        "members on every node share the work: {per_member:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_seen_at_once_and_takes_its_interest_along() -> TestResult {
    let mut nodes = start_cluster(3, |_, _| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&nodes[2]).await?;
    subscriber.sub("s", "t").await?;
    wait_for_peer_interests(&nodes[0], 1).await;
    let leaving = nodes.pop().unwrap();
    let started = Instant::now();
    leaving.shutdown();
    // The node first sends its clients elsewhere; a client that goes lets it leave at once.
    let goodbye = subscriber.recv_json().await?;
    assert_eq!(goodbye["code"], "shutting_down");
    subscriber.close().await;
    wait_until("node-0 sees node-2 as left", Duration::from_secs(2), || {
        members_in_state(&nodes[0], "left") == ["node-2"]
    })
    .await;
    let seen_after = started.elapsed();
    assert_eq!(nodes[0].state().broker.peer_interests(), 0);
    wait_until("node-1 sees node-2 as left", Duration::from_secs(2), || {
        members_in_state(&nodes[1], "left") == ["node-2"]
    })
    .await;
    eprintln!("graceful leave seen by node-0 after {seen_after:?}");
    tokio::time::timeout(Duration::from_secs(10), leaving.stopped()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_detected_and_a_restarted_one_rejoins() -> TestResult {
    let mut nodes = start_cluster(3, |_, _| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&nodes[2]).await?;
    subscriber.sub("s", "t").await?;
    wait_for_peer_interests(&nodes[0], 1).await;
    let crashed = nodes.pop().unwrap();
    let started = Instant::now();
    crashed.halt();
    wait_until(
        "node-0 and node-1 see node-2 down",
        Duration::from_secs(15),
        || {
            nodes
                .iter()
                .all(|n| members_in_state(n, "down") == ["node-2"])
        },
    )
    .await;
    let detected = started.elapsed();
    assert_eq!(
        nodes[0].state().broker.peer_interests(),
        0,
        "removed from routing"
    );
    assert!(linked_peers(&nodes[0]).iter().all(|p| p != "node-2"));

    let seed = gossip_addr(&nodes[0]);
    let started = Instant::now();
    let restarted = start_node(|s| {
        s.name = "node-2".into();
        s.seeds = vec![seed];
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    nodes.push(restarted);
    wait_for_mesh(&nodes).await;
    eprintln!(
        "crash detected after {detected:?}; restarted node meshed after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_mesh_and_route() -> TestResult {
    let nodes = start_cluster(5, |_, _| {}).await;
    let mut subscribers = Vec::new();
    for node in &nodes[1..] {
        let (mut client, _) = WsClient::connect_json(node).await?;
        client.sub("s", "fleet.*").await?;
        subscribers.push(client);
    }
    wait_for_peer_interests(&nodes[0], 4).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    publisher.publish("fleet.ship", json!("ahoy"), "p").await?;
    for subscriber in &mut subscribers {
        assert_eq!(subscriber.recv_json().await?["data"], "ahoy");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_cluster_key_is_refused() -> TestResult {
    let nodes = start_cluster(2, |_, _| {}).await;
    let intruder = start_node(|s| {
        s.name = "intruder".into();
        s.seeds = vec![gossip_addr(&nodes[0])];
        s.cluster_key = Some(murmur::config::Secret(OTHER_CLUSTER_KEY.into()));
    })
    .await;
    let rejected = |node: &murmur::RunningNode| {
        node.state()
            .cluster
            .gossip
            .stats
            .packets_rejected
            .load(Ordering::Relaxed)
    };
    // The intruder announces every second; wait until node-0 has refused some of it.
    wait_until(
        "node-0 refuses the intruder's packets",
        Duration::from_secs(10),
        || rejected(&nodes[0]) >= 2,
    )
    .await;
    for node in &nodes {
        assert!(!members_in_state(node, "alive").contains(&"intruder".to_owned()));
    }
    assert_eq!(
        members_in_state(&intruder, "alive"),
        ["intruder"],
        "it joined nobody"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_is_refused_on_the_mesh() -> TestResult {
    use murmur::cluster::security::files;
    let nodes = start_cluster(2, |_, _| {}).await;
    // Same gossip key (it gossips fine), but a node certificate from an unrelated CA.
    let dir = std::env::temp_dir().join(format!("murmur-foreign-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (ca_cert, ca_key) = files::new_ca()?;
    let (cert, key) = files::new_node("zz-foreign", &ca_cert, &ca_key)?;
    for (name, contents) in [
        ("ca.pem", &ca_cert),
        ("node.pem", &cert),
        ("node.key", &key),
    ] {
        std::fs::write(dir.join(name), contents)?;
    }
    let foreign = start_node(|s| {
        s.name = "zz-foreign".into();
        s.seeds = vec![gossip_addr(&nodes[0])];
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
        s.tls_ca = Some(dir.join("ca.pem"));
        s.tls_cert = Some(dir.join("node.pem"));
        s.tls_key = Some(dir.join("node.key"));
    })
    .await;
    wait_until(
        "node-0 sees the foreign node by gossip",
        Duration::from_secs(10),
        || members_in_state(&nodes[0], "alive").contains(&"zz-foreign".to_owned()),
    )
    .await;
    // node-0 sorts first and dials it; the TLS handshake fails, either side.
    let refused = |node: &murmur::RunningNode| {
        node.state()
            .cluster
            .stats
            .connections_refused
            .load(Ordering::Relaxed)
    };
    wait_until(
        "the mesh refuses the foreign certificate",
        Duration::from_secs(10),
        || refused(&nodes[0]) + refused(&foreign) >= 2,
    )
    .await;
    assert!(!linked_peers(&nodes[0]).contains(&"zz-foreign".to_owned()));
    assert!(linked_peers(&foreign).is_empty());
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_may_be_dns_names() -> TestResult {
    let first = start_node(|s| {
        s.name = "dns-a".into();
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    let port = gossip_addr(&first).rsplit(':').next().unwrap().to_owned();
    let second = start_node(|s| {
        s.name = "dns-b".into();
        s.seeds = vec![format!("localhost:{port}")];
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    wait_for_mesh(&[first, second]).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_link_is_redialled_and_interest_rebuilt() -> TestResult {
    let nodes = start_cluster(2, |_, _| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    subscriber.sub("s", "news").await?;
    wait_for_peer_interests(&nodes[0], 1).await;
    let established = |node: &murmur::RunningNode| {
        node.state()
            .cluster
            .stats
            .links_established
            .load(Ordering::Relaxed)
    };
    let before = established(&nodes[0]);
    // Either side may break it: here the accepting side does; the dialing side redials.
    assert!(nodes[1].state().cluster.reset_link("node-0"));
    wait_until(
        "node-0 has redialled node-1",
        Duration::from_secs(10),
        || established(&nodes[0]) > before && linked_peers(&nodes[0]) == ["node-1"],
    )
    .await;
    // The subscriber's node lost a peer it may have missed events from: it tells its
    // subscribers to resync (reconnect and resume).
    let notice = subscriber.recv_json().await?;
    assert_eq!(notice["code"], "resync", "{notice}");
    let (mut subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    subscriber.sub("s", "news").await?;
    wait_for_peer_interests(&nodes[0], 1).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    publisher
        .publish("news", json!("after the reconnect"), "p")
        .await?;
    assert_eq!(subscriber.recv_json().await?["data"], "after the reconnect");
    Ok(())
}

/// A node too busy to run its tasks for longer than failure detection takes (3 s of
/// suspicion after a missed probe) is still alive: its gossip has a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_runtime_is_saturated_is_not_declared_down() -> TestResult {
    let watcher = start_node(|s| {
        s.name = "watcher".into();
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    let seed = gossip_addr(&watcher);
    // The busy node on a runtime of its own, with one worker this test can block.
    let busy_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let busy = busy_runtime
        .spawn(start_node(|s| {
            s.name = "busy".into();
            s.seeds = vec![seed];
            s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
        }))
        .await?;
    wait_until("both see each other alive", Duration::from_secs(10), || {
        members_in_state(&watcher, "alive").len() == 2
            && members_in_state(&busy, "alive").len() == 2
    })
    .await;

    // Its only worker is taken for 5 s: past a probe, its suspicion and a margin.
    let blocked_for = Duration::from_secs(5);
    busy_runtime.spawn(async move { std::thread::sleep(blocked_for) });
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < blocked_for + Duration::from_secs(1) {
        for state in ["suspect", "down"] {
            if members_in_state(&watcher, state).contains(&"busy".to_owned()) {
                seen.push((state, started.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.is_empty(),
        "the watcher doubted the busy node: {seen:?}"
    );
    busy.halt();
    busy_runtime.shutdown_background();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_asks_the_topics_placement_and_a_wildcard_resume_asks_each_node_once() -> TestResult
{
    let nodes = start_cluster(5, |_, _| {}).await;
    let served = |node: &murmur::RunningNode| {
        node.state()
            .cluster
            .stats
            .replay_requests_served
            .load(Ordering::Relaxed)
    };
    // A topic whose owner and replica (replication 2) are neither node-0, where the client
    // resumes, nor node-4.
    let topic = (0..)
        .map(|i| format!("targeted.{i}"))
        .find(|t| {
            let placement = nodes[0].state().cluster.placement(t);
            !placement[..2]
                .iter()
                .any(|n| n == "node-0" || n == "node-4")
        })
        .unwrap();
    let placement: Vec<String> = nodes[0].state().cluster.placement(&topic)[..2].to_vec();
    let (mut publisher, _) = WsClient::connect_json(&nodes[4]).await?;
    let mut epoch = String::new();
    for i in 1..=6 {
        let (ok, _) = publisher
            .publish(&topic, json!(i), &format!("p{i}"))
            .await?;
        epoch = ok["epoch"].as_str().unwrap().to_owned();
    }
    let before: Vec<u64> = nodes.iter().map(served).collect();
    let (mut resumer, _) = WsClient::connect_json(&nodes[0]).await?;
    let ok = resumer
        .request(
            json!({"op": "sub", "id": "s", "topic": &topic, "from": {"epoch": &epoch, "seq": 3}}),
        )
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    let replayed = murmur_tests::recv_n(&mut resumer, 3).await?;
    assert_eq!(murmur_tests::seqs(&replayed), vec![4, 5, 6]);
    for (i, node) in nodes.iter().enumerate() {
        let asked = served(node) - before[i];
        let name = format!("node-{i}");
        if placement.contains(&name) {
            assert_eq!(asked, 1, "{name} holds the topic and is asked once");
        } else {
            assert_eq!(asked, 0, "{name} is not in the placement {placement:?}");
        }
    }

    // A wildcard can match topics anywhere: every other node is asked, once.
    let before: Vec<u64> = nodes.iter().map(served).collect();
    let ok = resumer
        .request(json!({"op": "sub", "id": "w", "topic": "targeted.>", "from": "earliest"}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    let replayed = murmur_tests::recv_n(&mut resumer, 6).await?;
    assert_eq!(murmur_tests::seqs(&replayed), vec![1, 2, 3, 4, 5, 6]);
    let asked: Vec<u64> = nodes
        .iter()
        .map(served)
        .zip(&before)
        .map(|(n, b)| n - b)
        .collect();
    assert_eq!(asked, vec![0, 1, 1, 1, 1]);
    Ok(())
}
