//! The bounds a node keeps whatever clients do: the findings of the adversarial pass in
//! issue 12, each as a regression test against real nodes over real sockets.

use std::time::Duration;

use murmur_tests::{
    WsClient, expect_error, expect_ok, start_cluster, start_node, wait_for_interest_everywhere,
};
use serde_json::json;

type TestResult = anyhow::Result<()>;

/// The remote crash: a queue-group member on one node that never reads, and fire-and-forget
/// publishes into the topic's owner, made the owner recurse until its stack overflowed
/// (in-process here, so the overflow would abort this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_cannot_crash_the_owner() -> TestResult {
    let nodes = start_cluster(2, |_, s| {
        s.peer_queue = 8;
        s.outbound_queue = 16;
    })
    .await;
    let topic = "jobs.crash";
    let owner_name = nodes[0].state().cluster.owner_of(topic);
    let owner = nodes
        .iter()
        .position(|n| n.state().settings.name == owner_name)
        .expect("the owner is one of the nodes");
    let other = 1 - owner;

    let (mut member, _) = WsClient::connect_json(&nodes[other]).await?;
    member.sub_group("q", "jobs.>", "workers").await?;
    wait_for_interest_everywhere(&nodes, other, 1).await;

    let (mut publisher, _) = WsClient::connect_json(&nodes[owner]).await?;
    // The crash came within a second of this load (peer_queue is 8); 5,000 publishes keep
    // the node busy for a few seconds even on a loaded debug build.
    for i in 0..5_000 {
        publisher
            .send_json(json!({"op": "pub", "topic": topic, "data": i}))
            .await?;
    }
    // Still serving: the publisher's connection answers, and so does the owner.
    publisher.ping("alive").await?;
    let (mut fresh, _) = WsClient::connect_json(&nodes[owner]).await?;
    fresh.ping("still").await?;
    member.abandon();
    Ok(())
}

/// A member that reads but never acknowledges holds at most `max_unacked` deliveries; the
/// rest of the group gets the others (it used to grow its node by gigabytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_acks_holds_at_most_max_unacked() -> TestResult {
    let node = start_node(|s| s.max_unacked = 3).await;
    let (mut lazy, _) = WsClient::connect_json(&node).await?;
    lazy.sub_group("q", "work", "g").await?;
    let (mut busy, _) = WsClient::connect_json(&node).await?;
    busy.sub_group("q", "work", "g").await?;
    // The other member acks each event before the next is published, so it is never at
    // its bound: only the lazy member's bound decides where events go.
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let mut busy_got = 0;
    for i in 0..20 {
        publisher
            .publish("work", json!(i), &format!("p{i}"))
            .await?;
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), busy.recv_json()).await
        {
            let frame = frame?;
            assert_eq!(frame["op"], "event", "{frame}");
            busy.send_json(json!({"op": "ack", "delivery": frame["delivery"]}))
                .await?;
            busy.ping(&format!("acked{i}")).await?;
            busy_got += 1;
        }
    }
    let mut lazy_got = 0;
    while let Ok(Ok(frame)) =
        tokio::time::timeout(Duration::from_millis(500), lazy.recv_json()).await
    {
        assert_eq!(frame["op"], "event", "{frame}");
        lazy_got += 1;
    }
    assert_eq!(lazy_got, 3, "the member that never acks holds max_unacked");
    assert_eq!(busy_got, 17, "the rest of the group gets the others");
    Ok(())
}

/// Ids, refs and group names the node keeps or echoes have a length limit (1 MiB ids times
/// 1,024 subscriptions grew a node by 1.7 GiB); the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_ids_are_refused_and_the_connection_stays() -> TestResult {
    let node = start_node(|s| s.max_id_bytes = 64).await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    let long = "x".repeat(65);
    let reply = client
        .request(json!({"op": "sub", "id": long, "topic": "t"}))
        .await?;
    expect_error(&reply, "invalid_request", None);
    let reply = client
        .request(json!({"op": "sub", "id": "s", "topic": "t", "group": long}))
        .await?;
    expect_error(&reply, "invalid_request", None);
    let reply = client
        .request(json!({"op": "pub", "topic": "t", "data": 1, "ref": long}))
        .await?;
    expect_error(&reply, "invalid_request", None);
    let fits = "y".repeat(64);
    let reply = client
        .request(json!({"op": "sub", "id": fits, "topic": "t"}))
        .await?;
    expect_ok(&reply, &fits)?;
    Ok(())
}

