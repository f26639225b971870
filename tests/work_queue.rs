//! Queue groups as work queues across a cluster of in-process nodes: an event that no member
//! can take right now waits for one, also while the group has no member at all, and what
//! the group had not acknowledged outlives the node that placed it.

use std::collections::BTreeSet;
use std::time::Duration;

use murmur_tests::{
    WsClient, crash, start_cluster, topic_owned_by, wait_for_interest_everywhere, wait_until,
};
use serde_json::json;

type TestResult = anyhow::Result<()>;

/// Sums one broker counter over `nodes`.
fn total(
    nodes: &[murmur::RunningNode],
    counter: impl Fn(&murmur::broker::BrokerStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    nodes
        .iter()
        .map(|n| counter(&n.state().broker.stats).load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_published_while_the_only_worker_reconnects_reach_it_on_another_node() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    let (mut worker, _) = WsClient::connect_json(&nodes[1]).await?;
    worker.sub_group("w", "jobs.*", "workers").await?;
    wait_for_interest_everywhere(&nodes, 1, 1).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    publisher.publish("jobs.a", json!("first"), "p0").await?;
    let first = worker.recv_json().await?;
    assert_eq!(first["data"], "first");
    worker
        .send_json(json!({"op": "ack", "delivery": first["delivery"]}))
        .await?;

    // The only worker goes away; every node sees the group without members.
    worker.close().await;
    wait_until(
        "every node sees the group without members",
        Duration::from_secs(10),
        || nodes.iter().all(|n| n.state().broker.peer_interests() == 0),
    )
    .await;
    const JOBS: u64 = 30;
    for i in 0..JOBS {
        let topic = ["jobs.a", "jobs.b", "jobs.c"][i as usize % 3];
        let (ok, _) = publisher
            .publish(topic, json!(i), &format!("p{}", i + 1))
            .await?;
        assert!(ok["seq"].as_u64().is_some(), "acknowledged: {ok}");
    }

    // It comes back on another node and gets every job once, as first deliveries.
    let (mut back, _) = WsClient::connect_json(&nodes[2]).await?;
    back.sub_group("w", "jobs.*", "workers").await?;
    let mut got = BTreeSet::new();
    while (got.len() as u64) < JOBS {
        let event = tokio::time::timeout(Duration::from_secs(10), back.recv_json())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of {JOBS} jobs arrived: {got:?}", got.len()))??;
        assert_eq!(event["op"], "event", "{event}");
        assert_eq!(event["redelivered"], false, "nobody had it before: {event}");
        assert!(
            got.insert(event["data"].as_u64().unwrap()),
            "a job arrived twice: {event}"
        );
        back.send_json(json!({"op": "ack", "delivery": event["delivery"]}))
            .await?;
    }
    assert_eq!(got, (0..JOBS).collect());
    // Nothing more is owed: a ping comes straight back.
    back.ping("done").await?;
    assert_eq!(total(&nodes, |s| &s.group_events_waiting), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_while_every_worker_is_busy_instead_of_being_dropped() -> TestResult {
    // Each member holds at most 2 unacknowledged jobs.
    let nodes = start_cluster(3, |_, s| s.max_unacked = 2).await;
    let (mut worker, _) = WsClient::connect_json(&nodes[1]).await?;
    worker.sub_group("w", "jobs.*", "workers").await?;
    wait_for_interest_everywhere(&nodes, 1, 1).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    const JOBS: u64 = 12;
    for i in 0..JOBS {
        let topic = ["jobs.a", "jobs.b"][i as usize % 2];
        publisher.publish(topic, json!(i), &format!("p{i}")).await?;
    }
    // The worker is slow: it acknowledges one job at a time, a while after it came.
    let mut got = BTreeSet::new();
    while (got.len() as u64) < JOBS {
        let event = tokio::time::timeout(Duration::from_secs(10), worker.recv_json())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of {JOBS} jobs arrived: {got:?}", got.len()))??;
        assert_eq!(event["op"], "event", "{event}");
        got.insert(event["data"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        worker
            .send_json(json!({"op": "ack", "delivery": event["delivery"]}))
            .await?;
    }
    assert_eq!(got, (0..JOBS).collect(), "every job, none dropped");
    assert_eq!(total(&nodes, |s| &s.group_deliveries_lost), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_not_acknowledged_when_their_owner_dies_are_placed_again_by_the_next_owner()
-> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    // Jobs on a topic node-2 places; the worker is on node-0, the publisher on node-1.
    let topic = topic_owned_by(&nodes[0], "jobs.", "node-2");
    let (mut worker, _) = WsClient::connect_json(&nodes[0]).await?;
    worker.sub_group("w", "jobs.*", "workers").await?;
    wait_for_interest_everywhere(&nodes, 0, 1).await;
    let (mut publisher, _) = WsClient::connect_json(&nodes[1]).await?;
    const JOBS: u64 = 10;
    for i in 1..=JOBS {
        publisher
            .publish(&topic, json!(i), &format!("p{i}"))
            .await?;
    }
    // The worker finishes the first half; the second half is in its hands when the owner dies.
    for _ in 1..=JOBS {
        let event = worker.recv_json().await?;
        assert_eq!(event["redelivered"], false);
        if event["seq"].as_u64().unwrap() <= JOBS / 2 {
            worker
                .send_json(json!({"op": "ack", "delivery": event["delivery"]}))
                .await?;
        }
    }
    worker.ping("acked").await?;
    // The owner reports the group's progress to the topic's replica several times a second:
    // wait until one holds the report naming exactly the unacknowledged half.
    wait_until(
        "the owner's report of the unacknowledged jobs reached a replica",
        Duration::from_secs(10),
        || {
            nodes.iter().any(|n| {
                n.state()
                    .broker
                    .peer_progress_of("node-2")
                    .iter()
                    .any(|r| r.placed_up_to == JOBS && r.unsettled == [(JOBS / 2 + 1, JOBS)])
            })
        },
    )
    .await;
    let survivors = crash(nodes, &["node-2".to_owned()]).await;

    // The topic's new owner places the unacknowledged half again, marked as redelivered,
    // and nothing of the acknowledged half.
    let mut again = BTreeSet::new();
    while (again.len() as u64) < JOBS / 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), worker.recv_json())
            .await
            .map_err(|_| anyhow::anyhow!("only {again:?} came again"))??;
        assert_eq!(event["op"], "event", "{event}");
        assert_eq!(event["redelivered"], true, "{event}");
        assert!(again.insert(event["seq"].as_u64().unwrap()), "{event}");
        worker
            .send_json(json!({"op": "ack", "delivery": event["delivery"]}))
            .await?;
    }
    assert_eq!(again, (JOBS / 2 + 1..=JOBS).collect());
    // Everything taken over went out before the events above; the next frame is the pong.
    assert_eq!(total(&survivors, |s| &s.group_events_taken_over), JOBS / 2);
    worker.ping("nothing-more").await?;
    Ok(())
}
