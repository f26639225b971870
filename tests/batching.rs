//! Batch frames: a client that asks for them in `hello` gets several events per frame, in
//! order and within its bounds; a client that does not is unaffected.
//!
//! Batches form when a connection's outbox holds several events at once. A connection that
//! publishes to its own subscription makes that certain: the node reads all the `pub` frames
//! the client sent in one write before it drains the outbox.

use futures_util::SinkExt;
use murmur_proto::client::v1 as pb;
use murmur_tests::{
    FRAME_TIMEOUT, RawSocket, WsClient, expect_error, next_raw_json, next_raw_message,
    send_together, start_node, ws_url,
};
use prost::Message as _;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

type TestResult = anyhow::Result<()>;

/// What a JSON client read until it had `expected` events: the events in order, and per
/// frame that held events, how many and how many bytes. (The `pong` answering the closing
/// `ping` comes at once, before queued events, and is skipped.)
#[derive(Debug, Default)]
struct JsonRead {
    seqs: Vec<u64>,
    frames: Vec<(usize, usize)>,
    batch_frames: usize,
}

async fn read_json_events(ws: &mut RawSocket, expected: usize) -> anyhow::Result<JsonRead> {
    let mut read = JsonRead::default();
    while read.seqs.len() < expected {
        let (frame, bytes) = next_raw_json(ws).await?;
        match frame["op"].as_str() {
            Some("pong") => {}
            Some("event") => {
                read.seqs.push(frame["seq"].as_u64().unwrap_or(0));
                read.frames.push((1, bytes));
            }
            Some("batch") => {
                let events = frame["events"].as_array().cloned().unwrap_or_default();
                assert!(events.len() > 1, "a batch holds several events: {frame}");
                for event in &events {
                    assert_eq!(event["op"], "event", "{frame}");
                    assert_eq!(event["sub"], "s");
                    read.seqs.push(event["seq"].as_u64().unwrap_or(0));
                }
                read.frames.push((events.len(), bytes));
                read.batch_frames += 1;
            }
            _ => anyhow::bail!("unexpected frame {frame}"),
        }
    }
    Ok(read)
}

async fn connect_json(url: &str) -> anyhow::Result<RawSocket> {
    let (mut ws, _) = connect_async(url).await?;
    let (welcome, _) = next_raw_json(&mut ws).await?;
    anyhow::ensure!(
        welcome["op"] == "welcome",
        "expected welcome, got {welcome}"
    );
    Ok(ws)
}

async fn subscribe_json(ws: &mut RawSocket, topic: &str) -> anyhow::Result<()> {
    ws.send(Message::text(
        json!({"op": "sub", "id": "s", "topic": topic}).to_string(),
    ))
    .await?;
    let (ok, _) = next_raw_json(ws).await?;
    anyhow::ensure!(ok["op"] == "ok", "expected ok, got {ok}");
    Ok(())
}

