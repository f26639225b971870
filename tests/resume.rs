//! History and resume on one node: cursors, `earliest`, wildcard resumes with new topics,
//! retention gaps and epoch changes, and no duplicate or hole where replay meets live.

use std::time::Duration;

use murmur::client::ResumeCursor;
use murmur_tests::{WsClient, recv_n, seqs, start_node, wait_until};
use serde_json::json;

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_a_cursor_replays_exactly_what_was_missed_then_goes_live() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let (mut first, _) = WsClient::connect_json(&node).await?;
    first.sub("s", "room.1").await?;
    let mut epoch = String::new();
    for i in 1..=3 {
        let (ok, _) = publisher
            .publish("room.1", json!(i), &format!("p{i}"))
            .await?;
        epoch = ok["epoch"].as_str().unwrap().to_owned();
    }
    let seen = recv_n(&mut first, 3).await?;
    assert_eq!(seqs(&seen), vec![1, 2, 3]);
    first.abandon();
    for i in 4..=6 {
        publisher
            .publish("room.1", json!(i), &format!("p{i}"))
            .await?;
    }
    let (mut again, _) = WsClient::connect_json(&node).await?;
    let ok = again
        .request(
            json!({"op": "sub", "id": "s", "topic": "room.1", "from": {"epoch": epoch, "seq": 3}}),
        )
        .await?;
    assert_eq!(ok["op"], "ok", "ok comes first: {ok}");
    let replayed = recv_n(&mut again, 3).await?;
    assert_eq!(seqs(&replayed), vec![4, 5, 6]);
    assert_eq!(replayed[0]["data"], 4);
    publisher.publish("room.1", json!(7), "p7").await?;
    assert_eq!(
        again.recv_json().await?["seq"],
        7,
        "then live, no duplicate"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_meets_the_live_stream_without_a_duplicate_or_a_hole() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let (first, _) = publisher.publish("busy", json!(0), "first").await?;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    const TOTAL: u64 = 600;
    let publishing = tokio::spawn(async move {
        for i in 2..=TOTAL {
            publisher
                .send_json(json!({"op": "pub", "topic": "busy", "data": i}))
                .await?;
            if i % 50 == 0 {
                publisher.ping(&format!("{i}")).await?;
            }
        }
        publisher.ping("done").await?;
        anyhow::Ok(())
    });
    // Resume while the publisher is busy, from the first event.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (mut resumer, _) = WsClient::connect_json(&node).await?;
    let ok = resumer
        .request(
            json!({"op": "sub", "id": "r", "topic": "busy", "from": {"epoch": epoch, "seq": 1}}),
        )
        .await?;
    assert_eq!(ok["op"], "ok");
    publishing.await??;
    let events = recv_n(&mut resumer, (TOTAL - 1) as usize).await?;
    assert_eq!(seqs(&events), (2..=TOTAL).collect::<Vec<_>>());
    resumer.ping("nothing-more").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_replays_everything_retained() -> TestResult {
    let node = start_node(|s| s.history_max_events = 3).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    for i in 1..=5 {
        publisher.publish("log", json!(i), &format!("p{i}")).await?;
    }
    let (mut reader, _) = WsClient::connect_json(&node).await?;
    let ok = reader
        .request(json!({"op": "sub", "id": "r", "topic": "log", "from": "earliest"}))
        .await?;
    assert_eq!(ok["op"], "ok");
    let events = recv_n(&mut reader, 3).await?;
    assert_eq!(
        seqs(&events),
        vec![3, 4, 5],
        "no gap: earliest claims nothing seen"
    );
    reader.ping("end").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_overflow_yields_a_gap_naming_the_lost_range() -> TestResult {
    let node = start_node(|s| s.history_max_events = 5).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let mut epoch = String::new();
    for i in 1..=20 {
        let (ok, _) = publisher.publish("t", json!(i), &format!("p{i}")).await?;
        epoch = ok["epoch"].as_str().unwrap().to_owned();
    }
    let (mut reader, _) = WsClient::connect_json(&node).await?;
    let ok = reader
        .request(json!({"op": "sub", "id": "r", "topic": "t", "from": {"epoch": epoch, "seq": 3}}))
        .await?;
    assert_eq!(ok["op"], "ok");
    let gap = reader.recv_json().await?;
    assert_eq!(
        gap,
        json!({"op": "gap", "sub": "r", "topic": "t", "epoch": epoch, "from_seq": 4, "to_seq": 15, "reason": "retention"})
    );
    assert_eq!(
        seqs(&recv_n(&mut reader, 5).await?),
        vec![16, 17, 18, 19, 20]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_expired_by_age_still_reports_what_was_missed() -> TestResult {
    let node = start_node(|s| s.history_max_age = Duration::from_millis(100)).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let mut epoch = String::new();
    for i in 1..=3 {
        let (ok, _) = publisher
            .publish("old.x", json!(i), &format!("p{i}"))
            .await?;
        epoch = ok["epoch"].as_str().unwrap().to_owned();
    }
    wait_until("the history has expired", Duration::from_secs(5), || {
        node.state().broker.history_size() == (0, 0)
    })
    .await;
    let (mut reader, _) = WsClient::connect_json(&node).await?;
    reader
        .request(
            json!({"op": "sub", "id": "r", "topic": "old.x", "from": {"epoch": epoch, "seq": 1}}),
        )
        .await?;
    let gap = reader.recv_json().await?;
    assert_eq!(
        (
            gap["op"].as_str(),
            gap["from_seq"].as_u64(),
            gap["to_seq"].as_u64()
        ),
        (Some("gap"), Some(2), Some(3))
    );
    assert_eq!(gap["reason"], "retention");
    // A wildcard resumer away since before those events learns of them too.
    let wildcard =
        json!({"op": "sub", "id": "w", "topic": "old.*", "from": {"topics": {}, "since": 0}});
    reader.request(wildcard).await?;
    let gap = reader.recv_json().await?;
    assert_eq!(
        (
            gap["sub"].as_str(),
            gap["from_seq"].as_u64(),
            gap["to_seq"].as_u64()
        ),
        (Some("w"), Some(1), Some(3))
    );
    // A new event after the expiry does not hide what came before it.
    publisher.publish("old.x", json!(4), "p4").await?;
    for sub in ["r", "w"] {
        let live = reader.recv_json().await?;
        assert_eq!(
            (live["sub"].as_str(), live["seq"].as_u64()),
            (Some(sub), Some(4))
        );
    }
    let late =
        json!({"op": "sub", "id": "late", "topic": "old.*", "from": {"topics": {}, "since": 0}});
    reader.request(late).await?;
    let gap = reader.recv_json().await?;
    assert_eq!(
        (gap["from_seq"].as_u64(), gap["to_seq"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(reader.recv_json().await?["seq"], 4);
    Ok(())
}

/// The resume cursor of `murmur sub` (and of the tests' resuming subscribers) once moved its
/// `since` up to the newest `ts` it had seen. Topics are not ordered among themselves: an
/// event of another topic sequenced a moment earlier (on another owner, over another link)
/// may not have arrived when the connection drops, and the resume then skipped it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_resume_gets_a_new_topics_event_older_than_those_seen() -> TestResult {
    let node = start_node(|_| {}).await;
    let (_, mut cursor) =
        ResumeCursor::from_start("latest", "dev.*", murmur::broker::now_ms()).unwrap();
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let (mut first, _) = WsClient::connect_json(&node).await?;
    first.sub("w", "dev.*").await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    publisher.publish("dev.late", json!("older"), "1").await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    publisher.publish("dev.seen", json!("newer"), "2").await?;
    let got = recv_n(&mut first, 2).await?;
    assert!(got[0]["ts"].as_i64() < got[1]["ts"].as_i64());
    // The connection drops having shown only the newer event: the older one was still on
    // its way, as it may be in a cluster.
    first.abandon();
    assert!(cursor.observe(&got[1]));

    let (mut again, _) = WsClient::connect_json(&node).await?;
    let from = cursor.to_from("dev.*");
    let ok = again
        .request(json!({"op": "sub", "id": "w", "topic": "dev.*", "from": from}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    let replayed = again.recv_json().await?;
    assert_eq!(
        (replayed["topic"].as_str(), replayed["data"].as_str()),
        (Some("dev.late"), Some("older")),
        "resumed from {from}: {replayed}"
    );
    again.ping("no-more").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_resume_includes_topics_first_published_while_away() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    let (mut first, _) = WsClient::connect_json(&node).await?;
    first.sub("w", "sensors.*").await?;
    publisher.publish("sensors.a", json!("a1"), "1").await?;
    publisher.publish("sensors.a", json!("a2"), "2").await?;
    let seen = recv_n(&mut first, 2).await?;
    let epoch = seen[1]["epoch"].as_str().unwrap().to_owned();
    let since = seen[1]["ts"].as_i64().unwrap();
    first.abandon();
    // Away: the known topic moves on, a new topic appears, an unrelated one too.
    tokio::time::sleep(Duration::from_millis(5)).await;
    publisher.publish("sensors.a", json!("a3"), "3").await?;
    publisher.publish("sensors.b", json!("b1"), "4").await?;
    publisher.publish("sensors.b", json!("b2"), "5").await?;
    publisher.publish("other.c", json!("c1"), "6").await?;

    let (mut again, _) = WsClient::connect_json(&node).await?;
    let from = json!({"topics": {"sensors.a": {"epoch": epoch, "seq": 2}}, "since": since});
    let ok = again
        .request(json!({"op": "sub", "id": "w", "topic": "sensors.*", "from": from}))
        .await?;
    assert_eq!(ok["op"], "ok");
    let mut replayed: Vec<(String, String)> = recv_n(&mut again, 3)
        .await?
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().into(),
                e["data"].as_str().unwrap().into(),
            )
        })
        .collect();
    replayed.sort();
    assert_eq!(
        replayed,
        vec![
            ("sensors.a".into(), "a3".into()),
            ("sensors.b".into(), "b1".into()),
            ("sensors.b".into(), "b2".into()),
        ]
    );
    again.ping("nothing-else").await?;

    let single_cursor = again
        .request(json!({"op": "sub", "id": "x", "topic": "sensors.*", "from": {"epoch": epoch, "seq": 1}}))
        .await?;
    assert_eq!(single_cursor["code"], "invalid_request");
    assert_eq!(single_cursor["ref"], "x");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_another_epoch_gets_an_epoch_changed_gap() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    publisher.publish("t", json!(1), "1").await?;
    publisher.publish("t", json!(2), "2").await?;
    let (mut reader, _) = WsClient::connect_json(&node).await?;
    reader
        .request(json!({"op": "sub", "id": "r", "topic": "t", "from": {"epoch": "an-old-epoch", "seq": 40}}))
        .await?;
    let gap = reader.recv_json().await?;
    assert_eq!(gap["op"], "gap");
    assert_eq!(gap["epoch"], "an-old-epoch");
    assert_eq!(gap["from_seq"], 41);
    assert_eq!(gap["reason"], "epoch_changed");
    assert_eq!(
        seqs(&recv_n(&mut reader, 2).await?),
        vec![1, 2],
        "the new epoch from its start"
    );
    Ok(())
}

/// A resume whose replay has nothing after the cursor (the node that had the next events was
/// not reachable from here yet, as right after a restart) must not let the live stream skip
/// them: an event past the cursor sends the client to resume again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_event_past_a_resume_cursor_the_replay_could_not_fill_makes_the_client_resync()
-> TestResult {
    let node = start_node(|_| {}).await;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    for i in 1..=3 {
        publisher
            .publish("held.t", json!(i), &format!("p{i}"))
            .await?;
    }
    let (ok, _) = publisher.publish("held.t", json!(3), "again").await?;
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    assert_eq!(ok["seq"], 4);

    // Resumed right after #4: nothing to replay.
    let (mut subscriber, _) = WsClient::connect_json(&node).await?;
    let ok = subscriber
        .request(json!({"op": "sub", "id": "s", "topic": "held.t",
            "from": {"epoch": epoch, "seq": 4}}))
        .await?;
    assert_eq!(ok["op"], "ok", "{ok}");

    // Another node numbered #5, which this one never saw; then this one numbers #6.
    let broker = &node.state().broker;
    broker.relinquish_all();
    broker.install_topic(
        "held.t",
        Some(murmur::broker::TopicSnapshot {
            epoch: epoch.as_str().into(),
            last_seq: 5,
            events: Vec::new(),
            ids: Vec::new(),
        }),
    );
    let (ok, _) = publisher.publish("held.t", json!(6), "p6").await?;
    assert_eq!(ok["seq"], 6);
    let notice = subscriber.recv_json().await?;
    assert_eq!(
        notice["code"], "resync",
        "not #6 past the missing #5: {notice}"
    );
    Ok(())
}
