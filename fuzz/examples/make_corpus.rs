//! Writes the seed corpora under `fuzz/corpus/<target>/`: real frames for every operation
//! of docs/protocol.md in JSON and in protobuf, peer frames built with the murmur-proto
//! types, and sealed gossip packets of every foca message kind.
//!
//! `fuzz/run.sh corpus` runs it; the files are committed, so it is only needed when the
//! protocol changes. Files are named by what they hold, so running it again rewrites the
//! same files (reproducers of fixed crashes, named `crash-*`, are left alone).

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes};
use foca::{Codec, Header, Incarnation, Member, Message, PostcardCodec, State};
use murmur::cluster::membership::NodeId;
use murmur::event::Payload;
use murmur::protocol::json;
use murmur_fuzz::{
    fuzz_cluster_key, receiver_identity, sender_identity, third_identity, to_json, to_protobuf,
};
use murmur_proto::client::v1 as client_pb;
use murmur_proto::cluster::v1 as pb;
use prost::Message as _;

/// Client frames from docs/protocol.md and the tests: every operation, every resume point,
/// and the refusals the protocol documents.
const JSON_FRAMES: &[(&str, &str)] = &[
    (
        "hello",
        r#"{"op":"hello","client":"my-app/1.2","token":"eyJhbGciOiJIUzI1NiJ9.e30.sig"}"#,
    ),
    (
        "hello-batch-true",
        r#"{"op":"hello","client":"dashboard","batch":true}"#,
    ),
    (
        "hello-batch-limits",
        r#"{"op":"hello","client":"dashboard","batch":{"max_events":100,"max_bytes":32768}}"#,
    ),
    ("hello-batch-false", r#"{"op":"hello","batch":false}"#),
    (
        "sub",
        r#"{"op":"sub","id":"s1","topic":"orders.*.created"}"#,
    ),
    (
        "sub-group",
        r#"{"op":"sub","id":"w1","topic":"jobs.>","group":"workers"}"#,
    ),
    (
        "sub-earliest",
        r#"{"op":"sub","id":"s2","topic":"chat.lobby","from":"earliest"}"#,
    ),
    (
        "sub-latest",
        r#"{"op":"sub","id":"s0","topic":"chat.lobby","from":"latest"}"#,
    ),
    (
        "sub-cursor",
        r#"{"op":"sub","id":"s3","topic":"chat.lobby","from":{"epoch":"19ab3f00000-0badcafe","seq":7}}"#,
    ),
    (
        "sub-topics",
        r#"{"op":"sub","id":"w","topic":"sensors.*","from":{"topics":{"sensors.a":{"epoch":"1a214c95cc7-075401e3","seq":2}},"since":1795645070840}}"#,
    ),
    (
        "sub-wildcard-one-cursor",
        r#"{"op":"sub","id":"s4","topic":"chat.*","from":{"epoch":"0123456789abcdef","seq":7}}"#,
    ),
    (
        "sub-empty-epoch",
        r#"{"op":"sub","id":"s5","topic":"chat.lobby","from":{"epoch":"","seq":7}}"#,
    ),
    (
        "sub-group-earliest",
        r#"{"op":"sub","id":"w2","topic":"jobs.>","group":"workers","from":"earliest"}"#,
    ),
    ("unsub", r#"{"op":"unsub","id":"s1"}"#),
    (
        "pub",
        r#"{"op":"pub","topic":"chat.lobby","data":{"text":"hi"},"ref":"p1"}"#,
    ),
    (
        "pub-array",
        r#"{"op":"pub","topic":"chat.lobby","data":[1,2,3]}"#,
    ),
    (
        "pub-string",
        r#"{"op":"pub","topic":"chat.lobby.extra","data":"chat.* does not match this","ref":"p2"}"#,
    ),
    ("pub-null", r#"{"op":"pub","topic":"a","data":null}"#),
    (
        "pub-nested",
        r#"{"op":"pub","topic":"jobs.build","data":{"job":42,"tags":["a","\u00e9\ud83d\ude00"],"x":-1.5e3,"ok":true},"ref":"p3"}"#,
    ),
    (
        "pub-wildcard",
        r#"{"op":"pub","topic":"chat.*","data":1,"ref":"p4"}"#,
    ),
    ("pub-no-data", r#"{"op":"pub","topic":"a","ref":"p1"}"#),
    ("ack", r#"{"op":"ack","delivery":"17"}"#),
    ("ping", r#"{"op":"ping","ref":"k1"}"#),
    ("ping-bare", r#"{"op":"ping"}"#),
    (
        "refresh",
        r#"{"op":"refresh","token":"eyJhbGciOiJIUzI1NiJ9.e30.sig","ref":"r1"}"#,
    ),
    ("unknown-op", r#"{"op":"launch","ref":"r1"}"#),
    ("no-op", r#"{"id":"x"}"#),
    ("truncated", r#"{"op":"sub","id":"s7""#),
    ("not-an-object", "[1,2]"),
    ("wrong-type", r#"{"op":"sub","id":"s2","topic":5}"#),
];

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    json_seeds(&root.join("json_request"))?;
    protobuf_seeds(&root.join("protobuf_request"))?;
    peer_seeds(&root.join("peer_frame"))?;
    gossip_seeds(&root.join("gossip_envelope"))?;
    Ok(())
}

fn dir(path: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(path)?;
    Ok(path.to_owned())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join(name), bytes)
}

fn json_seeds(path: &Path) -> std::io::Result<()> {
    let dir = dir(path)?;
    for (name, text) in JSON_FRAMES {
        write(&dir, name, text.as_bytes())?;
    }
    Ok(())
}

fn protobuf_seeds(path: &Path) -> std::io::Result<()> {
    let dir = dir(path)?;
    // Every request the JSON seeds decode to, in protobuf.
    for (name, text) in JSON_FRAMES {
        if let Ok(request) = json::decode(text) {
            write(&dir, name, &to_protobuf(&request))?;
            // The converse must hold too: the generator's encoders agree with the decoders.
            assert!(to_json(&request).is_some());
        }
    }
    let frame = |op| Bytes::from(client_pb::ClientFrame { op: Some(op) }.encode_to_vec());
    use client_pb::client_frame::Op;
    write(
        &dir,
        "pub-binary",
        &frame(Op::Pub(client_pb::Publish {
            topic: "mix.b".into(),
            data: Bytes::from_static(&[0, 1, 2, 0xfa]),
            encoding: client_pb::Encoding::Binary as i32,
            r#ref: Some("p9".into()),
            id: None,
        })),
    )?;
    write(
        &dir,
        "pub-bad-json",
        &frame(Op::Pub(client_pb::Publish {
            topic: "a.b".into(),
            data: Bytes::from_static(b"{nope"),
            encoding: client_pb::Encoding::Json as i32,
            r#ref: Some("p2".into()),
            id: None,
        })),
    )?;
    write(
        &dir,
        "pub-unknown-encoding",
        &frame(Op::Pub(client_pb::Publish {
            topic: "a".into(),
            data: Bytes::from_static(b"1"),
            encoding: 7,
            r#ref: None,
            id: None,
        })),
    )?;
    write(
        &dir,
        "sub-empty-group",
        &frame(Op::Sub(client_pb::Subscribe {
            id: "s".into(),
            topic: "a".into(),
            group: Some(String::new()),
            from: None,
        })),
    )?;
    write(
        &dir,
        "sub-unknown-start",
        &frame(Op::Sub(client_pb::Subscribe {
            id: "s".into(),
            topic: "a".into(),
            group: None,
            from: Some(client_pb::ResumeFrom {
                point: Some(client_pb::resume_from::Point::Start(5)),
            }),
        })),
    )?;
    write(&dir, "empty", &[])?;
    write(&dir, "garbage", &[0xff, 0xff, 0xff, 0xff])?;
    Ok(())
}

fn event(topic: &str, seq: u64, payload: Payload) -> pb::Event {
    let (data, encoding) = match payload {
        Payload::Json(b) => (b, pb::Encoding::Json),
        Payload::Binary(b) => (b, pb::Encoding::Binary),
    };
    pb::Event {
        topic: topic.into(),
        epoch: "1a214c935f5-06920cad".into(),
        seq,
        ts: 1_795_645_060_597,
        data,
        encoding: encoding as i32,
    }
}

fn peer_seeds(path: &Path) -> std::io::Result<()> {
    use pb::peer_frame::Msg;
    let dir = dir(path)?;
    let json_event = event(
        "chat.lobby",
        1,
        Payload::Json(Bytes::from_static(br#"{"text":"hi"}"#)),
    );
    let binary_event = event(
        "mix.b",
        2,
        Payload::Binary(Bytes::from_static(&[0, 1, 2, 0xfa])),
    );
    let interest = |pattern: &str, group: Option<&str>| pb::Interest {
        pattern: pattern.into(),
        group: group.map(str::to_owned),
    };
    let cursor = pb::Cursor {
        epoch: "19ab3f00000-0badcafe".into(),
        seq: 7,
    };
    let frames: Vec<(&str, Msg)> = vec![
        (
            "hello",
            Msg::Hello(pb::Hello {
                name: "n1".into(),
                generation: 1_795_000_000_000,
            }),
        ),
        (
            "snapshot",
            Msg::Snapshot(pb::InterestSnapshot {
                interests: vec![
                    interest("chat.*", None),
                    interest("jobs.>", Some("workers")),
                    interest(">", None),
                ],
            }),
        ),
        (
            "delta",
            Msg::Delta(pb::InterestDelta {
                added: vec![interest("orders.*.created", None)],
                removed: vec![interest("chat.*", None)],
            }),
        ),
        (
            "forward-plain",
            Msg::Forward(pb::Forward {
                event: Some(json_event.clone()),
                plain: true,
                ..Default::default()
            }),
        ),
        (
            "forward-groups",
            Msg::Forward(pb::Forward {
                event: Some(binary_event.clone()),
                plain: false,
                groups: vec![interest("mix.*", Some("g1")), interest(">", Some("g2"))],
                redelivered: true,
                group_tokens: vec![9, 10],
            }),
        ),
        (
            "leaving",
            Msg::Leaving(pb::Leaving {
                generation: 1_795_000_000_001,
            }),
        ),
        (
            "publish",
            Msg::Publish(pb::PublishRequest {
                id: 3,
                topic: "chat.lobby".into(),
                data: Bytes::from_static(b"[1,2,3]"),
                encoding: pb::Encoding::Json as i32,
                attempt: 1,
            }),
        ),
        (
            "published-ok",
            Msg::Published(pb::PublishReply {
                id: 3,
                result: Some(pb::publish_reply::Result::Ok(pb::Position {
                    epoch: "1a214c935f5-06920cad".into(),
                    seq: 1,
                })),
            }),
        ),
        (
            "published-not-owner",
            Msg::Published(pb::PublishReply {
                id: 4,
                result: Some(pb::publish_reply::Result::NotOwner("n2".into())),
            }),
        ),
        (
            "published-failed",
            Msg::Published(pb::PublishReply {
                id: 5,
                result: Some(pb::publish_reply::Result::Failed(pb::Failure {
                    code: "unavailable".into(),
                    message: "replicas unreachable".into(),
                })),
            }),
        ),
        (
            "replicate",
            Msg::Replicate(pb::Replicate {
                event: Some(json_event.clone()),
            }),
        ),
        (
            "stored",
            Msg::Stored(pb::Stored {
                topic: "chat.lobby".into(),
                epoch: "1a214c935f5-06920cad".into(),
                seq: 1,
            }),
        ),
        (
            "state-request",
            Msg::StateRequest(pb::TopicStateRequest {
                id: 6,
                topic: "chat.lobby".into(),
            }),
        ),
        (
            "state-reply",
            Msg::StateReply(pb::TopicStateReply {
                id: 6,
                found: true,
                epoch: "1a214c935f5-06920cad".into(),
                last_seq: 2,
                events: vec![json_event.clone(), binary_event.clone()],
                refused: false,
            }),
        ),
        (
            "replay-request-earliest",
            Msg::ReplayRequest(pb::ReplayRequest {
                id: 7,
                pattern: "chat.*".into(),
                from: Some(pb::replay_request::From::Earliest(true)),
                max_events: 1000,
                max_bytes: 1 << 20,
            }),
        ),
        (
            "replay-request-cursor",
            Msg::ReplayRequest(pb::ReplayRequest {
                id: 8,
                pattern: "chat.lobby".into(),
                from: Some(pb::replay_request::From::Cursor(cursor.clone())),
                max_events: 0,
                max_bytes: 0,
            }),
        ),
        (
            "replay-request-topics",
            Msg::ReplayRequest(pb::ReplayRequest {
                id: 9,
                pattern: "sensors.*".into(),
                from: Some(pb::replay_request::From::Topics(pb::TopicsCursor {
                    topics: [("sensors.a".to_owned(), cursor)].into_iter().collect(),
                    since: 1_795_645_070_840,
                })),
                max_events: 10,
                max_bytes: 4096,
            }),
        ),
        (
            "replay-reply",
            Msg::ReplayReply(pb::ReplayReply {
                id: 9,
                topics: vec![pb::TopicReplay {
                    more: true,
                    topic: "sensors.a".into(),
                    epoch: "1a214c95cc7-075401e3".into(),
                    last_seq: 3,
                    gaps: vec![pb::Gap {
                        topic: "sensors.a".into(),
                        epoch: "1a214c95cc7-075401e3".into(),
                        from_seq: 1,
                        to_seq: 1,
                        reason: "retention".into(),
                    }],
                    events: vec![event(
                        "sensors.a",
                        3,
                        Payload::Json(Bytes::from_static(b"\"a3\"")),
                    )],
                }],
            }),
        ),
        (
            "group-settled",
            Msg::GroupSettled(pb::GroupSettled {
                token: 9,
                acked: true,
            }),
        ),
        (
            "sync",
            Msg::Sync(pb::ReplicaSync {
                topic: "chat.lobby".into(),
                epoch: "1a214c935f5-06920cad".into(),
                last_seq: 1,
                events: vec![json_event],
            }),
        ),
    ];
    for (name, msg) in frames {
        let frame = pb::PeerFrame {
            version: pb::VERSION,
            msg: Some(msg),
        };
        write(&dir, name, &frame.encode_to_vec())?;
    }
    let future = pb::PeerFrame {
        version: 99,
        msg: Some(Msg::Leaving(pb::Leaving { generation: 1 })),
    };
    write(&dir, "future-version", &future.encode_to_vec())?;
    write(
        &dir,
        "no-msg",
        &pb::PeerFrame {
            version: pb::VERSION,
            msg: None,
        }
        .encode_to_vec(),
    )?;
    Ok(())
}

/// One foca packet from the sender to the receiver: the header, then (for the kinds that
/// carry them) a count and the member updates, as foca writes them.
fn foca_packet(message: Message<NodeId>, updates: &[Member<NodeId>]) -> Vec<u8> {
    let mut codec = PostcardCodec;
    let mut packet = Vec::new();
    let header = Header {
        src: sender_identity(),
        src_incarnation: 0,
        dst: receiver_identity(),
        message,
    };
    codec
        .encode_header(&header, &mut packet)
        .expect("a header encodes");
    if !updates.is_empty() {
        packet.put_u16(u16::try_from(updates.len()).expect("few updates"));
        for member in updates {
            codec
                .encode_member(member, &mut packet)
                .expect("a member encodes");
        }
    }
    packet
}

fn gossip_seeds(path: &Path) -> std::io::Result<()> {
    let dir = dir(path)?;
    let key = fuzz_cluster_key();
    let third = || third_identity();
    let incarnation: Incarnation = 3;
    let updates = [
        Member::alive(third()),
        Member::new(sender_identity(), incarnation, State::Alive),
        Member::new(third(), incarnation, State::Suspect),
    ];
    let down = [Member::down(third())];
    let packets: Vec<(&str, Vec<u8>)> = vec![
        ("announce", foca_packet(Message::Announce, &[])),
        ("feed", foca_packet(Message::Feed, &updates[..1])),
        ("ping", foca_packet(Message::Ping(1), &updates)),
        ("ack", foca_packet(Message::Ack(1), &updates[..2])),
        (
            "ping-req",
            foca_packet(
                Message::PingReq {
                    target: third(),
                    probe_number: 2,
                },
                &[],
            ),
        ),
        (
            "indirect-ping",
            foca_packet(
                Message::IndirectPing {
                    origin: third(),
                    probe_number: 3,
                },
                &[],
            ),
        ),
        (
            "indirect-ack",
            foca_packet(
                Message::IndirectAck {
                    target: third(),
                    probe_number: 3,
                },
                &[],
            ),
        ),
        (
            "forwarded-ack",
            foca_packet(
                Message::ForwardedAck {
                    origin: third(),
                    probe_number: 2,
                },
                &[],
            ),
        ),
        ("gossip", foca_packet(Message::Gossip, &updates)),
        ("gossip-down", foca_packet(Message::Gossip, &down)),
        ("broadcast", foca_packet(Message::Broadcast, &[])),
        ("turn-undead", foca_packet(Message::TurnUndead, &[])),
    ];
    // Each seed must get past foca's checks, or mutations of it would explore nothing.
    let mut foca = foca::Foca::new(
        receiver_identity(),
        murmur::cluster::gossip::foca_config(),
        <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7),
        PostcardCodec,
    );
    let mut runtime = foca::AccumulatingRuntime::new();
    for (name, payload) in packets {
        if let Err(err) = foca.handle_data(&payload, &mut runtime) {
            panic!("foca refuses the `{name}` seed: {err}");
        }
        write(&dir, name, &key.seal(&payload, seed_stamp(name)))?;
    }
    // A packet sealed with another key, and one too short to hold the envelope.
    let stranger = murmur::cluster::security::ClusterKey::derive(Some("not-the-fuzz-key"));
    write(
        &dir,
        "wrong-key",
        &stranger.seal(&foca_packet(Message::Ping(1), &[]), seed_stamp("wrong-key")),
    )?;
    write(&dir, "truncated", &[1, 0, 0])?;
    Ok(())
}

/// A fixed stamp per seed (a real send time, a nonce from the name), so the corpus is the
/// same every time it is made.
fn seed_stamp(name: &str) -> murmur::cluster::envelope::Stamp {
    murmur::cluster::envelope::Stamp {
        sent_at_ms: 1_796_600_000_000,
        nonce: name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }),
    }
}
