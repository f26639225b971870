//! Idempotent publishing: a `pub` sent again with the same `id` within `dedupe_window` gets
//! the first one's `epoch`/`seq` and creates no second event — from another connection,
//! through another node, while the first is still in flight, and after the topic's owner
//! failed over to a replica. After the window, the same id is a new event.

use std::time::Duration;

use bytes::Bytes;
use murmur_proto::client::v1 as pb;
use murmur_tests::{
    FRAME_TIMEOUT, WsClient, crash, murmur_binary, recv_n, seqs, start_cluster, start_node,
    topic_owned_by, wait_for_interest_everywhere, wait_until, ws_url,
};
use serde_json::{Value, json};

type TestResult = anyhow::Result<()>;

/// Publishes with `id` and returns (epoch, seq) from the `ok`, skipping events.
async fn publish_with_id(
    client: &mut WsClient,
    topic: &str,
    data: Value,
    id: &str,
    reference: &str,
) -> anyhow::Result<(String, u64)> {
    client
        .send_json(json!({"op": "pub", "topic": topic, "data": data, "ref": reference, "id": id}))
        .await?;
    loop {
        let frame = client.recv_json().await?;
        match frame["op"].as_str() {
            Some("event") => {}
            Some("ok") if frame["ref"] == reference => return Ok(position_of(&frame)),
            _ => anyhow::bail!("unexpected answer to pub {reference}: {frame}"),
        }
    }
}

fn position_of(frame: &Value) -> (String, u64) {
    (
        frame["epoch"].as_str().unwrap_or("").to_owned(),
        frame["seq"].as_u64().unwrap_or(0),
    )
}

