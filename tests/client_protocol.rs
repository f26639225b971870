//! The client protocol v1 over real WebSockets against one node.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use murmur_proto::client::v1 as pb;
use murmur_tests::{Received, WsClient, expect_error, expect_ok, start_node, ws_url};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_on_connect_and_on_hello() -> TestResult {
    let node = start_node(|s| s.max_subscriptions = 7).await;
    let (mut client, welcome) = WsClient::connect_json(&node).await?;
    assert_eq!(welcome["node"], "test-node");
    assert!(welcome["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(welcome["limits"]["max_subscriptions"], 7);
    assert_eq!(welcome["limits"]["max_frame_bytes"], 1024 * 1024);
    let again = client
        .request(json!({"op": "hello", "client": "test", "token": "t"}))
        .await?;
    assert_eq!(again["op"], "welcome");
    assert_eq!(again["session"], welcome["session"], "same session");

    let (_, proto_welcome) = WsClient::connect_protobuf(&node).await?;
    assert_eq!(proto_welcome.node, "test-node");
    assert_eq!(proto_welcome.limits.unwrap().max_subscriptions, 7);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer() -> TestResult {
    let node = start_node(|_| {}).await;
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = http_get(node.local_addr(), path).await?;
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        assert!(response.trim_end().ends_with(body), "{path}: {response}");
    }
    let missing = http_get(node.local_addr(), "/nope").await?;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    Ok(())
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await??;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_unsubscribe() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&node).await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    subscriber.sub("s1", "chat.lobby").await?;
    subscriber.sub("end", "sentinel").await?;

    let (ok, _) = publisher
        .publish("chat.lobby", json!({"text": "hi"}), "p1")
        .await?;
    assert_eq!(ok["seq"], 1);
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    let event = subscriber.recv_json().await?;
    assert_eq!(event["op"], "event");
    assert_eq!(event["sub"], "s1");
    assert_eq!(event["topic"], "chat.lobby");
    assert_eq!(event["epoch"], epoch.as_str());
    assert_eq!(event["seq"], 1);
    assert_eq!(event["data"], json!({"text": "hi"}));
    assert!(
        event["ts"]
            .as_i64()
            .is_some_and(|ts| ts > 1_700_000_000_000)
    );
    assert!(
        event.get("delivery").is_none(),
        "plain subscriptions carry no delivery"
    );

    // A publish without a ref gets no answer but is delivered.
    publisher
        .send_json(json!({"op": "pub", "topic": "chat.lobby", "data": [1, 2]}))
        .await?;
    let event = subscriber.recv_json().await?;
    assert_eq!(
        (event["seq"].clone(), event["data"].clone()),
        (json!(2), json!([1, 2]))
    );

    let reply = subscriber
        .request(json!({"op": "unsub", "id": "s1"}))
        .await?;
    expect_ok(&reply, "s1")?;
    publisher
        .publish("chat.lobby", json!("after"), "p3")
        .await?;
    publisher.publish("sentinel", json!(null), "p4").await?;
    let before_sentinel = subscriber.events_until("sentinel").await?;
    assert!(
        before_sentinel.is_empty(),
        "delivered after unsub: {before_sentinel:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_sees_ok_before_its_own_event() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    client.sub("mine", "echo").await?;
    let (ok, events_before_ok) = client.publish("echo", json!(1), "p").await?;
    assert!(events_before_ok.is_empty());
    assert_eq!(ok["seq"], 1);
    let event = client.recv_json().await?;
    assert_eq!(event["sub"], "mine");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_by_token() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut subscriber, _) = WsClient::connect_json(&node).await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    subscriber.sub("one", "orders.*.created").await?;
    subscriber.sub("rest", "orders.>").await?;
    subscriber.sub("all", ">").await?;
    subscriber.sub("end", "zz").await?;
    let topics = [
        "orders.eu.created",
        "orders.eu",
        "orders.eu.created.late",
        "orders",
        "billing.eu.created",
    ];
    for (i, topic) in topics.iter().enumerate() {
        publisher.publish(topic, json!(i), &format!("p{i}")).await?;
    }
    publisher.publish("zz", json!(null), "end").await?;
    let events = subscriber.events_until("zz").await?;
    let got: HashSet<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["sub"].as_str().unwrap().into(),
                e["topic"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: HashSet<(String, String)> = [
        ("one", "orders.eu.created"),
        ("rest", "orders.eu.created"),
        ("rest", "orders.eu"),
        ("rest", "orders.eu.created.late"),
        ("all", "orders.eu.created"),
        ("all", "orders.eu"),
        ("all", "orders.eu.created.late"),
        ("all", "orders"),
        ("all", "billing.eu.created"),
    ]
    .iter()
    .map(|(s, t)| ((*s).into(), (*t).into()))
    .collect();
    assert_eq!(got, expected);
    assert_eq!(
        events.len(),
        expected.len(),
        "each subscription once per event"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_members_share_events_and_plain_subscribers_get_all() -> TestResult {
    let node = start_node(|_| {}).await;
    let mut members = Vec::new();
    for i in 0..3 {
        let (mut member, _) = WsClient::connect_json(&node).await?;
        member
            .sub_group(&format!("m{i}"), "jobs.*", "workers")
            .await?;
        member.sub("end", "end").await?;
        members.push(member);
    }
    let (mut watcher, _) = WsClient::connect_json(&node).await?;
    watcher.sub("w", "jobs.*").await?;
    watcher.sub("end", "end").await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    for i in 0..30 {
        publisher
            .publish("jobs.build", json!(i), &format!("p{i}"))
            .await?;
    }
    publisher.publish("end", json!(null), "end").await?;

    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, member) in members.iter_mut().enumerate() {
        let events = member.events_until("end").await?;
        assert_eq!(events.len(), 10, "round-robin gives member {i} a third");
        for event in &events {
            assert_eq!(event["redelivered"], false);
            let delivery = event["delivery"]
                .as_str()
                .expect("queue deliveries carry an id");
            *seen.entry(event["seq"].as_u64().unwrap()).or_default() += 1;
            member
                .send_json(json!({"op": "ack", "delivery": delivery}))
                .await?;
        }
        member.ping("after-acks").await?;
    }
    assert_eq!(seen.len(), 30);
    assert!(
        seen.values().all(|&n| n == 1),
        "each event to exactly one member"
    );
    let all = watcher.events_until("end").await?;
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=30).collect::<Vec<_>>(),
        "plain subscriber gets all, in order"
    );

    let unknown = members[0]
        .request(json!({"op": "ack", "delivery": "999999"}))
        .await?;
    expect_error(&unknown, "unknown_delivery", Some("999999"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_queue_delivery_goes_to_another_member_when_its_member_leaves() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut first, _) = WsClient::connect_json(&node).await?;
    first.sub_group("a", "work", "g").await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    publisher.publish("work", json!("job-1"), "p1").await?;
    let got = first.recv_json().await?;
    assert_eq!(got["data"], "job-1");
    let (mut second, _) = WsClient::connect_json(&node).await?;
    second.sub_group("b", "work", "g").await?;
    first.abandon();
    let redelivered = second.recv_json().await?;
    assert_eq!(redelivered["data"], "job-1");
    assert_eq!(redelivered["seq"], got["seq"]);
    assert_eq!(redelivered["redelivered"], true);
    assert_ne!(
        redelivered["delivery"], got["delivery"],
        "a new delivery id"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_queue_delivery_is_redelivered_after_the_ack_timeout() -> TestResult {
    let node = start_node(|s| s.ack_timeout = Duration::from_millis(300)).await;
    let (mut lazy, _) = WsClient::connect_json(&node).await?;
    lazy.sub_group("a", "work", "g").await?;
    let (mut diligent, _) = WsClient::connect_json(&node).await?;
    diligent.sub_group("b", "work", "g").await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    publisher.publish("work", json!("x"), "p1").await?;
    publisher.publish("work", json!("y"), "p2").await?;
    // Round-robin gives one event to each; only `diligent` acks.
    let to_lazy = lazy.recv_json().await?;
    let to_diligent = diligent.recv_json().await?;
    diligent
        .send_json(json!({"op": "ack", "delivery": to_diligent["delivery"]}))
        .await?;
    let redelivered = diligent.recv_json().await?;
    assert_eq!(redelivered["seq"], to_lazy["seq"]);
    assert_eq!(redelivered["redelivered"], true);
    // The late ack of the original delivery is refused: it was handed on.
    let late = lazy
        .request(json!({"op": "ack", "delivery": to_lazy["delivery"]}))
        .await?;
    expect_error(&late, "unknown_delivery", to_lazy["delivery"].as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_protobuf_clients_interoperate() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut proto, _) = WsClient::connect_protobuf(&node).await?;
    let (mut json_client, _) = WsClient::connect_json(&node).await?;
    proto
        .send_proto(pb::client_frame::Op::Sub(pb::Subscribe {
            id: "ps".into(),
            topic: "mix.*".into(),
            ..Default::default()
        }))
        .await?;
    match proto.recv_proto().await?.op {
        Some(pb::server_frame::Op::Ok(ok)) => assert_eq!(ok.r#ref.as_deref(), Some("ps")),
        other => panic!("expected ok, got {other:?}"),
    }
    json_client.sub("js", "mix.*").await?;

    // JSON publishes; the protobuf subscriber gets the JSON text as data.
    json_client
        .publish("mix.a", json!({"k": "v"}), "j1")
        .await?;
    let from_json = json_client.recv_json().await?;
    assert_eq!(from_json["data"], json!({"k": "v"}));
    let Some(pb::server_frame::Op::Event(event)) = proto.recv_proto().await?.op else {
        panic!("expected an event");
    };
    assert_eq!(event.sub, "ps");
    assert_eq!(event.topic, "mix.a");
    assert_eq!(event.encoding, pb::Encoding::Json as i32);
    assert_eq!(
        serde_json::from_slice::<Value>(&event.data)?,
        json!({"k": "v"})
    );

    // Protobuf publishes binary: JSON subscribers get base64.
    proto
        .send_proto(pb::client_frame::Op::Pub(pb::Publish {
            topic: "mix.b".into(),
            data: Bytes::from_static(&[0, 1, 2, 250]),
            encoding: pb::Encoding::Binary as i32,
            r#ref: Some("b1".into()),
            id: None,
        }))
        .await?;
    match proto.recv_proto().await?.op {
        Some(pb::server_frame::Op::Ok(ok)) => {
            assert_eq!(ok.r#ref.as_deref(), Some("b1"));
            assert_eq!(ok.seq, Some(1));
            assert!(ok.epoch.is_some());
        }
        other => panic!("expected ok, got {other:?}"),
    }
    let binary = json_client.recv_json().await?;
    assert_eq!(binary["data"], "AAEC+g==");
    assert_eq!(binary["encoding"], "base64");
    let Some(pb::server_frame::Op::Event(own)) = proto.recv_proto().await?.op else {
        panic!("expected the protobuf client's own event");
    };
    assert_eq!(&own.data[..], &[0, 1, 2, 250]);

    // JSON data must be UTF-8 text: a string of invalid UTF-8 is refused (found by fuzzing:
    // it was accepted, and JSON subscribers got `"data":null`).
    proto
        .send_proto(pb::client_frame::Op::Pub(pb::Publish {
            topic: "mix.u".into(),
            data: Bytes::from_static(b"\"chat \xe0\x88 hi\""),
            encoding: pb::Encoding::Json as i32,
            r#ref: Some("u1".into()),
            id: None,
        }))
        .await?;
    match proto.recv_proto().await?.op {
        Some(pb::server_frame::Op::Error(error)) => {
            assert_eq!(error.code, "invalid_request");
            assert_eq!(error.r#ref.as_deref(), Some("u1"));
        }
        other => panic!("expected an error, got {other:?}"),
    }

    // Protobuf publishes JSON: JSON subscribers get it inline (and nothing before it).
    proto
        .send_proto(pb::client_frame::Op::Pub(pb::Publish {
            topic: "mix.c".into(),
            data: Bytes::from_static(br#"{"from":"proto"}"#),
            encoding: pb::Encoding::Json as i32,
            r#ref: None,
            id: None,
        }))
        .await?;
    let inline = json_client.recv_json().await?;
    assert_eq!(inline["data"], json!({"from": "proto"}));
    assert!(inline.get("encoding").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_frames_and_the_connection_stays_usable() -> TestResult {
    let node = start_node(|s| {
        s.max_frame_bytes = 4096;
        s.max_subscriptions = 2;
        s.max_topic_bytes = 32;
    })
    .await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    let (mut bystander, _) = WsClient::connect_json(&node).await?;
    bystander.sub("b", "ok.topic").await?;

    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("{not json", "invalid_json", None),
        ("[1]", "invalid_request", None),
        (r#"{"id":"x"}"#, "invalid_request", Some("x")),
        (r#"{"op":"dance","ref":"r1"}"#, "unknown_op", Some("r1")),
        (r#"{"op":"sub","id":"s1"}"#, "invalid_request", Some("s1")),
        (r#"{"op":"sub","topic":"a"}"#, "invalid_request", None),
        (
            r#"{"op":"sub","id":"s2","topic":7}"#,
            "invalid_request",
            Some("s2"),
        ),
        (
            r#"{"op":"sub","id":"s3","topic":"a..b"}"#,
            "invalid_topic",
            Some("s3"),
        ),
        (
            r#"{"op":"sub","id":"s4","topic":"a.>.b"}"#,
            "invalid_topic",
            Some("s4"),
        ),
        (
            r#"{"op":"sub","id":"s5","topic":"a.b*"}"#,
            "invalid_topic",
            Some("s5"),
        ),
        (
            r#"{"op":"sub","id":"s6","topic":"aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbb"}"#,
            "invalid_topic",
            Some("s6"),
        ),
        (
            r#"{"op":"sub","id":"s7","topic":"a","group":""}"#,
            "invalid_request",
            Some("s7"),
        ),
        (
            r#"{"op":"sub","id":"s8","topic":"a","from":{"epoch":"e"}}"#,
            "invalid_request",
            Some("s8"),
        ),
        (
            r#"{"op":"pub","topic":"a.*","data":1,"ref":"p1"}"#,
            "invalid_topic",
            Some("p1"),
        ),
        (
            r#"{"op":"pub","topic":"a","ref":"p2"}"#,
            "invalid_request",
            Some("p2"),
        ),
        (
            r#"{"op":"pub","data":1,"ref":"p3"}"#,
            "invalid_request",
            Some("p3"),
        ),
        (
            r#"{"op":"unsub","id":"never"}"#,
            "unknown_subscription",
            Some("never"),
        ),
        (r#"{"op":"ack"}"#, "invalid_request", None),
        (
            r#"{"op":"sub","id":"s9","topic":"a","group":"g","from":"earliest"}"#,
            "invalid_request",
            Some("s9"),
        ),
        (
            r#"{"op":"sub","id":"s10","topic":"a","from":{"epoch":"","seq":0}}"#,
            "invalid_request",
            Some("s10"),
        ),
        (
            r#"{"op":"pub","topic":"","data":1,"ref":"p4"}"#,
            "invalid_topic",
            Some("p4"),
        ),
    ];
    for (frame, code, reference) in cases {
        let reply = client.request_text(frame).await?;
        expect_error(&reply, code, reference);
    }

    // Frames over the limit are refused; the connection goes on.
    let big = format!(
        r#"{{"op":"pub","topic":"a","data":"{}","ref":"big"}}"#,
        "x".repeat(5000)
    );
    let reply = client.request_text(&big).await?;
    expect_error(&reply, "frame_too_large", None);

    // Binary frames that are not a ClientFrame.
    client.send_binary(vec![0xff, 0xff, 0xff]).await?;
    expect_error(&client.recv_json().await?, "invalid_protobuf", None);
    client.send_binary(Vec::<u8>::new()).await?;
    expect_error(&client.recv_json().await?, "unknown_op", None);

    // Subscription limits and duplicate ids.
    client.sub("one", "a").await?;
    let duplicate = client
        .request(json!({"op": "sub", "id": "one", "topic": "b"}))
        .await?;
    expect_error(&duplicate, "duplicate_subscription", Some("one"));
    client.sub("two", "b").await?;
    let third = client
        .request(json!({"op": "sub", "id": "three", "topic": "c"}))
        .await?;
    expect_error(&third, "too_many_subscriptions", Some("three"));
    // Freeing a slot makes room again.
    expect_ok(
        &client.request(json!({"op": "unsub", "id": "two"})).await?,
        "two",
    )?;
    client.sub("three", "c").await?;

    client.ping("still-alive").await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;
    publisher.publish("ok.topic", json!("fine"), "p").await?;
    assert_eq!(bystander.recv_json().await?["data"], "fine");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_far_over_the_limit_ends_only_that_connection() -> TestResult {
    let node = start_node(|s| s.max_frame_bytes = 4096).await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    let (mut bystander, _) = WsClient::connect_json(&node).await?;
    let huge = format!(
        r#"{{"op":"pub","topic":"a","data":"{}"}}"#,
        "x".repeat(200_000)
    );
    client.send_text(&huge).await?;
    let mut saw_error = false;
    let close = loop {
        match client.recv().await {
            Ok(Received::Frame(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str())?;
                expect_error(&frame, "frame_too_large", None);
                saw_error = true;
            }
            Ok(Received::Closed(close)) => break close,
            Ok(other) => panic!("unexpected {other:?}"),
            // The node may reset before the client reads its close frame.
            Err(_) => break None,
        }
    };
    eprintln!("oversized frame: error frame {saw_error}, close {close:?}");
    if let Some(close) = close {
        assert_eq!(u16::from(close.code), 1009);
        assert!(saw_error, "the close is preceded by an error frame");
    }
    bystander.ping("unaffected").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_disconnected_and_does_not_slow_a_healthy_one() -> TestResult {
    let node = start_node(|s| {
        s.outbound_queue = 32;
        // All 40 MiB stay in history, for the resume below (the default keeps 16 MiB).
        s.history_max_bytes = 64 * 1024 * 1024;
    })
    .await;
    let (mut stalled, _) = WsClient::connect_json(&node).await?;
    stalled.sub("s", "firehose").await?;
    let (mut healthy, _) = WsClient::connect_json(&node).await?;
    healthy.sub("h", "firehose").await?;
    let (mut publisher, _) = WsClient::connect_json(&node).await?;

    // 40 MiB: more than the kernel's socket buffers can hide from the node.
    const EVENTS: u64 = 640;
    let payload = json!("x".repeat(64 * 1024));
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < EVENTS as usize {
            let event = healthy.recv_json().await?;
            seqs.push(event["seq"].as_u64().unwrap_or(0));
        }
        anyhow::Ok(seqs)
    });
    for i in 0..EVENTS {
        publisher
            .send_json(json!({"op": "pub", "topic": "firehose", "data": payload}))
            .await?;
        if i % 64 == 0 {
            publisher.ping(&format!("sync-{i}")).await?;
        }
    }
    let seqs = reader.await??;
    assert_eq!(
        seqs,
        (1..=EVENTS).collect::<Vec<_>>(),
        "healthy reader got everything, in order"
    );

    // The stalled client now reads what reached it: fewer events than published, then the
    // end of the connection, announced as slow_consumer when the goodbye got through.
    let mut events = 0;
    let mut last: Option<(String, u64)> = None;
    let mut error_code = None;
    let close = loop {
        match stalled.recv().await {
            Ok(Received::Frame(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str())?;
                match frame["op"].as_str() {
                    Some("event") => {
                        events += 1;
                        let epoch = frame["epoch"].as_str().unwrap().to_owned();
                        last = Some((epoch, frame["seq"].as_u64().unwrap()));
                    }
                    Some("error") => error_code = Some(frame["code"].clone()),
                    _ => panic!("unexpected frame {frame}"),
                }
            }
            Ok(Received::Closed(close)) => break close,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break None,
        }
    };
    eprintln!("stalled reader: {events} events, error {error_code:?}, close {close:?}");
    assert!(
        events < EVENTS,
        "the stalled reader was cut off ({events} events)"
    );
    if let Some(code) = error_code {
        assert_eq!(code, "slow_consumer");
    }
    if let Some(close) = close {
        assert_eq!(u16::from(close.code), 4001);
    }
    // Like anyone else, the slow consumer resumes from its cursor and gets every event it
    // was not sent, in order.
    let (epoch, seen) = last.expect("it got some events before falling behind");
    let (mut again, _) = WsClient::connect_json(&node).await?;
    let ok = again
        .request(json!({"op": "sub", "id": "s", "topic": "firehose", "from": {"epoch": epoch, "seq": seen}}))
        .await?;
    assert_eq!(ok["op"], "ok");
    for expected in seen + 1..=EVENTS {
        assert_eq!(again.recv_json().await?["seq"], expected);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_get_every_event_in_topic_order() -> TestResult {
    const SUBSCRIBERS: usize = 100;
    const PUBLISHERS: usize = 10;
    const PER_PUBLISHER: u64 = 20;
    let node = start_node(|_| {}).await;
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (mut client, _) = WsClient::connect_json(&node).await?;
        client.sub(&format!("s{i}"), "load.>").await?;
        subscribers.push(client);
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (mut client, _) = WsClient::connect_json(&node).await?;
        publishers.push(tokio::spawn(async move {
            for n in 0..PER_PUBLISHER {
                client
                    .publish(
                        &format!("load.t{}", p % 3),
                        json!({"p": p, "n": n}),
                        &format!("{n}"),
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    let total = PUBLISHERS * PER_PUBLISHER as usize;
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut last: HashMap<String, u64> = HashMap::new();
                let mut from_publisher: HashMap<u64, u64> = HashMap::new();
                for _ in 0..total {
                    let event = client.recv_json().await?;
                    let topic = event["topic"].as_str().unwrap().to_owned();
                    let seq = event["seq"].as_u64().unwrap();
                    let previous = last.insert(topic.clone(), seq).unwrap_or(0);
                    anyhow::ensure!(seq == previous + 1, "{topic}: seq {seq} after {previous}");
                    let p = event["data"]["p"].as_u64().unwrap();
                    let n = event["data"]["n"].as_u64().unwrap();
                    let expected = from_publisher.entry(p).or_default();
                    anyhow::ensure!(n == *expected, "publisher {p}: {n} before {expected}");
                    *expected += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await??;
    }
    for reader in readers {
        reader.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_to_go_elsewhere() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    let url = ws_url(&node);
    node.shutdown();
    let goodbye = client.recv_json().await?;
    expect_error(&goodbye, "shutting_down", None);
    match client.recv().await? {
        Received::Closed(Some(close)) => assert_eq!(u16::from(close.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), node.stopped()).await?;
    assert!(
        WsClient::connect_url(&url).await.is_err(),
        "a stopped node accepts no clients"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_idle_timeout_and_a_live_one_is_not() -> TestResult {
    let node = start_node(|s| {
        s.ping_interval = Duration::from_millis(100);
        s.idle_timeout = Duration::from_millis(400);
    })
    .await;
    // The client library answers pings only while it reads: this one stops reading.
    let (mut silent, _) = WsClient::connect_json(&node).await?;
    let (mut live, _) = WsClient::connect_json(&node).await?;
    let started = std::time::Instant::now();
    let keep_alive = tokio::spawn(async move {
        // Reading answers the node's pings; requests keep the connection busy as well.
        for i in 0..10 {
            live.ping(&format!("k{i}")).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(live)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let goodbye = silent.recv_json().await?;
    expect_error(&goodbye, "idle_timeout", None);
    match silent.recv().await? {
        Received::Closed(Some(close)) => assert_eq!(u16::from(close.code), 4002),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let mut live = keep_alive.await??;
    assert!(started.elapsed() >= Duration::from_millis(900));
    live.ping("still-here").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_of_our_subprotocols_in_the_clients_order_decides_the_format() -> TestResult {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let node = start_node(|_| {}).await;
    for (offered, binary) in [
        ("murmur.v1.protobuf, murmur.v1.json", true),
        ("murmur.v1.json, murmur.v1.protobuf", false),
        ("other, murmur.v1.protobuf", true),
    ] {
        let mut request = ws_url(&node).into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", offered.parse()?);
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await?;
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let expected = if binary {
            "murmur.v1.protobuf"
        } else {
            "murmur.v1.json"
        };
        assert_eq!(chosen.as_deref(), Some(expected), "offered {offered}");
        use futures_util::StreamExt;
        let welcome = ws.next().await.unwrap()?;
        assert_eq!(welcome.is_binary(), binary, "offered {offered}");
    }
    Ok(())
}

/// Frames the node writes back to back (here the `ok` of a publish and then its event) are
/// not held back by Nagle's algorithm until the client's delayed TCP acknowledgement of the
/// first one (about 40 ms on Linux): both sides turn it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_back_to_back_are_not_delayed_by_nagle() -> TestResult {
    let node = start_node(|_| {}).await;
    let mut client = murmur::client::Client::connect(&ws_url(&node)).await?;
    client.subscribe("s", "nagle.t", None).await?;
    let mut round_trips = Vec::new();
    for i in 0..40 {
        let started = std::time::Instant::now();
        let reference = format!("p{i}");
        client
            .send(&json!({"op": "pub", "topic": "nagle.t", "data": i, "ref": reference}))
            .await?;
        let (mut ok, mut event) = (false, false);
        while !(ok && event) {
            let frame = tokio::time::timeout(Duration::from_secs(5), client.next_frame()).await??;
            ok |= frame["op"] == "ok" && frame["ref"] == reference.as_str();
            event |= frame["op"] == "event" && frame["data"] == i;
        }
        round_trips.push(started.elapsed());
    }
    round_trips.sort();
    let median = round_trips[round_trips.len() / 2];
    assert!(
        median < Duration::from_millis(15),
        "median publish round trip {median:?}: {round_trips:?}"
    );
    Ok(())
}