/// `publish_rate` and `publish_burst`: a token bucket per connection; a publish over it is
/// refused with `rate_limited`, and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_the_rate_are_refused_with_rate_limited() -> TestResult {
    let node = start_node(|s| {
        s.publish_rate = 2;
        s.publish_burst = 3;
    })
    .await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    for i in 0..3 {
        client.publish("t", json!(i), &format!("p{i}")).await?;
    }
    let reply = client
        .request(json!({"op": "pub", "topic": "t", "data": 3, "ref": "over"}))
        .await?;
    expect_error(&reply, "rate_limited", Some("over"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.publish("t", json!(4), "later").await?;
    // Other requests are not rate limited.
    client.ping("still").await?;
    Ok(())
}

/// A publish flood into a node that does not own the topic, while the owner does not read:
/// the queue towards the owner used to grow without bound (1.5 GiB in 27 s). Now the node
/// holds at most `publish_buffer_bytes` of publishes in flight; publishing connections wait
/// (their sockets are not read) and, after 5 s without room, are answered `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_towards_a_stalled_owner_waits_then_is_refused_not_buffered() -> TestResult {
    flood_with_a_stalled_peer(Stalled::Owner).await
}

/// The same with the stalled node as the topic's replica and the publisher on its owner:
/// events waiting for the replica's `Stored` keep their share of the owner's publish buffer,
/// so a stalled replica slows publishers instead of growing the owner's backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_into_an_owner_whose_replica_stalled_waits_then_is_refused() -> TestResult {
    flood_with_a_stalled_peer(Stalled::Replica).await
}

#[derive(Clone, Copy, PartialEq)]
enum Stalled {
    Owner,
    Replica,
}

