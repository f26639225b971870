//! The compact layout decodes to exactly the events the plain frames carry.

use std::sync::Arc;

use bytes::Bytes;
use murmur_proto::client::v1 as pb;
use prost::Message as _;
use serde_json::{Value, json};

use super::*;
use crate::protocol::{json as plain_json, protobuf as plain_protobuf};

/// An event to write, for one subscription, maybe a queue delivery.
struct Case {
    sub: Arc<str>,
    event: Event,
    delivery: Option<Delivery>,
}

fn case(sub: &str, topic: &str, epoch: &str, seq: u64, ts: i64, payload: Payload) -> Case {
    Case {
        sub: Arc::from(sub),
        event: Event::new(Arc::from(topic), Arc::from(epoch), seq, ts, payload),
        delivery: None,
    }
}

fn json_payload(text: &str) -> Payload {
    Payload::json(Bytes::copy_from_slice(text.as_bytes())).unwrap()
}

/// Runs that continue, break on every field, carry queue deliveries, binary data, escapes,
/// times that go back and forth.
fn mixed_cases() -> Vec<Case> {
    let mut cases = vec![
        case(
            "s1",
            "chat.lobby",
            "e1",
            7,
            1_000,
            json_payload(r#"{"text":"hi"}"#),
        ),
        case("s1", "chat.lobby", "e1", 8, 1_000, json_payload("\"ho\"")),
        case("s1", "chat.lobby", "e1", 9, 1_003, json_payload("[1,2]")),
        case("s1", "chat.lobby", "e1", 10, 1_001, json_payload("null")),
        // A hole in seq, another epoch, another topic, another subscription.
        case("s1", "chat.lobby", "e1", 12, 1_001, json_payload("1")),
        case("s1", "chat.lobby", "e2", 1, 1_001, json_payload("2")),
        case("s1", "chat.other", "e2", 2, 1_001, json_payload("3")),
        case("s\"2", "chat.other", "e2", 3, 1_001, json_payload("4")),
        case(
            "s\"2",
            "chat.other",
            "e2",
            4,
            1_002,
            Payload::Binary(Bytes::from_static(b"\x00\xffraw")),
        ),
        case(
            "s\"2",
            "chat.other",
            "e2",
            5,
            1_002,
            Payload::Binary(Bytes::from_static(b"x")),
        ),
        case("s\"2", "chat.other", "e2", 6, -5, json_payload("true")),
    ];
    for (id, redelivered) in [(17, false), (18, true)] {
        let mut queued = case("w", "jobs.build", "e3", id, 2_000, json_payload("{}"));
        queued.delivery = Some(Delivery {
            id,
            redelivered,
            origin: None,
        });
        cases.push(queued);
    }
    cases.push(case("w", "jobs.build", "e3", 19, 2_000, json_payload("{}")));
    cases
}

/// The events of a compact JSON frame, each as the plain `event` frame would be.
fn expand_json(frame: &Value) -> Vec<Value> {
    assert_eq!(frame["op"], "batch");
    let mut events = Vec::new();
    for run in frame["runs"].as_array().expect("runs") {
        let data = run["data"].as_array().expect("data");
        let dts = run.get("dts").and_then(Value::as_array);
        if let Some(dts) = dts {
            assert_eq!(
                dts.len(),
                data.len() - 1,
                "one dts per event after the first"
            );
        }
        let mut ts = run["ts"].as_i64().expect("ts");
        for (i, value) in data.iter().enumerate() {
            if i > 0 {
                ts += dts.map_or(0, |d| d[i - 1].as_i64().expect("dts number"));
            }
            let mut event = json!({
                "op": "event", "sub": run["sub"], "topic": run["topic"], "epoch": run["epoch"],
                "seq": run["seq"].as_u64().expect("seq") + i as u64, "data": value, "ts": ts,
            });
            if let Some(encoding) = run.get("encoding") {
                event["encoding"] = encoding.clone();
            }
            if let Some(delivery) = run.get("delivery") {
                assert_eq!(data.len(), 1, "a queue delivery has a run of its own");
                event["delivery"] = delivery.clone();
                event["redelivered"] = run["redelivered"].clone();
            }
            events.push(event);
        }
    }
    events
}

fn plain_json_events(cases: &[Case]) -> Vec<Value> {
    cases
        .iter()
        .map(|c| {
            serde_json::from_str(&plain_json::encode_event(
                &c.sub,
                &c.event,
                c.delivery.as_ref(),
            ))
            .unwrap()
        })
        .collect()
}

#[test]
fn a_json_compact_batch_holds_exactly_the_plain_events() {
    let cases = mixed_cases();
    let mut frame = JsonRuns::new();
    for c in &cases {
        assert!(frame.fits(&c.sub, &c.event, c.delivery.as_ref(), usize::MAX));
        frame.push(&c.sub, &c.event, c.delivery.as_ref());
    }
    let text = frame.finish();
    let value: Value = serde_json::from_str(&text).expect("the frame is JSON");
    assert_eq!(expand_json(&value), plain_json_events(&cases));
}

#[test]
fn a_run_writes_the_shared_fields_once() {
    let cases: Vec<Case> = (1..=3)
        .map(|seq| case("s1", "t", "e", seq, 5, json_payload("\"abc\"")))
        .collect();
    let mut frame = JsonRuns::new();
    for c in &cases {
        frame.push(&c.sub, &c.event, None);
    }
    assert_eq!(
        frame.finish(),
        r#"{"op":"batch","runs":[{"sub":"s1","topic":"t","epoch":"e","seq":1,"ts":5,"data":["abc","abc","abc"]}]}"#
    );
    let mut frame = JsonRuns::new();
    for (seq, ts) in [(1, 5), (2, 7), (3, 6)] {
        let c = case("s1", "t", "e", seq, ts, json_payload("0"));
        frame.push(&c.sub, &c.event, None);
    }
    assert_eq!(
        frame.finish(),
        r#"{"op":"batch","runs":[{"sub":"s1","topic":"t","epoch":"e","seq":1,"ts":5,"data":[0,0,0],"dts":[2,-1]}]}"#
    );
}

/// Fills frames under `max_bytes` as the writer does: the first event always, then while
/// `fits` says yes; returns each frame with how many events it took.
fn fill<F>(cases: &[Case], max_bytes: usize, mut frame_of: F) -> Vec<(usize, usize)>
where
    F: FnMut(&[Case]) -> (usize, usize),
{
    let mut out = Vec::new();
    let mut next = 0;
    while next < cases.len() {
        let (taken, len) = frame_of(&cases[next..]);
        assert!(taken > 0);
        if taken > 1 {
            assert!(len <= max_bytes, "{len} bytes over the bound {max_bytes}");
        }
        out.push((taken, len));
        next += taken;
    }
    out
}

#[test]
fn frames_stay_within_their_byte_bound() {
    let mut cases = mixed_cases();
    cases.extend((1..200).map(|seq| {
        case(
            "s9",
            "t.x",
            "e",
            seq,
            1_000 + (seq as i64 % 3),
            json_payload("\"0123456789abcdef\""),
        )
    }));
    for max_bytes in [64, 100, 200, 333, 1024, 4096] {
        let json_frames = fill(&cases, max_bytes, |rest| {
            let mut frame = JsonRuns::new();
            let mut taken = 0;
            for c in rest {
                if taken > 0 && !frame.fits(&c.sub, &c.event, c.delivery.as_ref(), max_bytes) {
                    break;
                }
                frame.push(&c.sub, &c.event, c.delivery.as_ref());
                taken += 1;
            }
            (taken, frame.finish().len())
        });
        assert_eq!(json_frames.iter().map(|f| f.0).sum::<usize>(), cases.len());
        let proto_frames = fill(&cases, max_bytes, |rest| {
            let mut frame = ProtobufRuns::new();
            let mut taken = 0;
            for c in rest {
                if taken > 0 && !frame.fits(&c.sub, &c.event, c.delivery.as_ref(), max_bytes) {
                    break;
                }
                frame.push(&c.sub, &c.event, c.delivery.as_ref());
                taken += 1;
            }
            (taken, frame.finish().len())
        });
        assert_eq!(proto_frames.iter().map(|f| f.0).sum::<usize>(), cases.len());
    }
}

/// The events of a compact protobuf frame, each as the plain `Event` would be.
fn expand_protobuf(frame: Bytes) -> Vec<pb::Event> {
    let Some(pb::server_frame::Op::Batch(batch)) = pb::ServerFrame::decode(frame).unwrap().op
    else {
        panic!("not a batch frame");
    };
    assert!(batch.events.is_empty(), "a compact batch holds runs only");
    let mut events = Vec::new();
    for run in batch.runs {
        assert!(run.dts.is_empty() || run.dts.len() == run.data.len() - 1);
        let mut ts = run.ts;
        for (i, data) in run.data.into_iter().enumerate() {
            if i > 0 {
                ts += run.dts.get(i - 1).copied().unwrap_or(0);
            }
            events.push(pb::Event {
                sub: run.sub.clone(),
                topic: run.topic.clone(),
                epoch: run.epoch.clone(),
                seq: run.seq + i as u64,
                data,
                encoding: run.encoding,
                ts,
                delivery: run.delivery.clone(),
                redelivered: run.redelivered,
            });
        }
    }
    events
}

#[test]
fn a_protobuf_compact_batch_holds_exactly_the_plain_events() {
    let cases = mixed_cases();
    let mut frame = ProtobufRuns::new();
    for c in &cases {
        frame.push(&c.sub, &c.event, c.delivery.as_ref());
    }
    let plain: Vec<pb::Event> = cases
        .iter()
        .map(|c| {
            let bytes = plain_protobuf::encode_event(&c.sub, &c.event, c.delivery.as_ref());
            match pb::ServerFrame::decode(bytes).unwrap().op {
                Some(pb::server_frame::Op::Event(e)) => e,
                other => panic!("not an event: {other:?}"),
            }
        })
        .collect();
    assert_eq!(expand_protobuf(frame.finish()), plain);
}

#[test]
fn decimals_are_written_and_counted_alike() {
    for n in [
        0i64,
        7,
        -7,
        10,
        99,
        100,
        -100,
        i64::MAX,
        i64::MIN,
        1_795_645_060_597,
    ] {
        let mut out = String::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string());
        assert_eq!(decimal_len(n), out.len(), "{n}");
    }
    let mut out = String::new();
    push_decimal(&mut out, u64::MAX);
    assert_eq!(out, u64::MAX.to_string());
    assert_eq!(zigzag(-1), 1);
    assert_eq!(zigzag(1), 2);
}

#[test]
fn the_data_value_is_the_plain_frames_data() {
    for payload in [
        json_payload(r#"{"a":"\"q\"","ts":1}"#),
        Payload::Binary(Bytes::from_static(b"")),
        Payload::Binary(Bytes::from_static(b"\x01\x02\x03\x04")),
    ] {
        for ts in [0, -3, 1_795_645_060_597] {
            let event = Event::new(Arc::from("t"), Arc::from("e"), 3, ts, payload.clone());
            let frame: Value =
                serde_json::from_str(&plain_json::encode_event("s", &event, None)).unwrap();
            let data: Value = serde_json::from_str(data_value(&event)).unwrap();
            assert_eq!(data, frame["data"]);
        }
    }
}
