//! The compact batch layout: a batch frame of runs instead of whole event objects.
//!
//! A run is consecutive events of one subscription and topic, in one epoch, with consecutive
//! `seq` and the same kind of data: `sub`, `topic`, `epoch`, the first `seq` and the first
//! `ts` are written once, then each event's `data`, and each event's time as the difference
//! from the one before (`dts`, left out when every event has the run's `ts`). A burst to a
//! subscriber is mostly one run, so an event costs its data and a few bytes: less on the
//! wire than NATS's `MSG` line. Queue-group deliveries (each with its own `delivery` id) come
//! in runs of one. See docs/protocol.md, "Compact batches".
//!
//! The builders check an event fits the frame's byte bound before taking it
//! ([`JsonRuns::fits`]): the bound is counted from above (the run's `dts` as if written,
//! escaped strings at their longest), so a frame never exceeds it.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::json::{data_value, decimal_len, is_plain_json_string, write_json_string};
use super::protobuf::{BATCH_HEADER_ROOM, finish_batch};
use crate::event::{Delivery, Event, Payload};

/// The run an event would continue, if any: the fields every event of a run shares.
struct OpenRun {
    sub: Arc<str>,
    topic: Arc<str>,
    epoch: Arc<str>,
    binary: bool,
    /// The `seq` the next event of the run must have.
    next_seq: u64,
    last_ts: i64,
    events: usize,
    /// Some event's time differs from the one before: `dts` is written.
    timed: bool,
    /// A queue delivery: its run holds it alone.
    closed: bool,
}

impl OpenRun {
    fn new(sub: &Arc<str>, event: &Event, delivery: Option<&Delivery>) -> Self {
        Self {
            sub: sub.clone(),
            topic: event.topic.clone(),
            epoch: event.epoch.clone(),
            binary: matches!(event.payload, Payload::Binary(_)),
            next_seq: event.seq.saturating_add(1),
            last_ts: event.ts,
            events: 1,
            timed: false,
            closed: delivery.is_some(),
        }
    }

    fn continued_by(&self, sub: &Arc<str>, event: &Event, delivery: Option<&Delivery>) -> bool {
        !self.closed
            && delivery.is_none()
            && event.seq == self.next_seq
            && matches!(event.payload, Payload::Binary(_)) == self.binary
            && same(&self.sub, sub)
            && same(&self.topic, &event.topic)
            && same(&self.epoch, &event.epoch)
    }

    /// Takes `event` into the run; returns its time difference from the event before.
    fn extend(&mut self, event: &Event) -> i64 {
        let dts = event.ts.wrapping_sub(self.last_ts);
        self.last_ts = event.ts;
        self.next_seq = event.seq.saturating_add(1);
        self.events += 1;
        self.timed |= dts != 0;
        dts
    }
}

fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Bytes `s` takes as a JSON string at most (every character escaped as `\uXXXX`).
fn json_string_len_bound(s: &str) -> usize {
    if is_plain_json_string(s) {
        s.len() + 2
    } else {
        s.len() * 6 + 2
    }
}

/// The start of a compact JSON batch frame; runs follow, separated by commas.
pub const JSON_START: &str = r#"{"op":"batch","runs":["#;
const JSON_END: &str = "]}";
/// What a run's `dts` takes besides its numbers: `,"dts":[` and `]`.
const JSON_DTS_FRAME: usize = r#","dts":[]"#.len();

/// One compact batch frame in JSON being built.
pub struct JsonRuns {
    /// The frame up to the open run's last `data` element.
    buf: String,
    /// The open run's time differences, comma-separated, written when it closes.
    dts: String,
    open: Option<OpenRun>,
}

impl Default for JsonRuns {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonRuns {
    pub fn new() -> Self {
        Self {
            buf: JSON_START.to_owned(),
            dts: String::new(),
            open: None,
        }
    }

    /// The frame's size if it were finished now, at most.
    pub fn finished_len(&self) -> usize {
        let open = self.open.as_ref().map_or(0, |run| {
            let dts = if run.events > 1 {
                JSON_DTS_FRAME + self.dts.len()
            } else {
                0
            };
            "]}".len() + dts
        });
        self.buf.len() + open + JSON_END.len()
    }

