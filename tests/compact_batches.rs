//! The compact batch layout (`hello` with `batch: {"compact": true}`) against a real node:
//! a subscriber gets every event of a burst, with its topic, epoch, seq, data and time, in
//! runs that carry the shared fields once; fewer bytes than the default layout; JSON and
//! protobuf; the Rust client reads it event by event.

use futures_util::SinkExt;
use murmur_proto::client::v1 as pb;
use murmur_tests::{
    FRAME_TIMEOUT, RawSocket, next_raw_json, next_raw_message, send_together, start_node, ws_url,
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

type TestResult = anyhow::Result<()>;

/// Connects, says `hello` with `batch` and subscribes `s` to `topic`; returns the `welcome`.
async fn json_subscriber(
    url: &str,
    batch: Value,
    topic: &str,
) -> anyhow::Result<(RawSocket, Value)> {
    let (mut ws, _) = connect_async(url).await?;
    let (greeting, _) = next_raw_json(&mut ws).await?;
    anyhow::ensure!(greeting["op"] == "welcome", "{greeting}");
    ws.send(Message::text(
        json!({"op": "hello", "batch": batch}).to_string(),
    ))
    .await?;
    let (welcome, _) = next_raw_json(&mut ws).await?;
    anyhow::ensure!(welcome["op"] == "welcome", "{welcome}");
    ws.send(Message::text(
        json!({"op": "sub", "id": "s", "topic": topic}).to_string(),
    ))
    .await?;
    let (ok, _) = next_raw_json(&mut ws).await?;
    anyhow::ensure!(ok["op"] == "ok", "expected ok, got {ok}");
    Ok((ws, welcome))
}

/// Publishes `count` events on each of `topics` (in turns of 10 per topic) with a `ref`
/// each, all sent together; returns each one's (topic, epoch, seq, data) from its `ok`.
async fn burst(url: &str, topics: &[&str], count: usize) -> anyhow::Result<Vec<Value>> {
    let (mut ws, _) = connect_async(url).await?;
    next_raw_json(&mut ws).await?;
    let frames = (0..count * topics.len())
        .map(|i| {
            let topic = topics[(i / 10) % topics.len()];
            Message::text(
                json!({"op": "pub", "topic": topic, "data": {"i": i}, "ref": i.to_string()})
                    .to_string(),
            )
        })
        .collect();
    send_together(&mut ws, frames).await?;
    let mut published = vec![Value::Null; count * topics.len()];
    for _ in 0..published.len() {
        let (ok, _) = next_raw_json(&mut ws).await?;
        anyhow::ensure!(ok["op"] == "ok", "expected ok, got {ok}");
        let i: usize = ok["ref"].as_str().unwrap_or_default().parse()?;
        published[i] = json!({
            "topic": topics[(i / 10) % topics.len()], "epoch": ok["epoch"], "seq": ok["seq"],
            "data": {"i": i},
        });
    }
    Ok(published)
}

/// What a compact JSON subscriber read: its events expanded, and frame counts.
#[derive(Default)]
struct Read {
    events: Vec<Value>,
    bytes: usize,
    runs_frames: usize,
}

async fn read_compact(ws: &mut RawSocket, expected: usize) -> anyhow::Result<Read> {
    let mut read = Read::default();
    while read.events.len() < expected {
        let (frame, bytes) = next_raw_json(ws).await?;
        read.bytes += bytes;
        match frame["op"].as_str() {
            Some("event") => read.events.push(frame),
            Some("batch") => {
                assert!(frame.get("events").is_none(), "compact: runs only: {frame}");
                let runs = frame["runs"].as_array().expect("runs");
                let mut expanded = std::collections::VecDeque::new();
                for run in runs {
                    murmur::client::expand_run(run, &mut expanded)?;
                }
                assert!(expanded.len() > 1, "a batch holds several events: {frame}");
                read.events.extend(expanded);
                read.runs_frames += 1;
            }
            _ => anyhow::bail!("unexpected frame {frame}"),
        }
    }
    Ok(read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_batch_subscriber_gets_every_event_with_its_topic_epoch_and_seq() -> TestResult {
    const PER_TOPIC: usize = 150;
    let node = start_node(|_| {}).await;
    let url = ws_url(&node);
    let (mut compact, welcome) =
        json_subscriber(&url, json!({"compact": true, "max_events": 64}), "k.*").await?;
    assert_eq!(
        welcome["batch"],
        json!({"max_events": 64, "max_bytes": 65536, "compact": true})
    );
    let (mut plain_batches, welcome) = json_subscriber(&url, json!(true), "k.*").await?;
    assert!(welcome["batch"].get("compact").is_none(), "{welcome}");

    let published = burst(&url, &["k.a", "k.b"], PER_TOPIC).await?;
    let read = read_compact(&mut compact, published.len()).await?;
    assert!(read.runs_frames > 0, "some events came in compact batches");
    // Per topic in publish order, each event exactly as published, with the time it was
    // given: the plain subscriber's copy of the same event.
    let mut plain = Vec::new();
    let mut plain_bytes = 0;
    while plain.len() < published.len() {
        let (frame, bytes) = next_raw_json(&mut plain_batches).await?;
        plain_bytes += bytes;
        match frame["op"].as_str() {
            Some("event") => plain.push(frame),
            Some("batch") => plain.extend(frame["events"].as_array().cloned().unwrap_or_default()),
            _ => anyhow::bail!("unexpected frame {frame}"),
        }
    }
    for topic in ["k.a", "k.b"] {
        let of = |events: &[Value]| -> Vec<Value> {
            events
                .iter()
                .filter(|e| e["topic"] == topic)
                .cloned()
                .collect()
        };
        let got = of(&read.events);
        let expected: Vec<&Value> = published.iter().filter(|p| p["topic"] == topic).collect();
        assert_eq!(got.len(), PER_TOPIC, "{topic}");
        for (event, p) in got.iter().zip(&expected) {
            assert_eq!(event["epoch"], p["epoch"], "{event}");
            assert_eq!(event["seq"], p["seq"], "{event}");
            assert_eq!(event["data"], p["data"], "{event}");
            assert_eq!(event["sub"], "s");
        }
        let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap_or(0)).collect();
        assert_eq!(seqs, (1..=PER_TOPIC as u64).collect::<Vec<_>>(), "{topic}");
        assert_eq!(
            got,
            of(&plain),
            "{topic}: the same events as the default layout's"
        );
    }
    assert!(
        read.bytes < plain_bytes,
        "compact {} bytes, default layout {plain_bytes}",
        read.bytes
    );
    Ok(())
}

async fn next(ws: &mut RawSocket) -> anyhow::Result<pb::server_frame::Op> {
    match next_raw_message(ws).await? {
        Message::Binary(bytes) => pb::ServerFrame::decode(bytes)?
            .op
            .ok_or_else(|| anyhow::anyhow!("empty frame")),
        other => anyhow::bail!("expected a binary frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_compact_subscriber_gets_every_event_in_runs() -> TestResult {
    use pb::server_frame::Op;
    const EVENTS: usize = 200;
    let node = start_node(|_| {}).await;
    let (mut ws, _) = connect_async(format!("{}?format=protobuf", ws_url(&node))).await?;
    let frame = |op| Message::binary(pb::ClientFrame { op: Some(op) }.encode_to_vec());
    assert!(matches!(next(&mut ws).await?, Op::Welcome(_)));
    ws.send(frame(pb::client_frame::Op::Hello(pb::Hello {
        batch: Some(pb::BatchLimits {
            compact: true,
            ..Default::default()
        }),
        ..Default::default()
    })))
    .await?;
    match next(&mut ws).await? {
        Op::Welcome(w) => assert_eq!(w.batch.map(|b| b.compact), Some(true)),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
    ws.send(frame(pb::client_frame::Op::Sub(pb::Subscribe {
        id: "s".into(),
        topic: "p.t".into(),
        ..Default::default()
    })))
    .await?;
    assert!(matches!(next(&mut ws).await?, Op::Ok(_)));
    let publishes = (0..EVENTS)
        .map(|i| {
            frame(pb::client_frame::Op::Pub(pb::Publish {
                topic: "p.t".into(),
                data: bytes::Bytes::from(format!("payload {i}")),
                encoding: pb::Encoding::Binary as i32,
                r#ref: None,
                id: None,
            }))
        })
        .collect();
    send_together(&mut ws, publishes).await?;

    let mut events: Vec<(u64, Vec<u8>, i32, String)> = Vec::new();
    let mut runs = 0;
    while events.len() < EVENTS {
        match next(&mut ws).await? {
            Op::Event(e) => events.push((e.seq, e.data.to_vec(), e.encoding, e.topic)),
            Op::Batch(b) => {
                assert!(b.events.is_empty(), "compact: runs only");
                for run in b.runs {
                    runs += 1;
                    assert_eq!(run.sub, "s");
                    assert!(run.delivery.is_none());
                    for (i, data) in run.data.iter().enumerate() {
                        events.push((
                            run.seq + i as u64,
                            data.to_vec(),
                            run.encoding,
                            run.topic.clone(),
                        ));
                    }
                }
            }
            other => anyhow::bail!("unexpected frame {other:?}"),
        }
    }
    assert!(runs > 0, "some events came in runs");
    for (i, (seq, data, encoding, topic)) in events.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(data, format!("payload {i}").as_bytes());
        assert_eq!(*encoding, pb::Encoding::Binary as i32);
        assert_eq!(topic, "p.t");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_reads_compact_batches_event_by_event() -> TestResult {
    const EVENTS: usize = 100;
    let node = start_node(|_| {}).await;
    let mut client = murmur::client::Client::connect(&ws_url(&node)).await?;
    let welcome = client.request_compact_batches(None, None).await?;
    assert_eq!(welcome["batch"]["compact"], true);
    client.subscribe("s", "c.t", None).await?;
    for i in 0..EVENTS {
        client
            .send(&json!({"op": "pub", "topic": "c.t", "data": i}))
            .await?;
    }
    let mut seqs = Vec::new();
    while seqs.len() < EVENTS {
        let frame = tokio::time::timeout(FRAME_TIMEOUT, client.next_frame()).await??;
        assert_eq!(frame["op"], "event", "{frame}");
        assert_eq!(frame["topic"], "c.t");
        assert_eq!(frame["data"], seqs.len());
        seqs.push(frame["seq"].as_u64().unwrap_or(0));
    }
    assert_eq!(seqs, (1..=EVENTS as u64).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_request_with_a_bad_flag_is_refused() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut ws, _) = connect_async(ws_url(&node)).await?;
    next_raw_json(&mut ws).await?;
    ws.send(Message::text(r#"{"op":"hello","batch":{"compact":"yes"}}"#))
        .await?;
    let (error, _) = next_raw_json(&mut ws).await?;
    assert_eq!(error["op"], "error");
    assert_eq!(error["code"], "invalid_request");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deliveries_in_compact_batches_come_one_per_run_and_can_be_acked() -> TestResult {
    const EVENTS: usize = 50;
    let node = start_node(|_| {}).await;
    let url = ws_url(&node);
    let (mut ws, _) = connect_async(url.as_str()).await?;
    next_raw_json(&mut ws).await?;
    ws.send(Message::text(r#"{"op":"hello","batch":{"compact":true}}"#))
        .await?;
    next_raw_json(&mut ws).await?;
    ws.send(Message::text(
        json!({"op": "sub", "id": "w", "topic": "jobs", "group": "workers"}).to_string(),
    ))
    .await?;
    let (ok, _) = next_raw_json(&mut ws).await?;
    assert_eq!(ok["op"], "ok", "{ok}");
    let frames = (0..EVENTS)
        .map(|i| Message::text(json!({"op": "pub", "topic": "jobs", "data": i}).to_string()))
        .collect();
    send_together(&mut ws, frames).await?;

    let mut deliveries = Vec::new();
    let mut runs_frames = 0;
    while deliveries.len() < EVENTS {
        let (frame, _) = next_raw_json(&mut ws).await?;
        let runs = match frame["op"].as_str() {
            Some("event") => {
                deliveries.push((frame["seq"].clone(), frame["delivery"].clone()));
                continue;
            }
            Some("batch") => frame["runs"].as_array().cloned().unwrap_or_default(),
            _ => anyhow::bail!("unexpected frame {frame}"),
        };
        runs_frames += 1;
        for run in runs {
            assert_eq!(run["data"].as_array().map(Vec::len), Some(1), "{run}");
            assert_eq!(run["redelivered"], false, "{run}");
            assert!(run["delivery"].is_string(), "{run}");
            deliveries.push((run["seq"].clone(), run["delivery"].clone()));
        }
    }
    assert!(runs_frames > 0, "some deliveries came in compact batches");
    let seqs: Vec<u64> = deliveries
        .iter()
        .map(|(s, _)| s.as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=EVENTS as u64).collect::<Vec<_>>());
    // Every ack is accepted: an unknown one would be answered with an error before the pong.
    let acks = deliveries
        .iter()
        .map(|(_, d)| Message::text(json!({"op": "ack", "delivery": d}).to_string()))
        .chain([Message::text(r#"{"op":"ping","ref":"acked"}"#)])
        .collect();
    send_together(&mut ws, acks).await?;
    let (pong, _) = next_raw_json(&mut ws).await?;
    assert_eq!(pong, json!({"op": "pong", "ref": "acked"}));
    Ok(())
}
