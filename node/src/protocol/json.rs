//! JSON in WebSocket text frames: one object per frame, `op` names the operation.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{BatchRequest, Cursor, ErrorCode, Reply, Request, RequestError, ResumeFrom, Subscribe};
use crate::event::{Delivery, Event, Payload};

/// The fields of every client frame; which are required depends on `op`.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    id: Option<String>,
    topic: Option<String>,
    group: Option<String>,
    from: Option<Value>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    delivery: Option<String>,
    client: Option<String>,
    token: Option<String>,
    batch: Option<Value>,
}

/// Keeps an explicit `null` as a value (`Some("null")`) rather than as an absent field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Request, RequestError> {
    let frame: RawFrame<'_> = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(err) => return Err(explain_unreadable(text, &err)),
    };
    let Some(op) = frame.op.as_deref() else {
        let reference = frame.reference.as_deref().or(frame.id.as_deref());
        return Err(RequestError::new(
            reference,
            ErrorCode::InvalidRequest,
            "missing field `op`",
        ));
    };
    match op {
        "hello" => Ok(Request::Hello {
            client: frame.client,
            token: frame.token,
            batch: frame
                .batch
                .map(parse_batch)
                .transpose()
                .map_err(|m| RequestError::new(None, ErrorCode::InvalidRequest, m))?
                .flatten(),
        }),
        "sub" => {
            let id = required(frame.id, None, "sub", "id")?;
            let topic = present_field(frame.topic, Some(&id), "sub", "topic")?;
            let from = match frame.from {
                None => ResumeFrom::Latest,
                Some(value) => parse_from(value)
                    .map_err(|m| RequestError::new(Some(&id), ErrorCode::InvalidRequest, m))?,
            };
            Ok(Request::Subscribe(Subscribe {
                id,
                topic,
                group: frame.group,
                from,
            }))
        }
        "unsub" => Ok(Request::Unsubscribe {
            id: required(frame.id, None, "unsub", "id")?,
        }),
        "pub" => {
            let reference = frame.reference;
            let topic = present_field(frame.topic, reference.as_deref(), "pub", "topic")?;
            let Some(data) = frame.data else {
                return Err(RequestError::new(
                    reference.as_deref(),
                    ErrorCode::InvalidRequest,
                    "`pub` needs field `data` (any JSON value)",
                ));
            };
            let payload = Payload::Json(Bytes::copy_from_slice(data.get().as_bytes()));
            let id = super::publish_id(frame.id, reference.as_deref())?;
            Ok(Request::Publish {
                topic,
                payload,
                reference,
                id,
            })
        }
        "ack" => Ok(Request::Ack {
            delivery: required(frame.delivery, None, "ack", "delivery")?,
        }),
        "ping" => Ok(Request::Ping {
            reference: frame.reference,
        }),
        "refresh" => Ok(Request::Refresh {
            token: required(frame.token, frame.reference.as_deref(), "refresh", "token")?,
            reference: frame.reference,
        }),
        other => Err(RequestError::new(
            frame.reference.as_deref().or(frame.id.as_deref()),
            ErrorCode::UnknownOp,
            format!("unknown op `{other}` (expected hello, sub, unsub, pub, ack, ping or refresh)"),
        )),
    }
}

/// A field that must be there; its value (an empty topic, say) is checked later.
fn present_field(
    value: Option<String>,
    reference: Option<&str>,
    op: &str,
    field: &str,
) -> Result<String, RequestError> {
    value.ok_or_else(|| {
        RequestError::new(
            reference,
            ErrorCode::InvalidRequest,
            format!("`{op}` needs field `{field}`"),
        )
    })
}

fn required(
    value: Option<String>,
    reference: Option<&str>,
    op: &str,
    field: &str,
) -> Result<String, RequestError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(RequestError::new(
            reference,
            ErrorCode::InvalidRequest,
            format!("`{op}` field `{field}` must not be empty"),
        )),
        None => Err(RequestError::new(
            reference,
            ErrorCode::InvalidRequest,
            format!("`{op}` needs field `{field}`"),
        )),
    }
}