/// `count` publishes of `data` on `topic` and a closing `ping`, as JSON frames.
fn json_publishes(topic: &str, data: &Value, count: usize) -> Vec<Message> {
    let mut frames: Vec<Message> = (0..count)
        .map(|_| Message::text(json!({"op": "pub", "topic": topic, "data": data}).to_string()))
        .collect();
    frames.push(Message::text(r#"{"op":"ping","ref":"end"}"#));
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_json_subscriber_gets_every_event_in_order_within_its_bounds() -> TestResult {
    const EVENTS: usize = 200;
    let node = start_node(|_| {}).await;
    let url = ws_url(&node);
    let mut batched = connect_json(&url).await?;
    batched
        .send(Message::text(
            json!({"op": "hello", "client": "b", "batch": {"max_events": 8, "max_bytes": 4096}})
                .to_string(),
        ))
        .await?;
    let (welcome, _) = next_raw_json(&mut batched).await?;
    assert_eq!(welcome["op"], "welcome");
    assert_eq!(
        welcome["batch"],
        json!({"max_events": 8, "max_bytes": 4096})
    );
    subscribe_json(&mut batched, "b.t").await?;
    let mut plain = connect_json(&url).await?;
    subscribe_json(&mut plain, "b.t").await?;

    send_together(
        &mut batched,
        json_publishes("b.t", &json!({"n": 1}), EVENTS),
    )
    .await?;
    let read = read_json_events(&mut batched, EVENTS).await?;
    assert_eq!(read.seqs, (1..=EVENTS as u64).collect::<Vec<_>>());
    assert!(read.batch_frames > 0, "some events came in batches");
    assert!(
        read.frames
            .iter()
            .all(|&(n, bytes)| n <= 8 && bytes <= 4096)
    );

    // The subscriber that did not ask gets one plain frame per event.
    let read = read_json_events(&mut plain, EVENTS).await?;
    assert_eq!(read.seqs, (1..=EVENTS as u64).collect::<Vec<_>>());
    assert_eq!(read.batch_frames, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_never_exceeds_its_byte_bound() -> TestResult {
    const EVENTS: usize = 60;
    let node = start_node(|_| {}).await;
    let mut ws = connect_json(&ws_url(&node)).await?;
    // The node's defaults for the count; bytes: room for three of these events, not four.
    ws.send(Message::text(
        r#"{"op":"hello","batch":{"max_bytes":2000}}"#,
    ))
    .await?;
    let (welcome, _) = next_raw_json(&mut ws).await?;
    assert_eq!(welcome["batch"]["max_bytes"], 2000);
    assert_eq!(welcome["batch"]["max_events"], 256);
    subscribe_json(&mut ws, "big").await?;
    send_together(
        &mut ws,
        json_publishes("big", &json!("x".repeat(500)), EVENTS),
    )
    .await?;
    let read = read_json_events(&mut ws, EVENTS).await?;
    assert_eq!(read.seqs, (1..=EVENTS as u64).collect::<Vec<_>>());
    assert!(read.batch_frames > 0, "some events came in batches");
    assert!(
        read.frames
            .iter()
            .all(|&(n, bytes)| n <= 3 && bytes <= 2000),
        "{:?}",
        read.frames
    );

    // A single event over the bound still comes, as a plain frame.
    send_together(&mut ws, json_publishes("big", &json!("y".repeat(3000)), 3)).await?;
    let read = read_json_events(&mut ws, 3).await?;
    assert_eq!(read.seqs, vec![61, 62, 63]);
    assert_eq!(read.batch_frames, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_request_is_refused() -> TestResult {
    let node = start_node(|_| {}).await;
    let (mut client, _) = WsClient::connect_json(&node).await?;
    for bad in [
        json!({"op": "hello", "batch": "yes"}),
        json!({"op": "hello", "batch": {"max_events": 0}}),
        json!({"op": "hello", "batch": {"max_frames": 3}}),
    ] {
        let reply = client.request(bad).await?;
        expect_error(&reply, "invalid_request", None);
    }
    // `false` turns batching off: the welcome carries no `batch`.
    let welcome = client
        .request(json!({"op": "hello", "batch": false}))
        .await?;
    assert_eq!(welcome["op"], "welcome");
    assert!(welcome.get("batch").is_none(), "{welcome}");
    Ok(())
}

fn proto_frame(op: pb::client_frame::Op) -> Message {
    Message::binary(pb::ClientFrame { op: Some(op) }.encode_to_vec())
}

async fn next_proto(ws: &mut RawSocket) -> anyhow::Result<(pb::server_frame::Op, usize)> {
    match next_raw_message(ws).await? {
        Message::Binary(bytes) => {
            let len = bytes.len();
            let frame = pb::ServerFrame::decode(bytes)?;
            Ok((frame.op.ok_or_else(|| anyhow::anyhow!("empty frame"))?, len))
        }
        other => anyhow::bail!("expected a binary frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_protobuf_subscriber_gets_every_event_in_order_within_its_bounds() -> TestResult {
    use pb::server_frame::Op;
    const EVENTS: usize = 200;
    let node = start_node(|_| {}).await;
    let (mut ws, _) = connect_async(format!("{}?format=protobuf", ws_url(&node))).await?;
    assert!(matches!(next_proto(&mut ws).await?.0, Op::Welcome(_)));
    ws.send(proto_frame(pb::client_frame::Op::Hello(pb::Hello {
        client: "b".into(),
        token: String::new(),
        batch: Some(pb::BatchLimits {
            max_events: 8,
            max_bytes: 0,
            compact: false,
        }),
    })))
    .await?;
    match next_proto(&mut ws).await?.0 {
        Op::Welcome(w) => assert_eq!(
            w.batch,
            Some(pb::BatchLimits {
                max_events: 8,
                max_bytes: 64 * 1024,
                compact: false,
            })
        ),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
    ws.send(proto_frame(pb::client_frame::Op::Sub(pb::Subscribe {
        id: "s".into(),
        topic: "p.t".into(),
        ..Default::default()
    })))
    .await?;
    assert!(matches!(next_proto(&mut ws).await?.0, Op::Ok(_)));

    let mut frames: Vec<Message> = (0..EVENTS)
        .map(|i| {
            proto_frame(pb::client_frame::Op::Pub(pb::Publish {
                topic: "p.t".into(),
                data: bytes::Bytes::from(format!("payload {i}")),
                encoding: pb::Encoding::Binary as i32,
                r#ref: None,
                id: None,
            }))
        })
        .collect();
    frames.push(proto_frame(pb::client_frame::Op::Ping(pb::Ping {
        r#ref: Some("end".into()),
    })));
    send_together(&mut ws, frames).await?;

    let mut events = Vec::new();
    let mut batches = 0;
    while events.len() < EVENTS {
        match next_proto(&mut ws).await?.0 {
            Op::Pong(_) => {}
            Op::Event(e) => events.push(e),
            Op::Batch(b) => {
                assert!(
                    b.events.len() > 1 && b.events.len() <= 8,
                    "{}",
                    b.events.len()
                );
                batches += 1;
                events.extend(b.events);
            }
            other => anyhow::bail!("unexpected frame {other:?}"),
        }
    }
    assert!(batches > 0, "some events came in batches");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=EVENTS as u64).collect::<Vec<_>>());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sub, "s");
        assert_eq!(e.topic, "p.t");
        assert_eq!(e.data, format!("payload {i}").as_bytes());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_reads_batches_event_by_event() -> TestResult {
    const EVENTS: usize = 100;
    let node = start_node(|_| {}).await;
    let url = ws_url(&node);
    let mut client = murmur::client::Client::connect(&url).await?;
    let welcome = client.request_batches(None, None).await?;
    assert_eq!(welcome["batch"]["max_events"], 256);
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
        assert_eq!(frame["data"], seqs.len());
        seqs.push(frame["seq"].as_u64().unwrap_or(0));
    }
    assert_eq!(seqs, (1..=EVENTS as u64).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_deliveries_in_a_batch_carry_their_delivery_ids_and_can_be_acked() -> TestResult {
    const EVENTS: usize = 50;
    let node = start_node(|_| {}).await;
    let mut ws = connect_json(&ws_url(&node)).await?;
    ws.send(Message::text(r#"{"op":"hello","batch":true}"#))
        .await?;
    let (welcome, _) = next_raw_json(&mut ws).await?;
    assert_eq!(welcome["op"], "welcome");
    ws.send(Message::text(
        json!({"op": "sub", "id": "s", "topic": "jobs", "group": "workers"}).to_string(),
    ))
    .await?;
    let (ok, _) = next_raw_json(&mut ws).await?;
    assert_eq!(ok["op"], "ok");
    send_together(&mut ws, json_publishes("jobs", &json!("job"), EVENTS)).await?;

    let mut deliveries = Vec::new();
    let mut batches = 0;
    while deliveries.len() < EVENTS {
        let (frame, _) = next_raw_json(&mut ws).await?;
        let events = match frame["op"].as_str() {
            Some("pong") => continue,
            Some("event") => vec![frame],
            Some("batch") => {
                batches += 1;
                frame["events"].as_array().cloned().unwrap_or_default()
            }
            _ => anyhow::bail!("unexpected frame {frame}"),
        };
        for event in events {
            assert_eq!(event["redelivered"], false, "{event}");
            let delivery = event["delivery"].as_str().expect("a delivery id");
            deliveries.push(delivery.to_owned());
        }
    }
    assert!(batches > 0, "some deliveries came in batches");
    // Every ack is accepted: an unknown one would be answered with an error before the pong.
    let acks = deliveries
        .iter()
        .map(|d| Message::text(json!({"op": "ack", "delivery": d}).to_string()))
        .chain([Message::text(r#"{"op":"ping","ref":"acked"}"#)])
        .collect();
    send_together(&mut ws, acks).await?;
    loop {
        let (frame, _) = next_raw_json(&mut ws).await?;
        assert_eq!(frame["op"], "pong", "only pongs are left: {frame}");
        if frame["ref"] == "acked" {
            return Ok(());
        }
    }
}
