//! How the disk log lays its records out in fjall: the keys of the `events` keyspace, the
//! values that hold every field of an [`Event`], and the topic records and markers of the
//! `topics` keyspace. Plain functions over bytes; nothing here touches the database.
//!
//! `events` (one LSM tree for every topic, as docs/storage.md recommends):
//!
//! ```text
//! key   = topic length u16 BE | topic (UTF-8) | generation u64 BE | seq u64 BE
//! value = format u8 (1) | flags u8 | ts i64 BE | epoch length u16 BE | epoch (UTF-8)
//!         | [publish id length u16 BE | publish id (UTF-8)]   (when flags has PUBLISH_ID)
//!         | payload (the rest)
//! flags = bit 0: payload is binary (else JSON text); bit 1: a publish id follows the epoch
//! ```
//!
//! The length is a `u16`, not the `u8` docs/storage.md measured with: `max_topic_bytes` may
//! be set up to 4096. Prefixing the length keeps one topic's keys apart from every other's
//! (`"ab"` and `"abc"` differ in their first two bytes), so a topic's events are one
//! contiguous key range. The *generation* is a number the log gives a topic's history each
//! time it starts afresh (a new topic, another epoch, a jump, a replace): positions of a
//! topic are written again in Murmur (a re-created topic numbers from 1 again, a copy is
//! replaced, failed events are sent again), and the generation makes every incarnation's keys
//! distinct, which is what lets the compaction filter drop keys without tombstones (see
//! `trim.rs`). The fixed fields (`ts`) come first so that reading a timestamp needs no
//! parsing of the strings.
//!
//! `topics` holds one record per topic, under `T | topic`, and the log's markers under
//! `M | name`:
//!
//! ```text
//! T | topic  -> format u8 (1) | generation u64 BE | low_seq u64 BE | high_seq u64 BE
//!               | committed_seq u64 BE | trimmed_until_ts i64 BE | epoch (UTF-8, the rest)
//! M format   -> u8 (1)
//! M next_gen -> u64 BE: no generation at or above it was ever given out
//! ```

use std::sync::Arc;

use bytes::Bytes;

use crate::event::{Event, Payload};
use crate::routing::dedupe::PublishId;

/// Name of the keyspace holding every topic's events.
pub(super) const EVENTS: &str = "events";
/// Name of the keyspace holding the topic records and the log's markers.
pub(super) const TOPICS: &str = "topics";

/// The longest topic name a key holds. fjall keys are at most 64 KiB; Murmur's
/// `max_topic_bytes` is at most 4096.
pub const MAX_TOPIC_BYTES: usize = 16 * 1024;

/// The version of this layout, stored under [`META_FORMAT`].
pub(super) const FORMAT: u8 = 1;
pub(super) const META_FORMAT: &[u8] = b"Mformat";
pub(super) const META_NEXT_GEN: &[u8] = b"Mnext_gen";
/// Every topic record's key starts with it.
pub(super) const RECORD_PREFIX: &[u8] = b"T";

const EVENT_FORMAT: u8 = 1;
const RECORD_FORMAT: u8 = 1;
const FLAG_BINARY: u8 = 1;
const FLAG_PUBLISH_ID: u8 = 2;
/// format, flags, ts, epoch length.
const EVENT_HEADER: usize = 1 + 1 + 8 + 2;
/// format, generation, low, high, committed, trimmed_until_ts.
const RECORD_HEADER: usize = 1 + 8 * 5;

/// The key prefix every event of `topic` has (of any generation).
pub(super) fn topic_prefix(topic: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + topic.len() + 16);
    let len = u16::try_from(topic.len()).expect("topic length is checked against MAX_TOPIC_BYTES");
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key
}