/// A frame that did not fit [`RawFrame`]: say whether it is JSON at all, and name the request
/// it came from when a `ref` or `id` can still be read.
fn explain_unreadable(text: &str, err: &serde_json::Error) -> RequestError {
    match serde_json::from_str::<Value>(text) {
        Err(_) => RequestError::new(None, ErrorCode::InvalidJson, format!("invalid JSON: {err}")),
        Ok(Value::Object(map)) => {
            let op = map.get("op").and_then(Value::as_str);
            let key = match op {
                Some("sub" | "unsub") => "id",
                Some("ack") => "delivery",
                _ => "ref",
            };
            let reference = map
                .get(key)
                .or_else(|| map.get("ref"))
                .and_then(Value::as_str);
            RequestError::new(
                reference,
                ErrorCode::InvalidRequest,
                format!("invalid request: {err}"),
            )
        }
        Ok(_) => RequestError::new(
            None,
            ErrorCode::InvalidRequest,
            "a frame must be a JSON object with an `op` field",
        ),
    }
}

fn parse_from(value: Value) -> Result<ResumeFrom, String> {
    match value {
        Value::String(s) if s == "latest" => Ok(ResumeFrom::Latest),
        Value::String(s) if s == "earliest" => Ok(ResumeFrom::Earliest),
        Value::Object(map) if map.contains_key("topics") => {
            let topics = match map.get("topics") {
                Some(Value::Object(topics)) => topics
                    .iter()
                    .map(|(topic, cursor)| parse_cursor(cursor).map(|c| (topic.clone(), c)))
                    .collect::<Result<BTreeMap<_, _>, _>>()?,
                _ => return Err("`from.topics` must be an object of topic → cursor".into()),
            };
            let since = match map.get("since") {
                None => 0,
                Some(v) => v
                    .as_i64()
                    .ok_or("`from.since` must be a timestamp in ms (an integer)")?,
            };
            Ok(ResumeFrom::Topics { topics, since })
        }
        Value::Object(_) => parse_cursor(&value).map(ResumeFrom::Cursor),
        _ => Err(
            "`from` must be \"latest\", \"earliest\", {\"epoch\",\"seq\"} or {\"topics\",\"since\"}"
                .into(),
        ),
    }
}

/// `"batch": true | false | {"max_events": N, "max_bytes": N, "compact": bool}` (each
/// optional).
fn parse_batch(value: Value) -> Result<Option<BatchRequest>, String> {
    const USAGE: &str = "`batch` is true, false, or {\"max_events\": positive integer, \"max_bytes\": positive integer, \"compact\": true or false}";
    let bound = |value: &Value, key: &str| -> Result<Option<u32>, String> {
        match value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| Some(u32::try_from(n).unwrap_or(u32::MAX)))
                .ok_or_else(|| USAGE.to_owned()),
        }
    };
    let known = |k: &String| k == "max_events" || k == "max_bytes" || k == "compact";
    match &value {
        Value::Bool(false) | Value::Null => Ok(None),
        Value::Bool(true) => Ok(Some(BatchRequest::default())),
        Value::Object(map) if map.keys().all(known) => {
            let compact = match map.get("compact") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(USAGE.to_owned()),
            };
            Ok(Some(BatchRequest {
                max_events: bound(&value, "max_events")?,
                max_bytes: bound(&value, "max_bytes")?,
                compact,
            }))
        }
        _ => Err(USAGE.to_owned()),
    }
}

fn parse_cursor(value: &Value) -> Result<Cursor, String> {
    let epoch = value.get("epoch").and_then(Value::as_str);
    let seq = value.get("seq").and_then(Value::as_u64);
    match (epoch, seq) {
        (Some(epoch), Some(seq)) if !epoch.is_empty() && seq <= Cursor::MAX_SEQ => Ok(Cursor {
            epoch: epoch.to_owned(),
            seq,
        }),
        _ => Err(format!(
            "a cursor is {{\"epoch\": non-empty string, \"seq\": integer from 0 to {}}}",
            Cursor::MAX_SEQ
        )),
    }
}

