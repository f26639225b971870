//! Protobuf in WebSocket binary frames: `ClientFrame` in, `ServerFrame` out
//! (`proto/proto/murmur/client/v1/client.proto`).

use bytes::{BufMut, Bytes};
use murmur_proto::client::v1 as pb;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::{BatchRequest, Cursor, ErrorCode, Reply, Request, RequestError, ResumeFrom, Subscribe};
use crate::event::{Delivery, Event, Payload};

/// Field numbers of `ServerFrame.event` and of the per-subscriber `Event` fields, which
/// [`encode_event`] writes by hand around the shared body.
const SERVER_FRAME_EVENT: u32 = 2;
pub(super) const SERVER_FRAME_BATCH: u32 = 7;
const EVENT_BATCH_EVENTS: u32 = 1;
const EVENT_SUB: u32 = 1;
const EVENT_DELIVERY: u32 = 8;
const EVENT_REDELIVERED: u32 = 9;

/// Decodes one binary frame.
pub fn decode(frame: Bytes) -> Result<Request, RequestError> {
    let frame = pb::ClientFrame::decode(frame).map_err(|err| {
        RequestError::new(
            None,
            ErrorCode::InvalidProtobuf,
            format!("binary frame is not a murmur.client.v1.ClientFrame: {err}"),
        )
    })?;
    let Some(op) = frame.op else {
        return Err(RequestError::new(
            None,
            ErrorCode::UnknownOp,
            "binary frame carries no operation this node knows (ClientFrame.op is empty)",
        ));
    };
    match op {
        pb::client_frame::Op::Refresh(r) => match non_empty(r.token) {
            Some(token) => Ok(Request::Refresh {
                token,
                reference: r.r#ref,
            }),
            None => Err(RequestError::new(
                r.r#ref.as_deref(),
                ErrorCode::InvalidRequest,
                "`refresh` needs a non-empty `token`",
            )),
        },
        pb::client_frame::Op::Hello(h) => Ok(Request::Hello {
            client: non_empty(h.client),
            token: non_empty(h.token),
            batch: h.batch.map(|b| BatchRequest {
                max_events: (b.max_events > 0).then_some(b.max_events),
                max_bytes: (b.max_bytes > 0).then_some(b.max_bytes),
                compact: b.compact,
            }),
        }),
        pb::client_frame::Op::Sub(s) => {
            let id = required(s.id, None, "sub", "id")?;
            if s.group.as_deref() == Some("") {
                return Err(RequestError::new(
                    Some(&id),
                    ErrorCode::InvalidRequest,
                    "`group` must not be empty (leave it unset for a plain subscription)",
                ));
            }
            // An empty topic is a topic error, as in JSON: the validation names it.
            let topic = s.topic;
            let from = match s.from.and_then(|f| f.point) {
                None => ResumeFrom::Latest,
                Some(pb::resume_from::Point::Start(start)) => {
                    match pb::resume_from::Start::try_from(start) {
                        Ok(pb::resume_from::Start::Latest) => ResumeFrom::Latest,
                        Ok(pb::resume_from::Start::Earliest) => ResumeFrom::Earliest,
                        Err(_) => {
                            return Err(RequestError::new(
                                Some(&id),
                                ErrorCode::InvalidRequest,
                                format!("unknown ResumeFrom.start value {start}"),
                            ));
                        }
                    }
                }
                Some(pb::resume_from::Point::Cursor(c))
                    if !c.epoch.is_empty() && c.seq <= Cursor::MAX_SEQ =>
                {
                    ResumeFrom::Cursor(cursor(c))
                }
                Some(pb::resume_from::Point::Topics(t))
                    if t.topics
                        .values()
                        .all(|c| !c.epoch.is_empty() && c.seq <= Cursor::MAX_SEQ) =>
                {
                    ResumeFrom::Topics {
                        topics: t.topics.into_iter().map(|(k, c)| (k, cursor(c))).collect(),
                        since: t.since,
                    }
                }
                Some(_) => {
                    return Err(RequestError::new(
                        Some(&id),
                        ErrorCode::InvalidRequest,
                        format!(
                            "a cursor needs a non-empty epoch and a seq of at most {}",
                            Cursor::MAX_SEQ
                        ),
                    ));
                }
            };
            Ok(Request::Subscribe(Subscribe {
                id,
                topic,
                group: s.group,
                from,
            }))
        }
        pb::client_frame::Op::Unsub(u) => Ok(Request::Unsubscribe {
            id: required(u.id, None, "unsub", "id")?,
        }),
        pb::client_frame::Op::Pub(p) => {
            // A ref that is set is echoed, even empty, as in JSON.
            let reference = p.r#ref;
            let topic = p.topic;
            let payload = match pb::Encoding::try_from(p.encoding) {
                Ok(pb::Encoding::Binary) => Payload::Binary(p.data),
                Ok(pb::Encoding::Json) => match Payload::json(p.data) {
                    Ok(payload) => payload,
                    Err(err) => {
                        return Err(RequestError::new(
                            reference.as_deref(),
                            ErrorCode::InvalidRequest,
                            format!(
                                "`data` is not valid JSON but encoding is ENCODING_JSON: {err}"
                            ),
                        ));
                    }
                },
                Err(_) => {
                    return Err(RequestError::new(
                        reference.as_deref(),
                        ErrorCode::InvalidRequest,
                        format!("unknown encoding {}", p.encoding),
                    ));
                }
            };
            let id = super::publish_id(p.id, reference.as_deref())?;
            Ok(Request::Publish {
                topic,
                payload,
                reference,
                id,
            })
        }
        pb::client_frame::Op::Ack(a) => Ok(Request::Ack {
            delivery: required(a.delivery, None, "ack", "delivery")?,
        }),
        pb::client_frame::Op::Ping(p) => Ok(Request::Ping { reference: p.r#ref }),
    }
}

fn cursor(c: pb::Cursor) -> Cursor {
    Cursor {
        epoch: c.epoch,
        seq: c.seq,
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn required(
    value: String,
    reference: Option<&str>,
    op: &str,
    field: &str,
) -> Result<String, RequestError> {
    non_empty(value).ok_or_else(|| {
        RequestError::new(
            reference,
            ErrorCode::InvalidRequest,
            format!("`{op}` needs a non-empty `{field}`"),
        )
    })
}

/// Encodes every frame but `event`.
pub fn encode_reply(reply: &Reply<'_>) -> Bytes {
    let op = match reply {
        Reply::Welcome {
            node,
            session,
            limits,
            batch,
            user,
            expires_at_ms,
        } => pb::server_frame::Op::Welcome(pb::Welcome {
            user: user.map(str::to_owned),
            expires_at: *expires_at_ms,
            batch: batch.map(|b| pb::BatchLimits {
                max_events: b.max_events,
                max_bytes: b.max_bytes,
                compact: b.compact,
            }),
            node: (*node).to_owned(),
            session: (*session).to_owned(),
            limits: Some(pb::Limits {
                max_frame_bytes: limits.max_frame_bytes,
                max_subscriptions: limits.max_subscriptions,
                outbound_queue: limits.outbound_queue,
                ping_interval_ms: limits.ping_interval_ms,
                idle_timeout_ms: limits.idle_timeout_ms,
                max_topic_bytes: limits.max_topic_bytes,
            }),
        }),
        Reply::Ok {
            reference,
            position,
        } => pb::server_frame::Op::Ok(pb::Ok {
            r#ref: reference.map(str::to_owned),
            epoch: position.map(|(e, _)| e.to_owned()),
            seq: position.map(|(_, s)| s),
            expires_at: None,
        }),
        Reply::Refreshed {
            reference,
            expires_at_ms,
        } => pb::server_frame::Op::Ok(pb::Ok {
            r#ref: reference.map(str::to_owned),
            epoch: None,
            seq: None,
            expires_at: *expires_at_ms,
        }),
        Reply::Expiring { in_ms } => pb::server_frame::Op::Expiring(pb::Expiring { in_ms: *in_ms }),
        Reply::Gap {
            sub,
            topic,
            epoch,
            from_seq,
            to_seq,
            reason,
        } => pb::server_frame::Op::Gap(pb::Gap {
            sub: (*sub).to_owned(),
            topic: (*topic).to_owned(),
            epoch: (*epoch).to_owned(),
            from_seq: *from_seq,
            to_seq: *to_seq,
            reason: (*reason).to_owned(),
        }),
        Reply::Error {
            reference,
            code,
            message,
        } => pb::server_frame::Op::Error(pb::Error {
            r#ref: reference.map(str::to_owned),
            code: code.as_str().to_owned(),
            message: (*message).to_owned(),
        }),
        Reply::Pong { reference } => pb::server_frame::Op::Pong(pb::Pong {
            r#ref: reference.map(str::to_owned),
        }),
    };
    Bytes::from(pb::ServerFrame { op: Some(op) }.encode_to_vec())
}

/// Encodes one `ServerFrame { event }` for one subscription.
///
/// Protobuf lets a message's fields come in any order, so the fields every subscriber shares
/// are encoded once per event (`Event::proto_body`) and the subscriber's own `sub` and
/// delivery fields are written around them.
pub fn encode_event(sub: &str, event: &Event, delivery: Option<&Delivery>) -> Bytes {
    let mut out = Vec::new();
    append_event(&mut out, SERVER_FRAME_EVENT, sub, event, delivery);
    Bytes::from(out)
}

/// Appends one `Event` for one subscription as field `field` (length-delimited) of the
/// message being written to `out`.
fn append_event(
    out: &mut Vec<u8>,
    field: u32,
    sub: &str,
    event: &Event,
    delivery: Option<&Delivery>,
) {
    let body = event.proto_body.get_or_init(|| event_body(event));
    let delivery_id = delivery.map(|d| d.id.to_string());
    let mut own_len = 1 + encoded_len_varint(sub.len() as u64) + sub.len();
    if let (Some(d), Some(id)) = (delivery, &delivery_id) {
        own_len += 1 + encoded_len_varint(id.len() as u64) + id.len();
        if d.redelivered {
            own_len += 2;
        }
    }
    let inner_len = own_len + body.len();
    out.reserve(inner_len + 1 + encoded_len_varint(inner_len as u64));
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(inner_len as u64, out);
    encode_key(EVENT_SUB, WireType::LengthDelimited, out);
    encode_varint(sub.len() as u64, out);
    out.put_slice(sub.as_bytes());
    if let (Some(d), Some(id)) = (delivery, &delivery_id) {
        encode_key(EVENT_DELIVERY, WireType::LengthDelimited, out);
        encode_varint(id.len() as u64, out);
        out.put_slice(id.as_bytes());
        if d.redelivered {
            prost::encoding::bool::encode(EVENT_REDELIVERED, &true, out);
        }
    }
    out.put_slice(body);
}

/// Builds one `ServerFrame { batch }`: events are appended as they come, and the frame's
/// header, whose length is known only at the end, is written into room kept in front.
#[derive(Debug)]
pub struct BatchFrame {
    buf: Vec<u8>,
}

/// The room kept for the `ServerFrame.batch` key and length.
pub(super) const BATCH_HEADER_ROOM: usize = 1 + 10;

impl BatchFrame {
    pub fn new() -> Self {
        Self {
            buf: vec![0; BATCH_HEADER_ROOM],
        }
    }

    /// Bytes of the frame so far (with the most the header can take).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.len() == BATCH_HEADER_ROOM
    }

    pub fn push(&mut self, sub: &str, event: &Event, delivery: Option<&Delivery>) {
        append_event(&mut self.buf, EVENT_BATCH_EVENTS, sub, event, delivery);
    }

    /// Takes back the bytes after `len` (an earlier [`len`](Self::len)).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len.max(BATCH_HEADER_ROOM));
    }

    pub fn finish(self) -> Bytes {
        finish_batch(self.buf)
    }
}

/// Completes a batch frame built after [`BATCH_HEADER_ROOM`] zero bytes: its field key and
/// length go right before the body, and the frame starts where they do (no copy of the body).
pub(super) fn finish_batch(mut buf: Vec<u8>) -> Bytes {
    let inner_len = (buf.len() - BATCH_HEADER_ROOM) as u64;
    let mut header = Vec::with_capacity(BATCH_HEADER_ROOM);
    encode_key(SERVER_FRAME_BATCH, WireType::LengthDelimited, &mut header);
    encode_varint(inner_len, &mut header);
    let start = BATCH_HEADER_ROOM - header.len();
    buf[start..BATCH_HEADER_ROOM].copy_from_slice(&header);
    Bytes::from(buf).slice(start..)
}

impl Default for BatchFrame {
    fn default() -> Self {
        Self::new()
    }
}

fn event_body(event: &Event) -> Bytes {
    let (data, encoding) = match &event.payload {
        Payload::Json(b) => (b.clone(), pb::Encoding::Json),
        Payload::Binary(b) => (b.clone(), pb::Encoding::Binary),
    };
    let message = pb::Event {
        sub: String::new(),
        topic: event.topic.to_string(),
        epoch: event.epoch.to_string(),
        seq: event.seq,
        data,
        encoding: encoding as i32,
        ts: event.ts,
        delivery: None,
        redelivered: false,
    };
    Bytes::from(message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn frame(op: pb::client_frame::Op) -> Bytes {
        Bytes::from(pb::ClientFrame { op: Some(op) }.encode_to_vec())
    }

    #[test]
    fn event_frames_decode_as_server_frames() {
        let event = Event::new(
            Arc::from("chat.lobby"),
            Arc::from("e1"),
            9,
            42,
            Payload::Binary(Bytes::from_static(b"\x00raw")),
        );
        for delivery in [
            None,
            Some(Delivery {
                id: 5,
                redelivered: false,
                origin: None,
            }),
            Some(Delivery {
                id: 6,
                redelivered: true,
                origin: None,
            }),
        ] {
            let bytes = encode_event("sub-1", &event, delivery.as_ref());
            let decoded = pb::ServerFrame::decode(bytes).unwrap();
            let Some(pb::server_frame::Op::Event(e)) = decoded.op else {
                panic!("not an event frame")
            };
            assert_eq!(e.sub, "sub-1");
            assert_eq!(e.topic, "chat.lobby");
            assert_eq!(e.epoch, "e1");
            assert_eq!(e.seq, 9);
            assert_eq!(e.ts, 42);
            assert_eq!(&e.data[..], b"\x00raw");
            assert_eq!(e.encoding, pb::Encoding::Binary as i32);
            assert_eq!(e.delivery, delivery.as_ref().map(|d| d.id.to_string()));
            assert_eq!(
                e.redelivered,
                delivery.as_ref().is_some_and(|d| d.redelivered)
            );
        }
    }

    #[test]
    fn decodes_requests_and_refuses_garbage() {
        let request = decode(frame(pb::client_frame::Op::Pub(pb::Publish {
            topic: "a.b".into(),
            data: Bytes::from_static(b"[1]"),
            encoding: pb::Encoding::Json as i32,
            r#ref: Some("p1".into()),
            id: Some("k1".into()),
        })))
        .unwrap();
        assert!(matches!(&request, Request::Publish { id: Some(id), .. } if id == "k1"));
        assert_eq!(request.reference(), Some("p1"));

        let bad_json = decode(frame(pb::client_frame::Op::Pub(pb::Publish {
            topic: "a.b".into(),
            data: Bytes::from_static(b"{nope"),
            encoding: pb::Encoding::Json as i32,
            r#ref: Some("p2".into()),
            id: None,
        })))
        .unwrap_err();
        assert_eq!(bad_json.code, ErrorCode::InvalidRequest);
        assert_eq!(bad_json.reference.as_deref(), Some("p2"));

        // Found by fuzzing (fuzz/corpus/protobuf_request/crash-json-string-not-utf8): the
        // JSON check let a string of invalid UTF-8 through, and JSON subscribers got `null`.
        let not_utf8 = decode(frame(pb::client_frame::Op::Pub(pb::Publish {
            topic: "a.b".into(),
            data: Bytes::from_static(b"\"hi \xe0\x88 there\""),
            encoding: pb::Encoding::Json as i32,
            r#ref: Some("p3".into()),
            id: None,
        })))
        .unwrap_err();
        assert_eq!(not_utf8.code, ErrorCode::InvalidRequest);
        assert_eq!(not_utf8.reference.as_deref(), Some("p3"));
        assert!(not_utf8.message.contains("UTF-8"), "{}", not_utf8.message);

        let garbage = decode(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).unwrap_err();
        assert_eq!(garbage.code, ErrorCode::InvalidProtobuf);
        let empty = decode(Bytes::new()).unwrap_err();
        assert_eq!(empty.code, ErrorCode::UnknownOp);
        let no_id = decode(frame(pb::client_frame::Op::Sub(pb::Subscribe::default()))).unwrap_err();
        assert_eq!(no_id.code, ErrorCode::InvalidRequest);
    }
}