/// The events a subscriber gets before the sentinel topic's event, as (data, seq).
async fn events_before_sentinel(
    subscriber: &mut WsClient,
    sentinel: &str,
) -> anyhow::Result<Vec<(Value, u64)>> {
    Ok(subscriber
        .events_until(sentinel)
        .await?
        .into_iter()
        .map(|e| (e["data"].clone(), e["seq"].as_u64().unwrap_or(0)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_sent_again_gets_the_original_position_and_subscribers_see_one_event()
-> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    // Owned by node-2, published through node-0 and node-1, read on node-1.
    let topic = topic_owned_by(&nodes[0], "orders.", "node-2");
    let (mut subscriber, _) = WsClient::connect_json(&nodes[1]).await?;
    subscriber.sub("s", "orders.>").await?;
    wait_for_interest_everywhere(&nodes, 1, 1).await;

    let (mut first, _) = WsClient::connect_json(&nodes[0]).await?;
    let original = publish_with_id(&mut first, &topic, json!("a"), "order-17", "p1").await?;
    // The client lost its connection before the `ok` (say) and sends it again, on a new one.
    first.abandon();
    let (mut again, _) = WsClient::connect_json(&nodes[0]).await?;
    let retried = publish_with_id(&mut again, &topic, json!("a"), "order-17", "p1").await?;
    assert_eq!(retried, original, "the same position, not a second event");
    // Through another node, too, and in protobuf.
    let (mut elsewhere, _) = WsClient::connect_json(&nodes[1]).await?;
    let through_another =
        publish_with_id(&mut elsewhere, &topic, json!("a"), "order-17", "p1").await?;
    assert_eq!(through_another, original);
    let (mut proto, _) = WsClient::connect_protobuf(&nodes[2]).await?;
    proto
        .send_proto(pb::client_frame::Op::Pub(pb::Publish {
            topic: topic.clone(),
            data: Bytes::from_static(b"\"a\""),
            encoding: pb::Encoding::Json as i32,
            r#ref: Some("b1".into()),
            id: Some("order-17".into()),
        }))
        .await?;
    match proto.recv_proto().await?.op {
        Some(pb::server_frame::Op::Ok(ok)) => {
            assert_eq!(
                (ok.epoch, ok.seq),
                (Some(original.0.clone()), Some(original.1))
            );
        }
        other => anyhow::bail!("expected ok, got {other:?}"),
    }

    // Another id is another event; the same id on another topic is another publish.
    let next = publish_with_id(&mut again, &topic, json!("b"), "order-18", "p2").await?;
    assert_eq!(next, (original.0.clone(), original.1 + 1));
    let other_topic = topic_owned_by(&nodes[0], "orders.x", "node-1");
    let (_, other_seq) =
        publish_with_id(&mut again, &other_topic, json!("c"), "order-17", "p3").await?;
    assert_eq!(other_seq, 1);

    again.publish("orders.zz-end", json!("end"), "end").await?;
    let seen = events_before_sentinel(&mut subscriber, "orders.zz-end").await?;
    assert_eq!(seen.len(), 3, "one event per id and topic: {seen:?}");
    assert_eq!(
        seen.iter().filter(|(data, _)| *data == "a").count(),
        1,
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_window_the_same_id_is_a_new_event() -> TestResult {
    let node = start_node(|s| s.dedupe_window = Duration::from_secs(1)).await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    let first = publish_with_id(&mut client, "t", json!(1), "k", "p1").await?;
    let within = publish_with_id(&mut client, "t", json!(1), "k", "p2").await?;
    assert_eq!(within, first);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let after = publish_with_id(&mut client, "t", json!(1), "k", "p3").await?;
    assert_eq!(after, (first.0.clone(), first.1 + 1), "a new event");
    // The ids are forgotten by the sweep, not only ignored.
    wait_until("the expired id is forgotten", FRAME_TIMEOUT, || {
        node.state().broker.dedupe_size().0 == 1
    })
    .await;

    // A window of 0 turns it off: every publish is an event.
    let off = start_node(|s| s.dedupe_window = Duration::ZERO).await;
    let (mut client, _) = WsClient::connect_json(&off).await?;
    let one = publish_with_id(&mut client, "t", json!(1), "k", "p1").await?;
    let two = publish_with_id(&mut client, "t", json!(1), "k", "p2").await?;
    assert_eq!(two.1, one.1 + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_owner_failed_over_gets_the_original_position() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    let topic = topic_owned_by(&nodes[0], "pay.", "node-2");
    let (mut publisher, _) = WsClient::connect_json(&nodes[0]).await?;
    let mut positions = Vec::new();
    for i in 1..=5 {
        positions.push(
            publish_with_id(&mut publisher, &topic, json!(i), &format!("pay-{i}"), "p").await?,
        );
    }
    let nodes = crash(nodes, &["node-2".to_owned()]).await;
    // The client never saw the `ok` of pay-3 (say) and sends it again: the replica that
    // took the topic over remembers it.
    for (i, original) in positions.iter().enumerate() {
        let id = format!("pay-{}", i + 1);
        let (mut client, _) = WsClient::connect_json(&nodes[i % 2]).await?;
        let retried = publish_with_id(&mut client, &topic, json!(i + 1), &id, "again").await?;
        assert_eq!(&retried, original, "{id} after the failover");
    }
    let new = publish_with_id(&mut publisher, &topic, json!(6), "pay-6", "p6").await?;
    assert_eq!(new, (positions[0].0.clone(), 6), "the topic goes on");

    let (mut reader, _) = WsClient::connect_json(&nodes[1]).await?;
    let ok = reader
        .request(json!({"op": "sub", "id": "r", "topic": topic, "from": "earliest"}))
        .await?;
    assert_eq!(ok["op"], "ok");
    let replayed = recv_n(&mut reader, 6).await?;
    assert_eq!(seqs(&replayed), (1..=6).collect::<Vec<_>>());
    reader.ping("nothing-more").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_publishes_make_one_event() -> TestResult {
    let nodes = start_cluster(3, |_, _| {}).await;
    let topic = topic_owned_by(&nodes[0], "jobs.", "node-2");
    let (mut subscriber, _) = WsClient::connect_json(&nodes[0]).await?;
    subscriber.sub("s", "jobs.>").await?;
    wait_for_interest_everywhere(&nodes, 0, 1).await;
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(WsClient::connect_json(node).await?.0);
    }
    const IDS: usize = 20;
    // Each id is sent by all three clients at once, through all three nodes: the copies
    // reach the owner while the first is still waiting for its replica.
    for client in &mut clients {
        for n in 0..IDS {
            client
                .send_json(json!({"op": "pub", "topic": topic, "data": n, "ref": format!("r{n}"), "id": format!("job-{n}")}))
                .await?;
        }
    }
    let mut answers: Vec<Vec<(String, u64)>> = vec![Vec::new(); IDS];
    for client in &mut clients {
        let mut got = 0;
        while got < IDS {
            let frame = client.recv_json().await?;
            if frame["op"] == "ok" {
                let n: usize = frame["ref"].as_str().unwrap()[1..].parse()?;
                answers[n].push(position_of(&frame));
                got += 1;
            } else {
                anyhow::ensure!(frame["op"] == "event", "unexpected {frame}");
            }
        }
    }
    for (n, positions) in answers.iter().enumerate() {
        assert!(
            positions.iter().all(|p| *p == positions[0]),
            "job-{n} acknowledged at several positions: {positions:?}"
        );
    }
    let mut seqs_acked: Vec<u64> = answers.iter().map(|p| p[0].1).collect();
    seqs_acked.sort_unstable();
    assert_eq!(seqs_acked, (1..=IDS as u64).collect::<Vec<_>>());
    clients[0]
        .publish("jobs.zz-end", json!("end"), "end")
        .await?;
    let seen = events_before_sentinel(&mut subscriber, "jobs.zz-end").await?;
    assert_eq!(seen.len(), IDS, "one event per id: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn murmur_pub_with_an_id_publishes_once() -> TestResult {
    let node = start_node(|_| {}).await;
    let url = ws_url(&node);
    let run = |id: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(murmur_binary())
                .args(["pub", "--url", &url, "--id", id, "cli.t", "{\"x\":1}"])
                .output()?;
            anyhow::ensure!(out.status.success(), "murmur pub failed: {out:?}");
            Ok::<_, anyhow::Error>(String::from_utf8(out.stderr)?)
        })
    };
    let first = tokio::time::timeout(FRAME_TIMEOUT, run("cli-1")).await???;
    let again = tokio::time::timeout(FRAME_TIMEOUT, run("cli-1")).await???;
    assert!(first.contains("seq 1"), "{first}");
    assert_eq!(again, first, "the same epoch and seq");
    let other = tokio::time::timeout(FRAME_TIMEOUT, run("cli-2")).await???;
    assert!(other.contains("seq 2"), "{other}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_overlong_id_is_refused() -> TestResult {
    let node = start_node(|s| s.max_id_bytes = 16).await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    let empty = client
        .request(json!({"op": "pub", "topic": "t", "data": 1, "ref": "p1", "id": ""}))
        .await?;
    murmur_tests::expect_error(&empty, "invalid_request", Some("p1"));
    let long = client
        .request(json!({"op": "pub", "topic": "t", "data": 1, "ref": "p2", "id": "x".repeat(17)}))
        .await?;
    // As for any name over `max_id_bytes`, without a `ref` (it may be the long one).
    murmur_tests::expect_error(&long, "invalid_request", None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_and_websocket_share_the_ids() -> TestResult {
    let node = start_node(|_| {}).await;
    let api =
        murmur::api_client::ApiClient::new(&format!("http://{}", node.local_addr()), None, None)?;
    let one = api
        .post_json(
            "/v1/publish",
            &json!({"topic": "h.t", "data": 1, "id": "h1"}),
        )
        .await?;
    assert_eq!((one.status, &one.body["seq"]), (200, &json!(1)), "{one:?}");
    // A batch that holds the same id twice, and one sent before: one new event.
    let batch = api
        .post_json(
            "/v1/publish",
            &json!({"events": [
                {"topic": "h.t", "data": 1, "id": "h1"},
                {"topic": "h.t", "data": 2, "id": "h2"},
                {"topic": "h.t", "data": 2, "id": "h2"},
            ]}),
        )
        .await?;
    let seqs: Vec<&Value> = batch.body["results"]
        .as_array()
        .map(|r| r.iter().map(|e| &e["seq"]).collect())
        .unwrap_or_default();
    assert_eq!(seqs, [&json!(1), &json!(2), &json!(2)], "{batch:?}");
    let (mut client, _) = WsClient::connect_json(&node).await?;
    let over_ws = publish_with_id(&mut client, "h.t", json!(2), "h2", "p").await?;
    assert_eq!(over_ws.1, 2);
    Ok(())
}