/// Encodes every frame but `event`.
pub fn encode_reply(reply: &Reply<'_>) -> String {
    let value = match reply {
        Reply::Welcome {
            node,
            session,
            limits,
            batch,
            user,
            expires_at_ms,
        } => {
            let mut v = serde_json::json!({
                "op": "welcome",
                "node": node,
                "session": session,
                "limits": {
                    "max_frame_bytes": limits.max_frame_bytes,
                    "max_subscriptions": limits.max_subscriptions,
                    "outbound_queue": limits.outbound_queue,
                    "ping_interval_ms": limits.ping_interval_ms,
                    "idle_timeout_ms": limits.idle_timeout_ms,
                    "max_topic_bytes": limits.max_topic_bytes,
                },
            });
            if let Some(b) = batch {
                v["batch"] =
                    serde_json::json!({"max_events": b.max_events, "max_bytes": b.max_bytes});
                if b.compact {
                    v["batch"]["compact"] = Value::Bool(true);
                }
            }
            if let Some(user) = user {
                v["user"] = Value::from(*user);
            }
            if let Some(at) = expires_at_ms {
                v["expires_at"] = Value::from(*at);
            }
            v
        }
        Reply::Refreshed {
            reference,
            expires_at_ms,
        } => {
            let mut v = serde_json::json!({"op": "ok"});
            if let Some(r) = reference {
                v["ref"] = Value::from(*r);
            }
            if let Some(at) = expires_at_ms {
                v["expires_at"] = Value::from(*at);
            }
            v
        }
        Reply::Expiring { in_ms } => serde_json::json!({"op": "expiring", "in_ms": in_ms}),
        Reply::Ok {
            reference,
            position,
        } => {
            let mut v = serde_json::json!({"op": "ok"});
            if let Some(r) = reference {
                v["ref"] = Value::from(*r);
            }
            if let Some((epoch, seq)) = position {
                v["epoch"] = Value::from(*epoch);
                v["seq"] = Value::from(*seq);
            }
            v
        }
        Reply::Gap {
            sub,
            topic,
            epoch,
            from_seq,
            to_seq,
            reason,
        } => serde_json::json!({
            "op": "gap",
            "sub": sub,
            "topic": topic,
            "epoch": epoch,
            "from_seq": from_seq,
            "to_seq": to_seq,
            "reason": reason,
        }),
        Reply::Error {
            reference,
            code,
            message,
        } => {
            let mut v =
                serde_json::json!({"op": "error", "code": code.as_str(), "message": message});
            if let Some(r) = reference {
                v["ref"] = Value::from(*r);
            }
            v
        }
        Reply::Pong { reference } => {
            let mut v = serde_json::json!({"op": "pong"});
            if let Some(r) = reference {
                v["ref"] = Value::from(*r);
            }
            v
        }
    };
    value.to_string()
}

/// Encodes one `event` frame for one subscription. The part after `sub` is shared by all
/// subscribers and computed once per event.
pub fn encode_event(sub: &str, event: &Event, delivery: Option<&Delivery>) -> String {
    let tail = event.json_tail.get_or_init(|| event_tail(event));
    // The exact size in the usual case (a plain event, an id without escapes), so the frame
    // becomes `Bytes` without another allocation; queue deliveries get room to spare.
    let exact = EVENT_START.len() + sub.len() + 2 + tail.len() + 1;
    let spare = if delivery.is_some() || !is_plain_json_string(sub) {
        64
    } else {
        0
    };
    let mut out = String::with_capacity(exact + spare);
    append_event(&mut out, sub, event, delivery);
    out
}