    /// Whether the frame stays within `max_bytes` with `event` in it.
    pub fn fits(
        &self,
        sub: &Arc<str>,
        event: &Event,
        delivery: Option<&Delivery>,
        max_bytes: usize,
    ) -> bool {
        let data = data_value(event).len();
        let added = match &self.open {
            Some(run) if run.continued_by(sub, event, delivery) => {
                let dts = decimal_len(event.ts.wrapping_sub(run.last_ts)) + 1;
                let first_dts = if run.events == 1 { JSON_DTS_FRAME } else { 0 };
                1 + data + dts + first_dts
            }
            _ => {
                let separator = usize::from(self.open.is_some());
                separator + json_run_header_bound(sub, event, delivery) + data + "]}".len()
            }
        };
        self.finished_len() + added <= max_bytes
    }

    pub fn push(&mut self, sub: &Arc<str>, event: &Event, delivery: Option<&Delivery>) {
        let data = data_value(event);
        if let Some(run) = self.open.as_mut()
            && run.continued_by(sub, event, delivery)
        {
            let dts = run.extend(event);
            if !self.dts.is_empty() {
                self.dts.push(',');
            }
            push_decimal(&mut self.dts, dts);
            self.buf.push(',');
            self.buf.push_str(data);
            return;
        }
        if self.open.is_some() {
            self.close_run();
            self.buf.push(',');
        }
        self.buf.push_str(r#"{"sub":"#);
        write_json_string(&mut self.buf, sub);
        self.buf.push_str(r#","topic":"#);
        write_json_string(&mut self.buf, &event.topic);
        self.buf.push_str(r#","epoch":"#);
        write_json_string(&mut self.buf, &event.epoch);
        self.buf.push_str(r#","seq":"#);
        push_decimal(&mut self.buf, event.seq);
        self.buf.push_str(r#","ts":"#);
        push_decimal(&mut self.buf, event.ts);
        if let Some(d) = delivery {
            self.buf.push_str(r#","delivery":""#);
            push_decimal(&mut self.buf, d.id);
            self.buf.push_str(if d.redelivered {
                r#"","redelivered":true"#
            } else {
                r#"","redelivered":false"#
            });
        }
        if matches!(event.payload, Payload::Binary(_)) {
            self.buf.push_str(r#","encoding":"base64""#);
        }
        self.buf.push_str(r#","data":["#);
        self.buf.push_str(data);
        self.open = Some(OpenRun::new(sub, event, delivery));
    }

    fn close_run(&mut self) {
        let Some(run) = self.open.take() else {
            return;
        };
        self.buf.push(']');
        if run.timed {
            self.buf.push_str(r#","dts":["#);
            self.buf.push_str(&self.dts);
            self.buf.push(']');
        }
        self.dts.clear();
        self.buf.push('}');
    }

    pub fn finish(mut self) -> String {
        self.close_run();
        self.buf.push_str(JSON_END);
        self.buf
    }
}

/// Bytes a run's JSON takes before its first `data` element, at most.
fn json_run_header_bound(sub: &str, event: &Event, delivery: Option<&Delivery>) -> usize {
    let fixed = r#"{"sub":,"topic":,"epoch":,"seq":,"ts":,"data":["#.len();
    let delivery = delivery.map_or(0, |d| {
        r#","delivery":"","redelivered":false"#.len() + decimal_len_u64(d.id)
    });
    let encoding = if matches!(event.payload, Payload::Binary(_)) {
        r#","encoding":"base64""#.len()
    } else {
        0
    };
    fixed
        + json_string_len_bound(sub)
        + json_string_len_bound(&event.topic)
        + json_string_len_bound(&event.epoch)
        + decimal_len_u64(event.seq)
        + decimal_len(event.ts)
        + delivery
        + encoding
}

fn decimal_len_u64(n: u64) -> usize {
    i64::try_from(n).map_or(20, decimal_len)
}

/// Appends `n` in decimal without going through `fmt` (it runs per event).
fn push_decimal(out: &mut String, n: impl Into<i128>) {
    let n: i128 = n.into();
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    let mut magnitude = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// Field numbers of `EventBatch` and `EventRun` (proto/…/client.proto).
const EVENT_BATCH_RUNS: u32 = 2;
const RUN_SUB: u32 = 1;
const RUN_TOPIC: u32 = 2;
const RUN_EPOCH: u32 = 3;
const RUN_SEQ: u32 = 4;
const RUN_TS: u32 = 5;
const RUN_ENCODING: u32 = 6;
const RUN_DATA: u32 = 7;
const RUN_DTS: u32 = 8;
const RUN_DELIVERY: u32 = 9;
const RUN_REDELIVERED: u32 = 10;
/// A field key and the longest varint: an upper bound for a numeric field.
const VARINT_FIELD_BOUND: usize = 1 + 10;

/// One compact batch frame in protobuf being built: `ServerFrame { batch: EventBatch { runs } }`.
pub struct ProtobufRuns {
    /// Room for the `ServerFrame.batch` header, then the closed runs.
    buf: Vec<u8>,
    /// The open run's fields but `dts`.
    run: Vec<u8>,
    /// The open run's `dts`, packed (zigzag varints).
    dts: Vec<u8>,
    open: Option<OpenRun>,
}

impl Default for ProtobufRuns {
    fn default() -> Self {
        Self::new()
    }
}

impl ProtobufRuns {
    pub fn new() -> Self {
        Self {
            buf: vec![0; BATCH_HEADER_ROOM],
            run: Vec::new(),
            dts: Vec::new(),
            open: None,
        }
    }

    /// The frame's size if it were finished now, at most.
    pub fn finished_len(&self) -> usize {
        let open = self.open.as_ref().map_or(0, |_| {
            2 * VARINT_FIELD_BOUND + self.run.len() + self.dts.len()
        });
        self.buf.len() + open
    }

    /// Whether the frame stays within `max_bytes` with `event` in it.
    pub fn fits(
        &self,
        sub: &Arc<str>,
        event: &Event,
        delivery: Option<&Delivery>,
        max_bytes: usize,
    ) -> bool {
        let data = payload_bytes(event).len();
        let data_field = 1 + encoded_len_varint(data as u64) + data;
        let added = match &self.open {
            Some(run) if run.continued_by(sub, event, delivery) => data_field + 10,
            _ => {
                let string = |s: &str| 1 + encoded_len_varint(s.len() as u64) + s.len();
                let delivery = delivery.map_or(0, |_| 1 + 1 + 20 + 2);
                2 * VARINT_FIELD_BOUND
                    + string(sub)
                    + string(&event.topic)
                    + string(&event.epoch)
                    + 3 * VARINT_FIELD_BOUND
                    + delivery
                    + data_field
            }
        };
        self.finished_len() + added <= max_bytes
    }

    pub fn push(&mut self, sub: &Arc<str>, event: &Event, delivery: Option<&Delivery>) {
        let data = payload_bytes(event);
        if let Some(run) = self.open.as_mut()
            && run.continued_by(sub, event, delivery)
        {
            let dts = run.extend(event);
            encode_varint(zigzag(dts), &mut self.dts);
            put_bytes(RUN_DATA, data, &mut self.run);
            return;
        }
        self.close_run();
        put_bytes(RUN_SUB, sub.as_bytes(), &mut self.run);
        put_bytes(RUN_TOPIC, event.topic.as_bytes(), &mut self.run);
        put_bytes(RUN_EPOCH, event.epoch.as_bytes(), &mut self.run);
        encode_key(RUN_SEQ, WireType::Varint, &mut self.run);
        encode_varint(event.seq, &mut self.run);
        if event.ts != 0 {
            encode_key(RUN_TS, WireType::Varint, &mut self.run);
            // int64: negative values as their two's complement, as prost writes them.
            encode_varint(event.ts as u64, &mut self.run);
        }
        if matches!(event.payload, Payload::Binary(_)) {
            encode_key(RUN_ENCODING, WireType::Varint, &mut self.run);
            encode_varint(1, &mut self.run);
        }
        if let Some(d) = delivery {
            let mut id = String::new();
            push_decimal(&mut id, d.id);
            put_bytes(RUN_DELIVERY, id.as_bytes(), &mut self.run);
            if d.redelivered {
                encode_key(RUN_REDELIVERED, WireType::Varint, &mut self.run);
                encode_varint(1, &mut self.run);
            }
        }
        put_bytes(RUN_DATA, data, &mut self.run);
        self.open = Some(OpenRun::new(sub, event, delivery));
    }

    fn close_run(&mut self) {
        let Some(run) = self.open.take() else {
            return;
        };
        let dts_field = if run.timed {
            1 + encoded_len_varint(self.dts.len() as u64) + self.dts.len()
        } else {
            0
        };
        let len = self.run.len() + dts_field;
        encode_key(EVENT_BATCH_RUNS, WireType::LengthDelimited, &mut self.buf);
        encode_varint(len as u64, &mut self.buf);
        self.buf.put_slice(&self.run);
        if run.timed {
            put_bytes(RUN_DTS, &self.dts, &mut self.buf);
        }
        self.run.clear();
        self.dts.clear();
    }

    pub fn finish(mut self) -> Bytes {
        self.close_run();
        finish_batch(self.buf)
    }
}

fn payload_bytes(event: &Event) -> &[u8] {
    match &event.payload {
        Payload::Json(b) | Payload::Binary(b) => b,
    }
}

fn put_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

#[cfg(test)]
#[path = "runs_tests.rs"]
mod tests;
