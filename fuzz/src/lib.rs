//! What the fuzz targets and the seed generator share: encoders that turn a decoded client
//! [`Request`] back into a frame (the node only ever decodes requests, so the round-trip
//! checks need their own), and the fixed identities of the gossip target.

use std::net::SocketAddr;

use bytes::Bytes;
use murmur::cluster::membership::NodeId;
use murmur::cluster::security::ClusterKey;
use murmur::event::Payload;
use murmur::protocol::{Request, ResumeFrom};
use murmur_proto::client::v1 as pb;
use prost::Message;
use serde_json::{Map, Value};

/// The cluster key the gossip target's packets are sealed with (seeds and target agree).
pub const FUZZ_CLUSTER_KEY: &str = "murmur-fuzz-cluster-key-for-sealed-seed-packets";

pub fn fuzz_cluster_key() -> ClusterKey {
    ClusterKey::derive(Some(FUZZ_CLUSTER_KEY))
}

/// The node the gossip target plays: every seed packet is addressed to it.
pub fn receiver_identity() -> NodeId {
    node_id("fuzz-receiver", 7401)
}

/// The node the seed packets come from.
pub fn sender_identity() -> NodeId {
    node_id("fuzz-sender", 7411)
}

/// A third member the sender knows about, so that seed packets carry member updates.
pub fn third_identity() -> NodeId {
    node_id("fuzz-third", 7421)
}

fn node_id(name: &str, gossip_port: u16) -> NodeId {
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    NodeId {
        name: name.to_owned(),
        generation: 1_795_000_000_000,
        gossip: at(gossip_port),
        quic: at(gossip_port + 1),
        listen: at(gossip_port - 1),
    }
}

/// `request` as a JSON text frame, or `None` when JSON cannot say it (a binary payload, or
/// JSON payload bytes that are not UTF-8 text).
pub fn to_json(request: &Request) -> Option<String> {
    let mut object = Map::new();
    let mut put = |key: &str, value: Value| {
        object.insert(key.to_owned(), value);
    };
    let mut raw_data = None;
    match request {
        Request::Hello {
            client,
            token,
            batch,
        } => {
            put("op", "hello".into());
            if let Some(client) = client {
                put("client", client.as_str().into());
            }
            if let Some(token) = token {
                put("token", token.as_str().into());
            }
            if let Some(batch) = batch {
                let mut limits = Map::new();
                if let Some(n) = batch.max_events {
                    limits.insert("max_events".into(), n.into());
                }
                if let Some(n) = batch.max_bytes {
                    limits.insert("max_bytes".into(), n.into());
                }
                if batch.compact {
                    limits.insert("compact".into(), true.into());
                }
                put("batch", Value::Object(limits));
            }
        }
        Request::Subscribe(sub) => {
            put("op", "sub".into());
            put("id", sub.id.as_str().into());
            put("topic", sub.topic.as_str().into());
            if let Some(group) = &sub.group {
                put("group", group.as_str().into());
            }
            match &sub.from {
                ResumeFrom::Latest => {}
                ResumeFrom::Earliest => put("from", "earliest".into()),
                ResumeFrom::Cursor(c) => {
                    put("from", serde_json::json!({"epoch": c.epoch, "seq": c.seq}))
                }
                ResumeFrom::Topics { topics, since } => {
                    let cursors: Map<String, Value> = topics
                        .iter()
                        .map(|(t, c)| {
                            (
                                t.clone(),
                                serde_json::json!({"epoch": c.epoch, "seq": c.seq}),
                            )
                        })
                        .collect();
                    put(
                        "from",
                        serde_json::json!({"topics": cursors, "since": since}),
                    );
                }
            }
        }
        Request::Unsubscribe { id } => {
            put("op", "unsub".into());
            put("id", id.as_str().into());
        }
        Request::Publish {
            topic,
            payload,
            reference,
            id,
        } => {
            put("op", "pub".into());
            put("topic", topic.as_str().into());
            if let Some(reference) = reference {
                put("ref", reference.as_str().into());
            }
            if let Some(id) = id {
                put("id", id.as_str().into());
            }
            match payload {
                Payload::Json(text) => raw_data = Some(std::str::from_utf8(text).ok()?),
                Payload::Binary(_) => return None,
            }
        }
        Request::Ack { delivery } => {
            put("op", "ack".into());
            put("delivery", delivery.as_str().into());
        }
        Request::Ping { reference } => {
            put("op", "ping".into());
            if let Some(reference) = reference {
                put("ref", reference.as_str().into());
            }
        }
        Request::Refresh { token, reference } => {
            put("op", "refresh".into());
            put("token", token.as_str().into());
            if let Some(reference) = reference {
                put("ref", reference.as_str().into());
            }
        }
    }
    let mut text = Value::Object(object).to_string();
    if let Some(data) = raw_data {
        // The payload goes in as the text it was, as the node keeps it.
        text.pop();
        text.push_str(",\"data\":");
        text.push_str(data);
        text.push('}');
    }
    Some(text)
}