/// The key of event `seq` of `topic`'s generation `generation`.
pub(super) fn event_key(topic: &str, generation: u64, seq: u64) -> Vec<u8> {
    let mut key = topic_prefix(topic);
    key.extend_from_slice(&generation.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The (generation, seq) of an event key, if it is one.
pub(super) fn split_event_key(key: &[u8]) -> Option<(u64, u64)> {
    let len = usize::from(u16::from_be_bytes(key.get(..2)?.try_into().ok()?));
    if key.len() != 2 + len + 16 {
        return None;
    }
    let tail = &key[2 + len..];
    let generation = u64::from_be_bytes(tail[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(tail[8..].try_into().ok()?);
    Some((generation, seq))
}

/// Encodes every field of `event` but its topic and seq (those are in the key).
pub(super) fn encode_event(event: &Event) -> Vec<u8> {
    let (binary, payload) = match &event.payload {
        Payload::Json(bytes) => (false, bytes),
        Payload::Binary(bytes) => (true, bytes),
    };
    let id = event.publish_id.as_ref().map(PublishId::wire);
    let mut value = Vec::with_capacity(
        EVENT_HEADER + event.epoch.len() + id.map_or(0, |id| 2 + id.len()) + payload.len(),
    );
    let mut flags = 0;
    if binary {
        flags |= FLAG_BINARY;
    }
    if id.is_some() {
        flags |= FLAG_PUBLISH_ID;
    }
    value.push(EVENT_FORMAT);
    value.push(flags);
    value.extend_from_slice(&event.ts.to_be_bytes());
    put_str16(&mut value, &event.epoch);
    if let Some(id) = id {
        put_str16(&mut value, id);
    }
    value.extend_from_slice(payload);
    value
}

/// An event value, checked and split into its fields (nothing copied yet).
#[derive(Debug)]
pub(super) struct EventView<'a> {
    pub ts: i64,
    pub epoch: &'a str,
    pub publish_id: Option<PublishId>,
    pub binary: bool,
    pub payload: &'a [u8],
}

impl EventView<'_> {
    /// The event, with the caller's shared topic and epoch names.
    pub fn into_event(self, topic: Arc<str>, epoch: Arc<str>, seq: u64) -> Event {
        debug_assert_eq!(&*epoch, self.epoch);
        let bytes = Bytes::copy_from_slice(self.payload);
        let payload = if self.binary {
            Payload::Binary(bytes)
        } else {
            Payload::Json(bytes)
        };
        Event::new(topic, epoch, seq, self.ts, payload).with_publish_id(self.publish_id)
    }
}

/// Splits and checks an event value: the format and flags known, every length inside the
/// value, the strings UTF-8, the publish id one a peer could have sent, a JSON payload
/// UTF-8 text. (Bit rot inside the payload is the engine's to catch: fjall checksums every
/// journal batch and every table block.)
pub(super) fn view_event(value: &[u8]) -> Result<EventView<'_>, &'static str> {
    let mut rest = value;
    if take(&mut rest, 1)? != [EVENT_FORMAT] {
        return Err("unknown event format");
    }
    let flags = take(&mut rest, 1)?[0];
    if flags & !(FLAG_BINARY | FLAG_PUBLISH_ID) != 0 {
        return Err("unknown event flags");
    }
    let ts = i64::from_be_bytes(take(&mut rest, 8)?.try_into().map_err(|_| "short")?);
    let epoch = take_str16(&mut rest)?;
    if epoch.is_empty() {
        return Err("empty epoch");
    }
    let publish_id = if flags & FLAG_PUBLISH_ID != 0 {
        let wire = take_str16(&mut rest)?;
        Some(PublishId::from_wire(wire).ok_or("malformed publish id")?)
    } else {
        None
    };
    let binary = flags & FLAG_BINARY != 0;
    if !binary && std::str::from_utf8(rest).is_err() {
        return Err("JSON payload is not UTF-8");
    }
    Ok(EventView {
        ts,
        epoch,
        publish_id,
        binary,
        payload: rest,
    })
}

/// The `ts` of an event value, without looking at the rest.
pub(super) fn event_ts(value: &[u8]) -> Option<i64> {
    if value.len() < EVENT_HEADER || value[0] != EVENT_FORMAT {
        return None;
    }
    Some(i64::from_be_bytes(value[2..10].try_into().ok()?))
}

/// What the log knows of a topic: where its history is on disk and what it holds.
///
/// `low_seq..=high_seq` are the retained events; `low_seq == high_seq + 1` when none are
/// (all trimmed or forgotten: the record stays, so the topic's position is not lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    /// The first retained event (or the one the next would be, when none are).
    pub low_seq: u64,
    /// The last event appended (and not forgotten) in `epoch`.
    pub high_seq: u64,
    /// How far the caller said `epoch` is committed ([`super::DiskLog::set_committed`]);
    /// 0 when it never did. Kept as said, not clamped to `high_seq`.
    pub committed_seq: u64,
    /// `ts` of the newest event trimmed from the front (0 if none): a resumer away since
    /// before it may have missed trimmed events. Set as the memory backend sets it.
    pub trimmed_until_ts: i64,
    /// Which generation of keys holds the history (see the module docs).
    pub(super) generation: u64,
}

impl TopicRecord {
    /// True when no events are retained.
    pub fn is_empty(&self) -> bool {
        self.low_seq > self.high_seq
    }

    /// Number of retained events.
    pub fn len(&self) -> u64 {
        (self.high_seq + 1).saturating_sub(self.low_seq)
    }
}

pub(super) fn record_key(topic: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(RECORD_PREFIX.len() + topic.len());
    key.extend_from_slice(RECORD_PREFIX);
    key.extend_from_slice(topic.as_bytes());
    key
}

pub(super) fn encode_record(record: &TopicRecord) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECORD_HEADER + record.epoch.len());
    value.push(RECORD_FORMAT);
    value.extend_from_slice(&record.generation.to_be_bytes());
    value.extend_from_slice(&record.low_seq.to_be_bytes());
    value.extend_from_slice(&record.high_seq.to_be_bytes());
    value.extend_from_slice(&record.committed_seq.to_be_bytes());
    value.extend_from_slice(&record.trimmed_until_ts.to_be_bytes());
    value.extend_from_slice(record.epoch.as_bytes());
    value
}