async fn flood_with_a_stalled_peer(stalled: Stalled) -> TestResult {
    use murmur_tests::{TEST_CLUSTER_KEY, gossip_addr, members_in_state, wait_until};
    let replication = if stalled == Stalled::Owner { 1 } else { 2 };
    let entry = start_node(|s| {
        s.name = "entry".into();
        s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
        s.publish_buffer_bytes = 1024 * 1024;
        s.max_frame_bytes = 128 * 1024;
        s.replication = replication;
    })
    .await;
    let seed = gossip_addr(&entry);
    // The owner on a runtime of its own, with one worker this test can block; gossip runs on
    // a thread of its own, so it is not declared down meanwhile.
    let owner_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let owner = owner_runtime
        .spawn(start_node(move |s| {
            s.name = "owner".into();
            s.seeds = vec![seed];
            s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
            s.replication = replication;
        }))
        .await?;
    wait_until("both alive and linked", Duration::from_secs(10), || {
        members_in_state(&entry, "alive").len() == 2
            && murmur_tests::linked_peers(&entry).len() == 1
    })
    .await;
    // "owner" is the stalled node: the topic's owner, or (replication 2) its replica.
    let wanted_owner = if stalled == Stalled::Owner {
        "owner"
    } else {
        "entry"
    };
    let topic = (0..)
        .map(|i| format!("flood.{i}"))
        .find(|t| entry.state().cluster.owner_of(t) == wanted_owner)
        .expect("some topic has the wanted owner");
    let (mut publisher, _) = WsClient::connect_json(&entry).await?;
    publisher.publish(&topic, json!("first"), "first").await?;

    owner_runtime.spawn(async { std::thread::sleep(Duration::from_secs(12)) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let data = "x".repeat(60 * 1024);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent_by_flood = sent.clone();
    let flood = tokio::spawn(async move {
        // 60 MiB offered; the node takes what its buffer and the stream to the owner hold,
        // then stops reading this socket.
        for _ in 0..1000 {
            let frame = json!({"op": "pub", "topic": topic, "data": data});
            if tokio::time::timeout(Duration::from_secs(20), publisher.send_json(frame))
                .await
                .is_err()
            {
                anyhow::bail!("a send waited 20 s: the node stopped reading for good");
            }
            sent_by_flood.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        anyhow::Ok(publisher)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!flood.is_finished(), "the node did not push back");
    // A publish as large as the flood's, from another connection: it waits its turn for
    // room, which does not come while the owner is stalled, and is told.
    let (mut other, _) = WsClient::connect_json(&entry).await?;
    let started = std::time::Instant::now();
    let big = "y".repeat(60 * 1024);
    let reply = other
        .request(json!({"op": "pub", "topic": "flood.other", "data": big, "ref": "p"}))
        .await?;
    expect_error(&reply, "unavailable", Some("p"));
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("publish buffer")),
        "{reply}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited first"
    );
    let offered = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        offered < 300,
        "the node kept reading the flood ({offered} frames of 60 KiB) instead of pushing back"
    );
    // Once the owner reads again, the flood goes on over the same connection; the
    // publishes that found no room in time were each answered, not dropped silently.
    let mut publisher = flood.await??;
    publisher
        .send_json(json!({"op": "ping", "ref": "after"}))
        .await?;
    let mut refused = 0;
    loop {
        let frame = publisher.recv_json().await?;
        match frame["op"].as_str() {
            Some("pong") => break,
            Some("error") => {
                expect_error(&frame, "unavailable", None);
                refused += 1;
            }
            _ => anyhow::bail!("unexpected {frame}"),
        }
    }
    assert!(
        refused >= 1,
        "the flood's publishes that waited 5 s were refused"
    );
    drop(owner);
    owner_runtime.shutdown_background();
    Ok(())
}

/// One `sub … from: earliest` on a wildcard from a client that never reads used to pin the
/// whole replay as one write (45 MiB for 80 bytes asked). The replay now comes in pages; a
/// client that reads gets every event, in order per topic, once, and then the live stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_comes_in_pages_complete_and_in_order() -> TestResult {
    let nodes = start_cluster(2, |_, s| s.history_max_events = 5000).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let topics = ["hist.a", "hist.b", "hist.c"];
    for topic in topics {
        for i in 0..1500 {
            publisher
                .send_json(json!({"op": "pub", "topic": topic, "data": i}))
                .await?;
        }
    }
    publisher.publish("hist.z", json!("last"), "sync").await?;
    let mut expected: std::collections::HashMap<String, u64> =
        topics.iter().map(|t| ((*t).to_owned(), 1500)).collect();
    expected.insert("hist.z".into(), 1);
    // While the first replay is paged, hist.a goes on live: whether an event of it comes in
    // the replay or live, the subscriber gets each once, in order (live events of the topic
    // replayed are held back until its replay is out).
    let (mut live_publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let live = tokio::spawn(async move {
        for i in 0..300 {
            live_publisher
                .send_json(json!({"op": "pub", "topic": "hist.a", "data": format!("live {i}")}))
                .await?;
        }
        live_publisher.ping("done").await?;
        anyhow::Ok(())
    });
    let mut first = true;
    // From the node that holds the history, and from one that asks the other for it.
    for node in &nodes {
        let (mut client, _) = WsClient::connect_json(node).await?;
        let reply = client
            .request(json!({"op": "sub", "id": "h", "topic": "hist.>", "from": "earliest"}))
            .await?;
        expect_ok(&reply, "h")?;
        let mut seen: std::collections::HashMap<String, u64> = Default::default();
        let during = if first { 300 } else { 0 };
        for _ in 0..expected.values().sum::<u64>() + during {
            let frame = client.recv_json().await?;
            assert_eq!(frame["op"], "event", "{frame}");
            let topic = frame["topic"].as_str().unwrap_or_default().to_owned();
            let seq = frame["seq"].as_u64().unwrap_or_default();
            let last = seen.entry(topic.clone()).or_default();
            assert_eq!(seq, *last + 1, "{topic}: in order, once");
            *last = seq;
        }
        if first {
            first = false;
            *expected.entry("hist.a".into()).or_default() += 300;
        }
        assert_eq!(seen, expected);
        // Then live.
        publisher.publish("hist.a", json!("live"), "live").await?;
        *expected.entry("hist.a".into()).or_default() += 1;
        let live = client.recv_json().await?;
        assert_eq!(
            (live["topic"].as_str(), live["seq"].as_u64()),
            (Some("hist.a"), Some(expected["hist.a"]))
        );
        client.close().await;
    }
    live.await??;
    Ok(())
}

/// Large events filled a node's history without bound: 1,000 events of 256 KiB per topic is
/// 256 MiB a topic, on the owner and on each replica. Now a topic keeps at most
/// `history_max_bytes` and the node at most `history_max_total_bytes`; what was trimmed for
/// room is reported to a resumer as a retention gap, never skipped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_history_is_bounded_in_bytes_and_what_was_trimmed_is_a_gap() -> TestResult {
    const EVENT_BYTES: usize = 8 * 1024;
    let node = start_node(|s| {
        s.history_max_bytes = 64 * 1024;
        s.history_max_total_bytes = 1024 * 1024;
    })
    .await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let blob = "x".repeat(EVENT_BYTES);
    let mut epoch = String::new();
    for i in 1..=40 {
        let (ok, _) = publisher
            .publish("big", json!(blob), &format!("p{i}"))
            .await?;
        epoch = ok["epoch"].as_str().unwrap().to_owned();
    }
    let events = node.state().broker.history_size().1;
    assert!(
        (5..=8).contains(&events),
        "64 KiB holds 7 events of 8 KiB: {events}"
    );
    let (mut reader, _) = WsClient::connect_json(&node).await?;
    let ok = reader
        .request(
            json!({"op": "sub", "id": "r", "topic": "big", "from": {"epoch": epoch, "seq": 1}}),
        )
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    let gap = reader.recv_json().await?;
    assert_eq!(gap["op"], "gap", "{gap}");
    assert_eq!(gap["reason"], "retention");
    assert_eq!(gap["from_seq"], 2);
    let first_kept = gap["to_seq"].as_u64().unwrap() + 1;
    for seq in first_kept..=40 {
        let event = reader.recv_json().await?;
        assert_eq!(event["seq"], seq, "{event}");
    }

    // Many topics: the node's total stays under its bound.
    for topic in 0..40 {
        for i in 0..8 {
            publisher
                .publish(
                    &format!("many.{topic}"),
                    json!(blob),
                    &format!("m{topic}.{i}"),
                )
                .await?;
        }
    }
    // Topics that each hold one event in other shards may take the node past the bound
    // until the next sweep (once a second).
    murmur_tests::wait_until(
        "the sweep brings the node under its history bound",
        Duration::from_secs(5),
        || node.state().broker.history_bytes() <= 1024 * 1024,
    )
    .await;
    let held = node.state().broker.history_bytes();
    assert!(held > 512 * 1024, "the bound is used, not emptied: {held}");
    Ok(())
}