/// `request` as a protobuf binary frame (`ClientFrame`).
pub fn to_protobuf(request: &Request) -> Bytes {
    use pb::client_frame::Op;
    let op = match request {
        Request::Hello {
            client,
            token,
            batch,
        } => Op::Hello(pb::Hello {
            client: client.clone().unwrap_or_default(),
            token: token.clone().unwrap_or_default(),
            batch: batch.map(|b| pb::BatchLimits {
                max_events: b.max_events.unwrap_or(0),
                max_bytes: b.max_bytes.unwrap_or(0),
                compact: b.compact,
            }),
        }),
        Request::Subscribe(sub) => {
            use pb::resume_from::{Point, Start};
            let point = match &sub.from {
                ResumeFrom::Latest => None,
                ResumeFrom::Earliest => Some(Point::Start(Start::Earliest as i32)),
                ResumeFrom::Cursor(c) => Some(Point::Cursor(pb::Cursor {
                    epoch: c.epoch.clone(),
                    seq: c.seq,
                })),
                ResumeFrom::Topics { topics, since } => Some(Point::Topics(pb::TopicsCursor {
                    topics: topics
                        .iter()
                        .map(|(t, c)| {
                            (
                                t.clone(),
                                pb::Cursor {
                                    epoch: c.epoch.clone(),
                                    seq: c.seq,
                                },
                            )
                        })
                        .collect(),
                    since: *since,
                })),
            };
            Op::Sub(pb::Subscribe {
                id: sub.id.clone(),
                topic: sub.topic.clone(),
                group: sub.group.clone(),
                from: point.map(|point| pb::ResumeFrom { point: Some(point) }),
            })
        }
        Request::Unsubscribe { id } => Op::Unsub(pb::Unsubscribe { id: id.clone() }),
        Request::Publish {
            topic,
            payload,
            reference,
            id,
        } => {
            let (data, encoding) = match payload {
                Payload::Json(b) => (b.clone(), pb::Encoding::Json),
                Payload::Binary(b) => (b.clone(), pb::Encoding::Binary),
            };
            Op::Pub(pb::Publish {
                topic: topic.clone(),
                data,
                encoding: encoding as i32,
                r#ref: reference.clone(),
                id: id.clone(),
            })
        }
        Request::Ack { delivery } => Op::Ack(pb::Ack {
            delivery: delivery.clone(),
        }),
        Request::Ping { reference } => Op::Ping(pb::Ping {
            r#ref: reference.clone(),
        }),
        Request::Refresh { token, reference } => Op::Refresh(pb::Refresh {
            token: token.clone(),
            r#ref: reference.clone(),
        }),
    };
    Bytes::from(pb::ClientFrame { op: Some(op) }.encode_to_vec())
}

/// What a request reads as once it went through the other format, for the differences the
/// protocol documents: protobuf has no "set but empty" `client` or `token` in `hello`.
pub fn normalized(request: &Request) -> Request {
    let mut request = request.clone();
    if let Request::Hello { client, token, .. } = &mut request {
        client.take_if(|c| c.is_empty());
        token.take_if(|t| t.is_empty());
    }
    request
}

/// True when the payload is JSON text a JSON client can be sent as it is: UTF-8 (RFC 8259
/// requires it) and one JSON value.
pub fn is_json_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes)
        .is_ok_and(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok())
}