/// Decodes a topic record (`topic` from its key).
pub(super) fn decode_record(topic: Arc<str>, value: &[u8]) -> Result<TopicRecord, &'static str> {
    let mut rest = value;
    if take(&mut rest, 1)? != [RECORD_FORMAT] {
        return Err("unknown topic record format");
    }
    let mut next_u64 = || -> Result<u64, &'static str> {
        Ok(u64::from_be_bytes(
            take(&mut rest, 8)?.try_into().map_err(|_| "short")?,
        ))
    };
    let generation = next_u64()?;
    let low_seq = next_u64()?;
    let high_seq = next_u64()?;
    let committed_seq = next_u64()?;
    let trimmed_until_ts = next_u64()?.cast_signed();
    let epoch = std::str::from_utf8(rest).map_err(|_| "epoch is not UTF-8")?;
    if epoch.is_empty() {
        return Err("empty epoch");
    }
    if low_seq == 0 || low_seq > high_seq.saturating_add(1) {
        return Err("low_seq is not within 1..=high_seq + 1");
    }
    Ok(TopicRecord {
        topic,
        epoch: epoch.into(),
        low_seq,
        high_seq,
        committed_seq,
        trimmed_until_ts,
        generation,
    })
}

pub(super) fn decode_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Epochs are ~20 bytes and publish ids at most `MAX_PEER_ID_BYTES` (4098).
    let len = u16::try_from(s.len()).expect("epochs and publish ids are shorter than 64 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    if rest.len() < n {
        return Err("value is shorter than its fields");
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_str16<'a>(rest: &mut &'a [u8]) -> Result<&'a str, &'static str> {
    let len = u16::from_be_bytes(take(rest, 2)?.try_into().map_err(|_| "short")?);
    std::str::from_utf8(take(rest, usize::from(len))?).map_err(|_| "string is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: Payload, id: Option<&str>) -> Event {
        Event::new("a.b".into(), "18c-00ab".into(), 7, -3, payload)
            .with_publish_id(id.map(PublishId::client))
    }

    #[test]
    fn event_values_hold_every_field_but_topic_and_seq() {
        for (payload, id) in [
            (
                Payload::Json(Bytes::from_static(br#"{"x":"\u00e9"}"#)),
                None,
            ),
            (
                Payload::Binary(Bytes::from_static(&[0, 255, 1])),
                Some("k-1"),
            ),
            (Payload::Binary(Bytes::new()), Some("z")),
        ] {
            let original = event(payload, id);
            let value = encode_event(&original);
            assert_eq!(event_ts(&value), Some(-3));
            let view = view_event(&value).expect("decodes");
            assert_eq!(view.epoch, "18c-00ab");
            let back = view.into_event("a.b".into(), "18c-00ab".into(), 7);
            assert_eq!(back.payload, original.payload);
            assert_eq!(back.publish_id, original.publish_id);
            assert_eq!((back.ts, back.seq), (-3, 7));
        }
    }

    #[test]
    fn malformed_event_values_are_refused() {
        let good = encode_event(&event(Payload::Json(Bytes::from_static(b"1")), Some("id")));
        // Every cut inside the header or the strings is caught (a cut inside the payload is
        // a shorter payload: the engine's checksums are there for that).
        let strings_end = EVENT_HEADER + "18c-00ab".len() + 2 + "c:id".len();
        for cut in 0..strings_end {
            assert!(view_event(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_flags = good.clone();
        bad_flags[1] |= 0x80;
        assert!(view_event(&bad_flags).is_err());
        let mut bad_format = good.clone();
        bad_format[0] = 9;
        assert!(view_event(&bad_format).is_err());
        let mut not_utf8 = good;
        let last = not_utf8.len() - 1;
        not_utf8[last] = 0xff;
        assert!(view_event(&not_utf8).is_err());
    }

    #[test]
    fn keys_sort_by_topic_then_generation_then_seq_and_split_back() {
        let a = event_key("ab", 2, 9);
        assert_eq!(split_event_key(&a), Some((2, 9)));
        assert!(event_key("ab", 2, 9) < event_key("ab", 2, 10));
        assert!(event_key("ab", 2, u64::MAX) < event_key("ab", 3, 0));
        // A longer name never falls inside a shorter one's range.
        assert!(event_key("ab", u64::MAX, u64::MAX) < event_key("abc", 0, 0));
        assert!(event_key("abc", 0, 0).starts_with(&topic_prefix("abc")));
        assert!(!event_key("abc", 0, 0).starts_with(&topic_prefix("ab")));
        assert_eq!(split_event_key(b"\x00\x05ab"), None);
    }

    #[test]
    fn topic_records_round_trip_and_refuse_nonsense() {
        let record = TopicRecord {
            topic: "t".into(),
            epoch: "e-1".into(),
            low_seq: 4,
            high_seq: 3,
            committed_seq: 2,
            trimmed_until_ts: -9,
            generation: 77,
        };
        let value = encode_record(&record);
        assert_eq!(decode_record("t".into(), &value), Ok(record.clone()));
        assert!(decode_record("t".into(), &value[..RECORD_HEADER - 1]).is_err());
        let mut bad = record;
        bad.low_seq = 9;
        assert!(decode_record("t".into(), &encode_record(&bad)).is_err());
    }
}