/// Appends `event` to `out` as a JSON object without `op` and `sub` — `{"topic":…,"epoch":…,
/// "seq":…,"data":…,"ts":…}`, with `"encoding":"base64"` for binary data — the form the HTTP
/// API's history returns. The fields are the shared part of every `event` frame.
pub fn append_event_object(out: &mut String, event: &Event) {
    let tail = event.json_tail.get_or_init(|| event_tail(event));
    // The tail starts with the comma that follows `sub` in a frame.
    out.reserve(tail.len() + 1);
    out.push('{');
    out.push_str(tail.strip_prefix(',').unwrap_or(tail));
    out.push('}');
}

/// Appends one `event` object (as [`encode_event`] writes it) to `out`.
pub fn append_event(out: &mut String, sub: &str, event: &Event, delivery: Option<&Delivery>) {
    let tail = event.json_tail.get_or_init(|| event_tail(event));
    // Exactly what a plain event with a plain id takes (the quotes, the closing brace), the
    // size `encode_event` allocates: asking for more here reallocated every event frame.
    out.reserve(EVENT_START.len() + sub.len() + 2 + tail.len() + 1);
    out.push_str(EVENT_START);
    write_json_string(out, sub);
    out.push_str(tail);
    if let Some(d) = delivery {
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            r#","delivery":"{}","redelivered":{}"#,
            d.id, d.redelivered
        );
    }
    out.push('}');
}

const EVENT_START: &str = r#"{"op":"event","sub":"#;

/// The JSON value of an event's `data` as every frame writes it (JSON text as published, or
/// a base64 string for binary data): a slice of the event's shared encoding, so a compact
/// batch copies it without checking or encoding the payload again per subscriber.
pub fn data_value(event: &Event) -> &str {
    let tail = event.json_tail.get_or_init(|| event_tail(event));
    // The tail ends with `"data":<data>[,"encoding":"base64"],"ts":<ts>`.
    let (data_len, after) = match &event.payload {
        Payload::Json(text) => (text.len(), 0),
        Payload::Binary(bytes) => (
            base64::encoded_len(bytes.len(), true).unwrap_or(0) + 2,
            BASE64_MARK.len(),
        ),
    };
    let end = tail
        .len()
        .saturating_sub(TS_KEY.len() + decimal_len(event.ts) + after);
    tail.get(end.saturating_sub(data_len)..end)
        .unwrap_or("null")
}

const TS_KEY: &str = r#","ts":"#;
const BASE64_MARK: &str = r#","encoding":"base64""#;

/// Digits (and sign) of `n` written in decimal.
pub fn decimal_len(n: i64) -> usize {
    let sign = usize::from(n < 0);
    let mut magnitude = n.unsigned_abs();
    let mut digits = 1;
    while magnitude >= 10 {
        magnitude /= 10;
        digits += 1;
    }
    sign + digits
}

/// The start of a `batch` frame; events follow, separated by [`BATCH_SEPARATOR`], and
/// [`BATCH_END`] closes it.
pub const BATCH_START: &str = r#"{"op":"batch","events":["#;
pub const BATCH_SEPARATOR: char = ',';
pub const BATCH_END: &str = "]}";

