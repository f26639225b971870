//! The no-silent-loss contract across a cluster: topic owners, replicas, resume on any
//! node, and acknowledged events that outlive their owner.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use murmur::event::{Event, Payload};
use murmur_tests::{
    Acked, Record, TEST_CLUSTER_KEY, WsClient, crash, gossip_addr, members_in_state, position,
    recv_n, resuming_subscriber, seqs, start_cluster, start_node, steady_publisher, topic_owned_by,
    wait_for_interest_everywhere, wait_for_mesh, wait_until, ws_url,
};
use serde_json::json;

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_replays_exactly_the_missed_events() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    // Owned by node-2, published through node-0, read on node-1 and then on node-2.
    let topic = topic_owned_by(&nodes[0], "room.", "node-2");
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let (mut first, _) = WsClient::connect_json(&nodes[1]).await?;
    first.sub("s", &topic).await?;
    wait_for_interest_everywhere(&nodes, 1, 1).await;
    let mut epoch = String::new();
    for i in 1..=5 {
        let (ok, _) = publisher
            .publish(&topic, json!(i), &format!("p{i}"))
            .await?;
        epoch = ok["epoch"].as_str().unwrap().to_owned();
        assert_eq!(ok["seq"], i);
    }
    assert_eq!(seqs(&recv_n(&mut first, 5).await?), vec![1, 2, 3, 4, 5]);
    first.abandon();
    for i in 6..=10 {
        publisher
            .publish(&topic, json!(i), &format!("p{i}"))
            .await?;
    }
    for node in [&nodes[2], &nodes[0]] {
        let (mut again, _) = WsClient::connect_json(node).await?;
        let ok = again
            .request(
                json!({"op": "sub", "id": "s", "topic": topic, "from": {"epoch": epoch, "seq": 5}}),
            )
            .await?;
        assert_eq!(ok["op"], "ok", "{ok}");
        let replayed = recv_n(&mut again, 5).await?;
        assert_eq!(seqs(&replayed), vec![6, 7, 8, 9, 10]);
        assert!(replayed.iter().all(|e| e["epoch"] == epoch.as_str()));
        again.ping("no-more").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_resume_on_another_node_includes_new_topics() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let (mut first, _) = WsClient::connect_json(&nodes[1]).await?;
    first.sub("w", "dev.*").await?;
    wait_for_interest_everywhere(&nodes, 1, 1).await;
    publisher.publish("dev.a", json!("a1"), "1").await?;
    let seen = first.recv_json().await?;
    first.abandon();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for (i, topic) in ["dev.a", "dev.b", "dev.c", "dev.b"].iter().enumerate() {
        publisher
            .publish(topic, json!(format!("x{i}")), &format!("q{i}"))
            .await?;
    }
    let (mut again, _) = WsClient::connect_json(&nodes[2]).await?;
    let from =
        json!({"topics": {"dev.a": {"epoch": seen["epoch"], "seq": 1}}, "since": seen["ts"]});
    let ok = again
        .request(json!({"op": "sub", "id": "w", "topic": "dev.*", "from": from}))
        .await?;
    assert_eq!(ok["op"], "ok");
    let mut got: Vec<String> = recv_n(&mut again, 4)
        .await?
        .iter()
        .map(|e| format!("{}#{}", e["topic"].as_str().unwrap(), e["seq"]))
        .collect();
    got.sort();
    assert_eq!(got, vec!["dev.a#2", "dev.b#1", "dev.b#2", "dev.c#1"]);
    again.ping("no-more").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_the_loss_of_their_owner() -> TestResult {
    let mut nodes = start_cluster(3, |_, _| {}).await;
    let topic = topic_owned_by(&nodes[0], "orders.", "node-2");
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let mut epoch = String::new();
    for i in 1..=20 {
        let (ok, _) = publisher
            .publish(&topic, json!(i), &format!("p{i}"))
            .await?;
        epoch = ok["epoch"].as_str().unwrap().to_owned();
    }
    let owner = nodes.pop().unwrap();
    owner.halt();
    wait_until(
        "the survivors see the owner down",
        Duration::from_secs(15),
        || {
            nodes
                .iter()
                .all(|n| members_in_state(n, "down") == ["node-2"])
        },
    )
    .await;
    // Every acknowledged event is still there, in the same epoch...
    let (mut reader, _) = WsClient::connect_json(&nodes[1]).await?;
    let ok = reader
        .request(json!({"op": "sub", "id": "r", "topic": topic, "from": "earliest"}))
        .await?;
    assert_eq!(ok["op"], "ok");
    let replayed = recv_n(&mut reader, 20).await?;
    assert_eq!(seqs(&replayed), (1..=20).collect::<Vec<_>>());
    assert!(replayed.iter().all(|e| e["epoch"] == epoch.as_str()));
    // ...and the topic carries on from where it was, with no gap.
    let (ok, _) = publisher.publish(&topic, json!(21), "p21").await?;
    assert_eq!(
        (ok["epoch"].as_str(), ok["seq"].as_u64()),
        (Some(epoch.as_str()), Some(21))
    );
    assert_eq!(reader.recv_json().await?["seq"], 21);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_cluster_still_acknowledges() -> TestResult {
    let nodes = start_cluster(1, |_, s| s.replication = 3).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let (ok, _) = publisher.publish("solo", json!(1), "p").await?;
    assert_eq!(ok["seq"], 1);
    Ok(())
}

/// Checks a subscriber's record against the acknowledged publishes: no gap frame, no
/// duplicate, every acknowledged event received, and each topic contiguous in one epoch.
fn check_record(name: &str, record: &Record, acked: &[(String, String, u64)]) {
    assert!(record.gaps.is_empty(), "{name} got gaps: {:?}", record.gaps);
    assert!(
        record.out_of_order.is_empty(),
        "{name} got events out of order or twice: {:?}",
        record.out_of_order.iter().map(position).collect::<Vec<_>>()
    );
    let positions = record.positions();
    assert_eq!(
        positions.len(),
        record.events.len(),
        "{name} got duplicates"
    );
    let missing: Vec<_> = acked.iter().filter(|a| !positions.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "{name} lacks acknowledged events: {missing:?}"
    );
    let mut by_topic: std::collections::BTreeMap<&str, Vec<(&str, u64)>> = Default::default();
    for event in &record.events {
        by_topic
            .entry(event["topic"].as_str().unwrap())
            .or_default()
            .push((
                event["epoch"].as_str().unwrap(),
                event["seq"].as_u64().unwrap(),
            ));
    }
    for (topic, seen) in by_topic {
        let epochs: std::collections::BTreeSet<&str> = seen.iter().map(|(e, _)| *e).collect();
        assert_eq!(epochs.len(), 1, "{name}: {topic} changed epoch: {epochs:?}");
        let seqs: Vec<u64> = seen.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{name}: {topic} out of order or with a hole"
        );
    }
}

struct Load {
    /// Each client's list of node URLs (in its own order): a node started during the load is
    /// added to every one of them ([`Load::add_node`]).
    urls: Vec<Arc<Mutex<Vec<String>>>>,
    records: Vec<Arc<Mutex<Record>>>,
    acked: Acked,
    stop_publishers: tokio::sync::watch::Sender<bool>,
    stop_subscribers: tokio::sync::watch::Sender<bool>,
    subscribers: Vec<tokio::task::JoinHandle<()>>,
    publishers: Vec<tokio::task::JoinHandle<usize>>,
}

/// Two resuming subscribers on `load.>` and two publishers over 12 topics, spread over the
/// nodes, all moving to another node when theirs goes away.
async fn start_load(nodes: &[murmur::RunningNode]) -> Load {
    let urls: Vec<String> = nodes.iter().map(ws_url).collect();
    let mut client_urls = Vec::new();
    let (stop_subscribers, subscribers_stop) = tokio::sync::watch::channel(false);
    let (stop_publishers, publishers_stop) = tokio::sync::watch::channel(false);
    let acked: Acked = Arc::default();
    let mut records = Vec::new();
    let mut subscribers = Vec::new();
    for start in 0..2 {
        let rotated = Arc::new(Mutex::new({
            let mut u = urls.clone();
            u.rotate_left(start);
            u
        }));
        client_urls.push(rotated.clone());
        let record = Arc::new(Mutex::new(Record::default()));
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        subscribers.push(resuming_subscriber(
            rotated,
            "load.>".into(),
            record.clone(),
            subscribers_stop.clone(),
            ready,
        ));
        is_ready.await.expect("subscriber ready");
        records.push(record);
    }
    wait_for_interest_everywhere(nodes, usize::MAX, 1).await;
    let topics: Vec<String> = (0..12).map(|i| format!("load.t{i}")).collect();
    let mut publishers = Vec::new();
    for start in 0..2 {
        let rotated = Arc::new(Mutex::new({
            let mut u = urls.clone();
            u.rotate_left(start + 1);
            u
        }));
        client_urls.push(rotated.clone());
        publishers.push(steady_publisher(
            rotated,
            topics.clone(),
            acked.clone(),
            publishers_stop.clone(),
        ));
    }
    Load {
        urls: client_urls,
        records,
        acked,
        stop_publishers,
        stop_subscribers,
        subscribers,
        publishers,
    }
}

impl Load {
    /// Lets every client move to `node` when its own goes away. (Pushed onto a list no
    /// client read, a restarted node's URL reached nobody: after the last node of a rolling
    /// restart went away, its subscribers had no node left to resume on, and missed what was
    /// acknowledged but not yet delivered to them.)
    fn add_node(&self, node: &murmur::RunningNode) {
        for urls in &self.urls {
            urls.lock().unwrap().push(ws_url(node));
        }
    }

    /// Lets the load run until `more` publishes beyond those acknowledged so far are
    /// acknowledged (a new owner waits for the membership to settle before it claims a
    /// topic, so a fixed time under load says little about how much load there was).
    async fn run_until_acked(&self, more: usize) {
        let target = self.acked.lock().unwrap().len() + more;
        wait_until(
            &format!("{more} more publishes acknowledged"),
            Duration::from_secs(15),
            || self.acked.lock().unwrap().len() >= target,
        )
        .await;
    }

    /// Stops publishing, waits until every subscriber has every acknowledged event, stops.
    async fn finish(self) -> (Vec<Record>, Vec<(String, String, u64)>) {
        let _ = self.stop_publishers.send(true);
        let mut failed = 0;
        for p in self.publishers {
            failed += p.await.unwrap_or(0);
        }
        let acked = self.acked.lock().unwrap().clone();
        assert!(
            acked.len() > 100,
            "the load ran: {} acknowledged, {failed} failed",
            acked.len()
        );
        let records = self.records.clone();
        let all_in = || {
            records.iter().all(|r| {
                let positions = r.lock().unwrap().positions();
                acked.iter().all(|a| positions.contains(a))
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !all_in() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop_subscribers.send(true);
        for s in self.subscribers {
            s.abort();
        }
        let records: Vec<Record> = self
            .records
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .collect();
        eprintln!(
            "{} acknowledged, {failed} not; subscribers got {:?} events after {:?} reconnects",
            acked.len(),
            records.iter().map(|r| r.events.len()).collect::<Vec<_>>(),
            records.iter().map(|r| r.reconnects).collect::<Vec<_>>()
        );
        (records, acked)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_under_load_loses_nothing_and_opens_no_gap() -> TestResult {
    let mut nodes = start_cluster(3, |_, _| {}).await;
    let load = start_load(&nodes).await;
    load.run_until_acked(60).await;
    let seed = gossip_addr(&nodes[0]);
    let newcomer = start_node(|s| {
        s.name = "node-3".into();
        s.seeds = vec![seed];
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    load.add_node(&newcomer);
    nodes.push(newcomer);
    wait_for_mesh(&nodes).await;
    load.run_until_acked(80).await;
    let (records, acked) = load.finish().await;
    for (i, record) in records.iter().enumerate() {
        check_record(&format!("subscriber {i}"), record, &acked);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_opens_no_gap() -> TestResult {
    let mut nodes = start_cluster(3, |_, s| s.shutdown_grace = Duration::from_secs(2)).await;
    let load = start_load(&nodes).await;
    load.run_until_acked(40).await;
    for i in 0..3 {
        let old = nodes.remove(i);
        old.shutdown();
        old.stopped().await;
        let seed = gossip_addr(&nodes[0]);
        let restarted = start_node(|s| {
            s.name = format!("node-{i}");
            s.seeds = vec![seed];
            s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
            s.shutdown_grace = Duration::from_secs(2);
        })
        .await;
        load.add_node(&restarted);
        nodes.insert(i, restarted);
        wait_for_mesh(&nodes).await;
        load.run_until_acked(40).await;
    }
    let (records, acked) = load.finish().await;
    for (i, record) in records.iter().enumerate() {
        check_record(&format!("subscriber {i}"), record, &acked);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deliveries_move_to_another_member_when_their_node_dies() -> TestResult {
    let mut nodes = start_cluster(3, |_, _| {}).await;
    let topic = topic_owned_by(&nodes[0], "work.", "node-0");
    let (mut steady, _) = WsClient::connect_json(&nodes[1]).await?;
    steady.sub_group("a", &topic, "workers").await?;
    let (mut doomed, _) = WsClient::connect_json(&nodes[2]).await?;
    doomed.sub_group("b", &topic, "workers").await?;
    wait_until("node-0 knows both members", Duration::from_secs(10), || {
        nodes[0].state().broker.peer_interests() == 2
    })
    .await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    for i in 0..10 {
        publisher
            .publish(&topic, json!(i), &format!("p{i}"))
            .await?;
    }
    // Round-robin over the two nodes: each member gets about half. The doomed one never acks.
    let mut got_by_doomed = Vec::new();
    let mut got_by_steady = Vec::new();
    while got_by_doomed.len() + got_by_steady.len() < 10 {
        tokio::select! {
            e = doomed.recv_json() => got_by_doomed.push(e?["data"].as_u64().unwrap()),
            e = steady.recv_json() => {
                let e = e?;
                steady.send_json(json!({"op": "ack", "delivery": e["delivery"]})).await?;
                got_by_steady.push(e["data"].as_u64().unwrap());
            }
        }
    }
    assert!(!got_by_doomed.is_empty(), "both nodes got a share");
    nodes.pop().unwrap().halt();
    let mut redelivered = Vec::new();
    while redelivered.len() < got_by_doomed.len() {
        let e = steady.recv_json().await?;
        assert_eq!(e["redelivered"], true, "{e}");
        steady
            .send_json(json!({"op": "ack", "delivery": e["delivery"]}))
            .await?;
        redelivered.push(e["data"].as_u64().unwrap());
    }
    redelivered.sort_unstable();
    got_by_doomed.sort_unstable();
    assert_eq!(
        redelivered, got_by_doomed,
        "every unacknowledged delivery moved"
    );
    steady.ping("no-more").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_more_nodes_than_replicas_starts_a_new_epoch_and_says_so() -> TestResult {
    let nodes = start_cluster(5, |_, _| {}).await;
    // A topic whose owner and replica are both about to go, published through node-0.
    let topic = (0..)
        .map(|i| format!("fragile.{i}"))
        .find(|t| {
            let placement = nodes[0].state().cluster.placement(t);
            !placement[..2].contains(&"node-0".to_owned())
        })
        .unwrap();
    let doomed = nodes[0].state().cluster.placement(&topic)[..2].to_vec();
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let (ok, _) = publisher.publish(&topic, json!(1), "p1").await?;
    let old_epoch = ok["epoch"].as_str().unwrap().to_owned();
    publisher.publish(&topic, json!(2), "p2").await?;
    let survivors = crash(nodes, &doomed).await;
    let (ok, _) = publisher.publish(&topic, json!(3), "p3").await?;
    assert_eq!(ok["op"], "ok", "a majority is still up: {ok}");
    assert_ne!(
        ok["epoch"],
        old_epoch.as_str(),
        "the lost continuity is a new epoch"
    );
    assert_eq!(ok["seq"], 1);
    let (mut reader, _) = WsClient::connect_json(&survivors[1]).await?;
    reader
        .request(
            json!({"op": "sub", "id": "r", "topic": topic, "from": {"epoch": old_epoch, "seq": 1}}),
        )
        .await?;
    let gap = reader.recv_json().await?;
    assert_eq!(gap["op"], "gap");
    assert_eq!(gap["reason"], "epoch_changed");
    assert_eq!(
        (gap["epoch"].as_str(), gap["from_seq"].as_u64()),
        (Some(old_epoch.as_str()), Some(2))
    );
    let event = reader.recv_json().await?;
    assert_eq!(
        (event["seq"].as_u64(), &event["data"]),
        (Some(1), &json!(3))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_in_a_minority_refuses_publishes() -> TestResult {
    let mut nodes = start_cluster(3, |_, _| {}).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    publisher.publish("minority.t", json!(1), "p1").await?;
    nodes.pop().unwrap().halt();
    nodes.pop().unwrap().halt();
    wait_until("node-0 is alone", Duration::from_secs(15), || {
        members_in_state(&nodes[0], "down").len() == 2
    })
    .await;
    let answer = publisher
        .request(json!({"op": "pub", "topic": "minority.t", "data": 2, "ref": "p2"}))
        .await?;
    assert_eq!(
        (answer["op"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{answer}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_receives_the_whole_history() -> TestResult {
    use murmur::routing::ownership::rank;
    let mut nodes = start_cluster(3, |_, _| {}).await;
    // A topic that node-1 owns, whose replica becomes node-3 once it joins.
    let four = ["node-0", "node-1", "node-2", "node-3"];
    let topic = (0..)
        .map(|i| format!("ledger.{i}"))
        .find(|t| {
            let r = rank(t, four);
            r[0] == "node-1" && r[1] == "node-3"
        })
        .unwrap();
    let old_replica = rank(&topic, four)[2].to_owned();
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    for i in 1..=10 {
        publisher
            .publish(&topic, json!(i), &format!("p{i}"))
            .await?;
    }
    let seed = gossip_addr(&nodes[0]);
    let newcomer = start_node(|s| {
        s.name = "node-3".into();
        s.seeds = vec![seed];
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    })
    .await;
    nodes.push(newcomer);
    wait_for_mesh(&nodes).await;
    // The next event goes to the new replica, after the history it lacks.
    publisher.publish(&topic, json!(11), "p11").await?;
    // Lose the owner and the old replica: only node-3 has the topic now.
    let doomed = ["node-1".to_owned(), old_replica];
    let survivors = crash(nodes, &doomed).await;
    let (mut reader, _) = WsClient::connect_json(&survivors[0]).await?;
    let ok = reader
        .request(json!({"op": "sub", "id": "r", "topic": topic, "from": "earliest"}))
        .await?;
    assert_eq!(ok["op"], "ok");
    let replayed = recv_n(&mut reader, 11).await?;
    assert_eq!(seqs(&replayed), (1..=11).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_publishes_keep_their_order_through_a_claim() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    // A fresh topic node-0 owns: the first publish makes node-0 claim it while more arrive.
    let topic = topic_owned_by(&nodes[0], "burst.", "node-0");
    let (mut client, _) = WsClient::connect_json(&nodes[0]).await?;
    for i in 0..200 {
        client
            .send_json(json!({"op": "pub", "topic": topic, "data": i, "ref": i.to_string()}))
            .await?;
    }
    let mut seq_of = vec![0u64; 200];
    for _ in 0..200 {
        let ok = client.recv_json().await?;
        assert_eq!(ok["op"], "ok", "{ok}");
        let i: usize = ok["ref"].as_str().unwrap().parse()?;
        seq_of[i] = ok["seq"].as_u64().unwrap();
    }
    assert_eq!(
        seq_of,
        (1..=200).collect::<Vec<u64>>(),
        "sequenced in the order sent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_member_on_another_node_gets_its_unacknowledged_event_again() -> TestResult {
    let nodes = start_cluster(3, |_, s| s.ack_timeout = Duration::from_millis(300)).await;
    let topic = topic_owned_by(&nodes[0], "solo.", "node-0");
    let (mut member, _) = WsClient::connect_json(&nodes[1]).await?;
    member.sub_group("m", &topic, "g").await?;
    wait_until("node-0 knows the member", Duration::from_secs(10), || {
        nodes[0].state().broker.peer_interests() == 1
    })
    .await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    publisher.publish(&topic, json!("job"), "p").await?;
    let first = member.recv_json().await?;
    assert_eq!(first["redelivered"], false);
    // Not acked: it comes back, to the only member there is.
    let again = member.recv_json().await?;
    assert_eq!(
        (again["data"].as_str(), again["redelivered"].as_bool()),
        (Some("job"), Some(true))
    );
    member
        .send_json(json!({"op": "ack", "delivery": again["delivery"]}))
        .await?;
    member.ping("settled").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_dropped_on_the_way_to_a_node_are_recovered_through_a_resync() -> TestResult {
    // node-0's queue towards each peer holds one event: a burst overflows it.
    let nodes = start_cluster(2, |i, s| {
        if i == 0 {
            s.peer_queue = 1;
        }
    })
    .await;
    let topic = topic_owned_by(&nodes[0], "burst.drop.", "node-0");
    let (mut subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    subscriber.sub("s", &topic).await?;
    wait_until(
        "node-0 knows the subscriber",
        Duration::from_secs(10),
        || nodes[0].state().broker.peer_interests() == 1,
    )
    .await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    const EVENTS: u64 = 300;
    for i in 1..EVENTS {
        publisher
            .send_json(json!({"op": "pub", "topic": topic, "data": i}))
            .await?;
    }
    // A drop is noticed when the topic's next event arrives after the hole: the last event
    // comes once the queue has drained, so a drop at the tail of the burst is noticed too.
    wait_until(
        "node-0's queue to node-1 has drained",
        Duration::from_secs(10),
        || nodes[0].state().cluster.links()[0].queue_depth() == 0,
    )
    .await;
    publisher.publish(&topic, json!(EVENTS), "last").await?;
    // The subscriber gets a prefix, then (at the first hole) a resync; resuming from its
    // cursor brings the rest, so it ends with every event exactly once.
    let mut got: Vec<u64> = Vec::new();
    let mut epoch = String::new();
    let mut resyncs = 0;
    while (got.len() as u64) < EVENTS {
        let frame = match subscriber.recv().await? {
            murmur_tests::Received::Frame(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                serde_json::from_str::<serde_json::Value>(t.as_str())?
            }
            _ => serde_json::Value::Null,
        };
        match frame["op"].as_str() {
            Some("event") => {
                epoch = frame["epoch"].as_str().unwrap().to_owned();
                got.push(frame["seq"].as_u64().unwrap());
            }
            _ => {
                resyncs += 1;
                assert!(resyncs < 50, "too many resyncs");
                let (mut again, _) = WsClient::connect_json(&nodes[1]).await?;
                let last = got.last().copied().unwrap_or(0);
                let from = if last == 0 {
                    json!("earliest")
                } else {
                    json!({"epoch": epoch, "seq": last})
                };
                let ok = again
                    .request(json!({"op": "sub", "id": "s", "topic": topic, "from": from}))
                    .await?;
                assert_eq!(ok["op"], "ok");
                subscriber = again;
            }
        }
    }
    assert_eq!(
        got,
        (1..=EVENTS).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(resyncs >= 1, "the overflow was noticed");
    assert!(
        nodes[0].state().cluster.links()[0]
            .stats
            .events_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "events were really dropped on the way"
    );
    Ok(())
}

/// The node that dropped events on the way says so on its control queue, and every plain
/// subscriber on the receiving node resyncs at once. Before, a drop showed only as a hole
/// when the topic's next event came: a subscriber of a topic that goes quiet after its
/// dropped event was never told. Here that subscriber is on a quiet topic, on its own
/// connection, while a burst on another topic overflows the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_is_announced_so_subscribers_resync_without_waiting_for_the_next_event() -> TestResult
{
    let nodes = start_cluster(2, |i, s| {
        if i == 0 {
            s.peer_queue = 1;
        }
    })
    .await;
    let busy = topic_owned_by(&nodes[0], "burst.busy.", "node-0");
    let quiet = topic_owned_by(&nodes[0], "burst.quiet.", "node-0");
    let (mut busy_subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    busy_subscriber.sub("b", &busy).await?;
    let (mut quiet_subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    quiet_subscriber.sub("q", &quiet).await?;
    wait_until(
        "node-0 knows both subscribers",
        Duration::from_secs(10),
        || nodes[0].state().broker.peer_interests() == 2,
    )
    .await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let (ok, _) = publisher.publish(&quiet, json!("first"), "q1").await?;
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    assert_eq!(quiet_subscriber.recv_json().await?["seq"], 1);
    for i in 1..=300 {
        publisher
            .send_json(json!({"op": "pub", "topic": busy, "data": i}))
            .await?;
    }
    publisher
        .send_json(json!({"op": "pub", "topic": quiet, "data": "second"}))
        .await?;
    publisher.ping("all-sent").await?;
    // Nothing more is published on the quiet topic: only the announcement can tell.
    let mut quiet_seen = 1;
    let told = loop {
        let frame =
            match tokio::time::timeout(Duration::from_secs(10), quiet_subscriber.recv()).await {
                Err(_) => break false,
                Ok(received) => match received? {
                    murmur_tests::Received::Frame(
                        tokio_tungstenite::tungstenite::Message::Text(t),
                    ) => serde_json::from_str::<serde_json::Value>(t.as_str())?,
                    _ => break true,
                },
            };
        match frame["op"].as_str() {
            Some("event") => quiet_seen = frame["seq"].as_u64().unwrap(),
            _ => {
                assert_eq!(frame["code"], "resync", "{frame}");
                break true;
            }
        }
    };
    assert!(
        nodes[0].state().cluster.links()[0]
            .stats
            .events_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "events were really dropped on the way"
    );
    assert!(
        told,
        "the quiet topic's subscriber was never told of the drop"
    );
    // It resumes from its cursor and ends with both events, once each. Drops later in the
    // burst tell the node's subscribers again: a resume told to resync resumes once more.
    let mut attempts = 0;
    'resume: loop {
        attempts += 1;
        assert!(attempts <= 20, "still told to resync after 20 resumes");
        let (mut again, _) = WsClient::connect_json(&nodes[1]).await?;
        let ok = again
            .request(json!({"op": "sub", "id": "q", "topic": quiet,
                "from": {"epoch": epoch, "seq": quiet_seen}}))
            .await?;
        assert_eq!(ok["op"], "ok");
        again
            .send_json(json!({"op": "ping", "ref": "no-more"}))
            .await?;
        loop {
            let frame = again.recv_json().await?;
            match frame["op"].as_str() {
                Some("event") => {
                    let seq = frame["seq"].as_u64().unwrap();
                    assert_eq!(seq, quiet_seen + 1, "in order, once: {frame}");
                    quiet_seen = seq;
                }
                Some("pong") => break 'resume,
                _ => {
                    assert_eq!(frame["code"], "resync", "{frame}");
                    continue 'resume;
                }
            }
        }
    }
    assert_eq!(quiet_seen, 2, "both events of the quiet topic");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_arrives_twice_reaches_a_subscriber_once() -> TestResult {
    // A peer may forward an event again around the loss and return of its link (seen in the
    // chaos flapping runs): the subscriber's connection must not pass the copy on.
    let nodes = start_cluster(1, |_, _| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&nodes[0]).await?;
    subscriber.sub("s", "news").await?;
    let event = |seq: u64| {
        Arc::new(Event::new(
            "news".into(),
            "e1".into(),
            seq,
            0,
            Payload::Json(Bytes::from(seq.to_string())),
        ))
    };
    let peer: Arc<str> = "node-9".into();
    for seq in [1, 2, 1, 2, 3] {
        nodes[0]
            .state()
            .broker
            .deliver_forwarded(&event(seq), true, &[], &peer, false);
    }
    assert_eq!(seqs(&recv_n(&mut subscriber, 3).await?), vec![1, 2, 3]);
    Ok(())
}

/// A live subscriber whose topic moves to a new epoch cannot know whether the old epoch had
/// more events it never got: it is told to resync, and its resume names them with an
/// `epoch_changed` gap, then replays the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_moving_to_a_new_epoch_mid_stream_makes_its_subscribers_resync() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&node).await?;
    subscriber.sub("s", "moved.t").await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    publisher.publish("moved.t", json!(1), "p1").await?;
    let (ok, _) = publisher.publish("moved.t", json!(2), "p2").await?;
    let old_epoch = ok["epoch"].as_str().unwrap().to_owned();
    assert_eq!(seqs(&recv_n(&mut subscriber, 2).await?), [1, 2]);

    // The topic's state is given up and taken again with nothing known: a new epoch, as
    // after a partition whose sides could not agree.
    node.state().broker.relinquish_all();
    let new_epoch = node.state().broker.install_topic("moved.t", None);
    assert_ne!(*new_epoch, *old_epoch);
    publisher.publish("moved.t", json!(3), "p3").await?;
    let notice = subscriber.recv_json().await?;
    assert_eq!(notice["code"], "resync", "{notice}");

    let (mut resumed, _) = WsClient::connect_json(&node).await?;
    let ok = resumed
        .request(json!({"op": "sub", "id": "s", "topic": "moved.t",
            "from": {"epoch": old_epoch, "seq": 2}}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    let gap = resumed.recv_json().await?;
    assert_eq!(
        (
            &gap["op"],
            &gap["epoch"],
            &gap["from_seq"],
            &gap["to_seq"],
            &gap["reason"]
        ),
        (
            &json!("gap"),
            &json!(old_epoch),
            &json!(3),
            &json!(0),
            &json!("epoch_changed")
        ),
        "{gap}"
    );
    let event = resumed.recv_json().await?;
    assert_eq!(
        (&event["epoch"], &event["seq"], &event["data"]),
        (&json!(*new_epoch), &json!(1), &json!(3))
    );
    Ok(())
}
