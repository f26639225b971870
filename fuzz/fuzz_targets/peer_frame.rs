//! The inter-node frame decoder, `murmur::cluster::transport::decode`, on the body of one
//! length-delimited frame read from a peer's QUIC stream.
//!
//! Checks, beyond "no panic": a decoded frame decodes the same once encoded again; every
//! event it carries is either refused by `event_from_pb` or rebuilt exactly, and an accepted
//! event encodes into client frames that clients can read; interests and patterns go
//! through the checks the node runs on them.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use murmur::cluster::transport::{self, event_from_pb, event_pb, interest_from_pb};
use murmur::event::Payload;
use murmur::protocol::{json, protobuf};
use murmur::routing::topic;
use murmur_fuzz::is_json_text;
use murmur_proto::client::v1 as client_pb;
use murmur_proto::cluster::v1 as pb;
use pb::peer_frame::Msg;
use prost::Message;

/// The broker's bound on a peer's pattern (`MAX_PEER_PATTERN_BYTES`).
const MAX_PEER_PATTERN_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = transport::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = pb::PeerFrame {
        version: pb::VERSION,
        msg: Some(msg.clone()),
    }
    .encode_to_vec();
    assert_eq!(
        transport::decode(Bytes::from(again)).ok().as_ref(),
        Some(&msg),
        "re-encoded frame reads differently"
    );

    for event in events(&msg) {
        check_event(event);
    }
    for interest in interests(&msg) {
        let interest = interest_from_pb(interest.clone());
        assert!(
            interest.group.as_deref() != Some(""),
            "an empty group is no group"
        );
        let _ = topic::validate_pattern(&interest.pattern, MAX_PEER_PATTERN_BYTES);
    }
    match &msg {
        Msg::ReplayRequest(request) => {
            let _ = topic::validate_pattern(&request.pattern, MAX_PEER_PATTERN_BYTES);
        }
        Msg::Publish(request) => {
            let _ = topic::validate_publish_topic(&request.topic, MAX_PEER_PATTERN_BYTES);
        }
        _ => {}
    }
});

fn check_event(event: &pb::Event) {
    let Some(rebuilt) = event_from_pb(event.clone()) else {
        return;
    };
    assert_eq!(
        &event_pb(&rebuilt),
        event,
        "event_from_pb changed the event"
    );
    if let Payload::Json(bytes) = &rebuilt.payload {
        assert!(
            is_json_text(bytes),
            "accepted a JSON event that is not JSON text"
        );
    }
    // What the node then sends its clients.
    let text = json::encode_event("s", &rebuilt, None);
    assert!(
        serde_json::from_str::<&serde_json::value::RawValue>(&text).is_ok(),
        "event frame is not JSON: {text}"
    );
    let frame = client_pb::ServerFrame::decode(protobuf::encode_event("s", &rebuilt, None));
    let Ok(client_pb::ServerFrame {
        op: Some(client_pb::server_frame::Op::Event(sent)),
    }) = frame
    else {
        panic!("event frame does not decode: {frame:?}");
    };
    assert_eq!(
        (&*sent.topic, &*sent.epoch, sent.seq, sent.ts, &sent.data),
        (
            &*event.topic,
            &*event.epoch,
            event.seq,
            event.ts,
            &event.data
        )
    );
}

fn events(msg: &Msg) -> Vec<&pb::Event> {
    match msg {
        Msg::Forward(f) => f.event.iter().collect(),
        Msg::Replicate(r) => r.event.iter().collect(),
        Msg::Sync(s) => s.events.iter().collect(),
        Msg::StateReply(r) => r.events.iter().collect(),
        Msg::ReplayReply(r) => r.topics.iter().flat_map(|t| &t.events).collect(),
        _ => Vec::new(),
    }
}

fn interests(msg: &Msg) -> Vec<&pb::Interest> {
    match msg {
        Msg::Snapshot(s) => s.interests.iter().collect(),
        Msg::Delta(d) => d.added.iter().chain(&d.removed).collect(),
        Msg::Forward(f) => f.groups.iter().collect(),
        _ => Vec::new(),
    }
}