/// Text, so that each subscriber's frame is put together without checking its UTF-8 again.
fn event_tail(event: &Event) -> Box<str> {
    let mut out = String::with_capacity(event.payload.len() + event.topic.len() + 96);
    out.push_str(r#","topic":"#);
    write_json_string(&mut out, &event.topic);
    out.push_str(r#","epoch":"#);
    write_json_string(&mut out, &event.epoch);
    let _ = write!(out, r#","seq":{},"data":"#, event.seq);
    match &event.payload {
        // Validated JSON text when it was accepted; checked once more here, once per event.
        Payload::Json(text) => out.push_str(std::str::from_utf8(text).unwrap_or("null")),
        Payload::Binary(bytes) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut out);
            out.push('"');
            out.push_str(BASE64_MARK);
        }
    }
    let _ = write!(out, "{TS_KEY}{}", event.ts);
    out.into_boxed_str()
}

/// True when `s` is written in JSON as it is, between quotes.
pub(super) fn is_plain_json_string(s: &str) -> bool {
    s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
}

pub(super) fn write_json_string(out: &mut String, s: &str) {
    // Ids and topics rarely need escaping: copy those as they are.
    if is_plain_json_string(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // Serializing a str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn err(text: &str) -> RequestError {
        decode(text).unwrap_err()
    }

    #[test]
    fn decodes_every_op() {
        assert_eq!(
            decode(r#"{"op":"hello","client":"cli"}"#).unwrap(),
            Request::Hello {
                client: Some("cli".into()),
                token: None,
                batch: None
            }
        );
        assert_eq!(
            decode(r#"{"op":"sub","id":"s1","topic":"chat.*","group":"g"}"#).unwrap(),
            Request::Subscribe(Subscribe {
                id: "s1".into(),
                topic: "chat.*".into(),
                group: Some("g".into()),
                from: ResumeFrom::Latest
            })
        );
        assert_eq!(
            decode(r#"{"op":"unsub","id":"s1"}"#).unwrap(),
            Request::Unsubscribe { id: "s1".into() }
        );
        assert_eq!(
            decode(r#"{"op":"pub","topic":"a","data":{"x":[1,2]},"ref":"p","id":"k"}"#).unwrap(),
            Request::Publish {
                topic: "a".into(),
                payload: Payload::Json(Bytes::from_static(br#"{"x":[1,2]}"#)),
                reference: Some("p".into()),
                id: Some("k".into()),
            }
        );
        let empty_id = decode(r#"{"op":"pub","topic":"a","data":1,"ref":"p","id":""}"#);
        assert!(
            matches!(&empty_id, Err(e) if e.code == ErrorCode::InvalidRequest && e.reference.as_deref() == Some("p")),
            "{empty_id:?}"
        );
        assert_eq!(
            decode(r#"{"op":"pub","topic":"a","data":null}"#).unwrap(),
            Request::Publish {
                topic: "a".into(),
                payload: Payload::Json(Bytes::from_static(b"null")),
                reference: None,
                id: None,
            }
        );
        assert_eq!(
            decode(r#"{"op":"ack","delivery":"7"}"#).unwrap(),
            Request::Ack {
                delivery: "7".into()
            }
        );
        assert_eq!(
            decode(r#"{"op":"ping"}"#).unwrap(),
            Request::Ping { reference: None }
        );
    }

    #[test]
    fn decodes_resume_points() {
        let from = |text: &str| match decode(text).unwrap() {
            Request::Subscribe(s) => s.from,
            other => panic!("not a sub: {other:?}"),
        };
        assert_eq!(
            from(r#"{"op":"sub","id":"s","topic":"a","from":"earliest"}"#),
            ResumeFrom::Earliest
        );
        assert_eq!(
            from(r#"{"op":"sub","id":"s","topic":"a","from":{"epoch":"e1","seq":5}}"#),
            ResumeFrom::Cursor(Cursor {
                epoch: "e1".into(),
                seq: 5
            })
        );
        let ResumeFrom::Topics { topics, since } = from(
            r#"{"op":"sub","id":"s","topic":"a.*","from":{"topics":{"a.b":{"epoch":"e","seq":2}},"since":99}}"#,
        ) else {
            panic!("expected topics cursor")
        };
        assert_eq!(since, 99);
        assert_eq!(topics["a.b"].seq, 2);
        let bad = err(r#"{"op":"sub","id":"s","topic":"a","from":{"epoch":1}}"#);
        assert_eq!(bad.code, ErrorCode::InvalidRequest);
        assert_eq!(bad.reference.as_deref(), Some("s"));
        // Found by schemathesis through the HTTP API: the position after this cursor does
        // not exist, and computing it panicked the replay.
        let past_the_end = err(
            r#"{"op":"sub","id":"s","topic":"a","from":{"epoch":"e","seq":18446744073709551615}}"#,
        );
        assert_eq!(past_the_end.code, ErrorCode::InvalidRequest);
        let largest = format!(
            r#"{{"op":"sub","id":"s","topic":"a","from":{{"epoch":"e","seq":{}}}}}"#,
            Cursor::MAX_SEQ
        );
        assert!(matches!(from(&largest), ResumeFrom::Cursor(c) if c.seq == Cursor::MAX_SEQ));
    }

    #[test]
    fn bad_input_gets_a_code_and_the_ref() {
        assert_eq!(err("{nope").code, ErrorCode::InvalidJson);
        assert_eq!(err("").code, ErrorCode::InvalidJson);
        assert_eq!(err("[1,2]").code, ErrorCode::InvalidRequest);
        let unknown = err(r#"{"op":"frobnicate","ref":"r9"}"#);
        assert_eq!(unknown.code, ErrorCode::UnknownOp);
        assert_eq!(unknown.reference.as_deref(), Some("r9"));
        let missing = err(r#"{"op":"pub","topic":"a","ref":"p1"}"#);
        assert_eq!(missing.code, ErrorCode::InvalidRequest);
        assert_eq!(missing.reference.as_deref(), Some("p1"));
        let no_topic = err(r#"{"op":"sub","id":"s1"}"#);
        assert_eq!(no_topic.reference.as_deref(), Some("s1"));
        let wrong_type = err(r#"{"op":"sub","id":"s2","topic":5}"#);
        assert_eq!(wrong_type.code, ErrorCode::InvalidRequest);
        assert_eq!(wrong_type.reference.as_deref(), Some("s2"));
        assert_eq!(err(r#"{"id":"x"}"#).code, ErrorCode::InvalidRequest);
        assert_eq!(
            err(r#"{"op":"sub","id":"","topic":"a"}"#).code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn a_plain_event_frame_is_allocated_once_at_its_exact_size() {
        let event = Event::new(
            Arc::from("chat.lobby"),
            Arc::from("e1"),
            3,
            1_764_086_400_000,
            Payload::Json(Bytes::from_static(br#"{"text":"hi"}"#)),
        );
        let frame = encode_event("sub-1", &event, None);
        assert_eq!(frame.capacity(), frame.len(), "{frame}");
    }

    #[test]
    fn events_are_valid_json_with_every_field() {
        let event = Event::new(
            Arc::from("chat.lobby"),
            Arc::from("e1"),
            3,
            1_764_086_400_000,
            Payload::Json(Bytes::from_static(br#"{"text":"hi \"you\""}"#)),
        );
        let plain: Value = serde_json::from_str(&encode_event("s\"1", &event, None)).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"op":"event","sub":"s\"1","topic":"chat.lobby","epoch":"e1","seq":3,
                "data":{"text":"hi \"you\""},"ts":1_764_086_400_000_i64})
        );
        let queued: Value = serde_json::from_str(&encode_event(
            "s2",
            &event,
            Some(&Delivery {
                id: 12,
                redelivered: true,
                origin: None,
            }),
        ))
        .unwrap();
        assert_eq!(queued["delivery"], "12");
        assert_eq!(queued["redelivered"], true);
        assert_eq!(queued["sub"], "s2");

        let binary = Event::new(
            Arc::from("t"),
            Arc::from("e"),
            1,
            0,
            Payload::Binary(Bytes::from_static(&[0, 255, 1])),
        );
        let v: Value = serde_json::from_str(&encode_event("s", &binary, None)).unwrap();
        assert_eq!(v["data"], "AP8B");
        assert_eq!(v["encoding"], "base64");
    }

    #[test]
    fn replies() {
        let ok: Value = serde_json::from_str(&encode_reply(&Reply::Ok {
            reference: Some("p1"),
            position: Some(("e", 4)),
        }))
        .unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"op":"ok","ref":"p1","epoch":"e","seq":4})
        );
        let e: Value = serde_json::from_str(&encode_reply(&Reply::Error {
            reference: None,
            code: ErrorCode::InvalidJson,
            message: "bad",
        }))
        .unwrap();
        assert_eq!(
            e,
            serde_json::json!({"op":"error","code":"invalid_json","message":"bad"})
        );
    }
}