/// Publishes that reach an owner from other nodes held no share of the owner's publish
/// buffer: with the topic's replica stalled, every one of them waited at the owner for a
/// `Stored` that did not come, without bound. They now take a share of the owner's buffer
/// too; when it is full the owner reads that peer's publish stream no further (nothing else
/// on the link waits), the publishing node's buffer fills behind it, and the client that
/// published there is told `unavailable` once its publishes waited the publish timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_from_peers_hold_the_owners_buffer_and_wait_then_are_refused() -> TestResult {
    use murmur_tests::{TEST_CLUSTER_KEY, gossip_addr, linked_peers, wait_until};
    const OWNER_BUFFER: usize = 1024 * 1024;
    let key = || Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
    let entry = start_node(|s| {
        s.name = "entry".into();
        s.cluster_key = key();
    })
    .await;
    let seed = gossip_addr(&entry);
    let owner = start_node(|s| {
        s.name = "owner".into();
        s.seeds = vec![seed.clone()];
        s.cluster_key = key();
        s.publish_buffer_bytes = OWNER_BUFFER;
        s.max_frame_bytes = 128 * 1024;
    })
    .await;
    // The replica on a runtime of its own, with one worker this test can block.
    let replica_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let replica = replica_runtime
        .spawn(start_node(move |s| {
            s.name = "replica".into();
            s.seeds = vec![seed];
            s.cluster_key = key();
        }))
        .await?;
    wait_until("three nodes linked", Duration::from_secs(15), || {
        linked_peers(&entry).len() == 2 && linked_peers(&owner).len() == 2
    })
    .await;
    let topic = (0..)
        .map(|i| format!("peer.flood.{i}"))
        .take(10_000)
        .find(|t| {
            entry
                .state()
                .cluster
                .placement(t)
                .starts_with(&["owner".into(), "replica".into()])
        })
        .expect("some topic is owned by `owner` and copied to `replica`");
    let (mut publisher, _) = WsClient::connect_json(&entry).await?;
    publisher.publish(&topic, json!("first"), "first").await?;

    replica_runtime.spawn(async { std::thread::sleep(Duration::from_secs(10)) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let data = "x".repeat(60 * 1024);
    for i in 0..40 {
        publisher
            .send_json(json!({"op": "pub", "topic": topic, "data": data, "ref": format!("p{i}")}))
            .await?;
    }
    let refused = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), publisher.recv_json()).await??;
        if frame["op"] == "error" {
            break frame;
        }
    };
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "refused within the publish timeout, not held without bound: {:?}",
        started.elapsed()
    );
    let held = owner.state().cluster.publish_buffer_in_use();
    assert!(
        held <= OWNER_BUFFER && held > OWNER_BUFFER / 2,
        "the owner holds {held} bytes for events waiting on the stalled replica"
    );
    drop(replica);
    replica_runtime.shutdown_background();
    Ok(())
}
