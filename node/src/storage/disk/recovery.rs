//! What the log does at open: load every topic's record and check it against the events on
//! disk before anything is served.
//!
//! fjall replays its journal batch by batch and drops a torn last batch, and checksums
//! every journal batch and table block; a record and the events it describes are written in
//! one batch, except that appends following a topic's history write only their events, and
//! the record is extended over them here (`extend`). So after a crash the two agree, unless
//! something below broke that promise (a disk that lied about a sync, a bug, a hand edit). The check is there for that case and
//! costs little: for each topic the last [`TAIL_CHECK_EVENTS`] events of the recorded range
//! are read backwards and decoded (key present, value well-formed, of the record's epoch).
//! The retained history must stay contiguous, so:
//! - an event missing or unreadable near the end cuts the history just below it (everything
//!   after it too): the record's `high_seq` goes down, those keys are deleted;
//!   [`RepairKind::CutTail`];
//! - events missing at the start below a good run (the run reaches down to them) raise
//!   `low_seq`: they count as trimmed; [`RepairKind::LostHead`];
//! - a record that cannot be decoded is rebuilt from the newest generation of its topic's
//!   events (then checked like the others; `committed_seq` is unknown, 0);
//!   [`RepairKind::RebuiltRecord`], or dropped when there is nothing to rebuild from,
//!   [`RepairKind::DroppedRecord`].
//!
//! Each repair is written (synced) before the log opens and logged as one warning naming
//! the topic, epoch and range. Damage further back than the checked tail is found when a
//! read reaches it: the read fails with [`super::StorageError::Corrupt`] instead of
//! returning it. A cut tail means positions this node once held are gone: the caller
//! should not number after them in that epoch again (renew the epoch).

use std::sync::Arc;

use fjall::{Database, Keyspace, PersistMode};

use super::StorageError;
use super::layout::{
    self, FORMAT, META_FORMAT, META_NEXT_GEN, RECORD_PREFIX, TopicRecord, event_key,
    split_event_key, topic_prefix, view_event,
};

/// How many of each topic's newest events are checked at open.
pub(super) const TAIL_CHECK_EVENTS: usize = 64;

/// What [`super::DiskLog::open`] found.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Every topic's record (after repairs), sorted by topic.
    pub topics: Vec<TopicRecord>,
    /// What was repaired, each also logged as a warning.
    pub repairs: Vec<Repair>,
}

/// One repair made at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub kind: RepairKind,
    /// The events concerned: cut, lost, or (for a rebuilt record) kept.
    pub from_seq: u64,
    pub to_seq: u64,
    /// What was wrong (the first problem found for a cut).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairKind {
    /// The last events (`from_seq..=to_seq`) were missing or unreadable: cut, never served.
    CutTail,
    /// The first events (`from_seq..=to_seq`) were missing: `low_seq` moved past them, as
    /// if trimmed.
    LostHead,
    /// The record was unreadable; rebuilt from the events (`from_seq..=to_seq`).
    RebuiltRecord,
    /// The record was unreadable and no readable events were found: the topic is gone.
    DroppedRecord,
}

impl Repair {
    fn log(&self) {
        let what = match self.kind {
            RepairKind::CutTail => {
                "were missing or unreadable at the end of the history: cut, never served"
            }
            RepairKind::LostHead => "were missing at the start of the history: treated as trimmed",
            RepairKind::RebuiltRecord => {
                "are kept: the topic record was unreadable and was rebuilt from them (committed seq unknown, reset to 0)"
            }
            RepairKind::DroppedRecord => {
                "are gone: the topic record was unreadable and no readable events were found; the topic is forgotten"
            }
        };
        tracing::warn!(
            topic = %self.topic,
            epoch = %self.epoch,
            from_seq = self.from_seq,
            to_seq = self.to_seq,
            reason = self.reason,
            "history on disk: events {}..={} of topic {:?} (epoch {}) {what} ({})",
            self.from_seq,
            self.to_seq,
            self.topic,
            self.epoch,
            self.reason,
        );
    }
}

/// The records and the generation counter, repaired and loaded.
pub(super) struct Loaded {
    pub records: Vec<TopicRecord>,
    pub repairs: Vec<Repair>,
    pub next_gen: u64,
}

pub(super) fn recover(
    db: &Database,
    events: &Keyspace,
    topics: &Keyspace,
) -> Result<Loaded, StorageError> {
    let mut batch = db.batch();
    match topics.get(META_FORMAT)? {
        Some(format) if *format == [FORMAT] => {}
        Some(format) => {
            return Err(StorageError::Format {
                found: format!("{:?}", &*format),
                expected: FORMAT,
            });
        }
        None => batch.insert(topics, META_FORMAT, [FORMAT]),
    }
    let stored_next_gen = topics
        .get(META_NEXT_GEN)?
        .and_then(|v| layout::decode_u64(&v));
    let mut records = Vec::new();
    let mut repairs = Vec::new();
    for item in topics.prefix(RECORD_PREFIX) {
        let (key, value) = item.into_inner()?;
        let Ok(name) = std::str::from_utf8(&key[RECORD_PREFIX.len()..]) else {
            // Not a name Murmur could have written; nothing to rebuild under it.
            repairs.push(Repair {
                topic: String::from_utf8_lossy(&key[RECORD_PREFIX.len()..]).into(),
                epoch: "".into(),
                kind: RepairKind::DroppedRecord,
                from_seq: 0,
                to_seq: 0,
                reason: "topic name is not UTF-8",
            });
            batch.remove(topics, key);
            continue;
        };
        let topic: Arc<str> = name.into();
        let (record, rebuilt) = match layout::decode_record(topic.clone(), &value) {
            Ok(record) => (record, false),
            Err(reason) => match rebuild(events, &topic)? {
                Some(record) => {
                    repairs.push(Repair {
                        topic: topic.clone(),
                        epoch: record.epoch.clone(),
                        kind: RepairKind::RebuiltRecord,
                        from_seq: record.low_seq,
                        to_seq: record.high_seq,
                        reason,
                    });
                    (record, true)
                }
                None => {
                    repairs.push(Repair {
                        topic: topic.clone(),
                        epoch: "".into(),
                        kind: RepairKind::DroppedRecord,
                        from_seq: 0,
                        to_seq: 0,
                        reason,
                    });
                    batch.remove(topics, key);
                    continue;
                }
            },
        };
        let decoded = record.clone();
        let (record, stray) = extend(events, record)?;
        if let (Some(&first), Some(&last)) = (stray.first(), stray.last()) {
            repairs.push(Repair {
                topic: topic.clone(),
                epoch: record.epoch.clone(),
                kind: RepairKind::CutTail,
                from_seq: first,
                to_seq: last,
                reason: "events past a missing or unreadable one",
            });
        }
        let checked = check(events, record.clone())?;
        for seq in checked.cut_keys.iter().chain(&stray) {
            batch.remove(events, event_key(&topic, record.generation, *seq));
        }
        if rebuilt || checked.record != decoded {
            batch.insert(
                topics,
                layout::record_key(&topic),
                layout::encode_record(&checked.record),
            );
        }
        repairs.extend(checked.repairs);
        records.push(checked.record);
    }
    let past_live = records.iter().map(|r| r.generation + 1).max().unwrap_or(1);
    let next_gen = stored_next_gen.unwrap_or(1).max(past_live);
    if stored_next_gen != Some(next_gen) {
        batch.insert(topics, META_NEXT_GEN, next_gen.to_be_bytes());
    }
    if !batch.is_empty() {
        batch.durability(Some(PersistMode::SyncData)).commit()?;
    }
    for repair in &repairs {
        repair.log();
    }
    Ok(Loaded {
        records,
        repairs,
        next_gen,
    })
}

/// Extends `record` over the events written after it in its generation: appends that
/// followed a topic's history write the events but not the record (see `DiskLog::write`).
/// Stops at the first missing or unreadable event, or one of another epoch; a torn batch
/// is never there (fjall drops it whole), so that is the end of what was appended. Keys
/// found past that point (damage) are returned to be deleted, so that a later extension
/// never reaches them.
fn extend(
    events: &Keyspace,
    mut record: TopicRecord,
) -> Result<(TopicRecord, Vec<u64>), StorageError> {
    let mut stray = Vec::new();
    let Some(next) = record.high_seq.checked_add(1) else {
        return Ok((record, stray));
    };
    let range = event_key(&record.topic, record.generation, next)
        ..=event_key(&record.topic, record.generation, u64::MAX);
    let mut ended = false;
    for item in events.range(range) {
        let (key, value) = item.into_inner()?;
        let Some((_, seq)) = split_event_key(&key) else {
            continue;
        };
        let follows = seq == record.high_seq + 1;
        let readable = view_event(&value).is_ok_and(|v| v.epoch == &*record.epoch);
        if ended || !(follows && readable) {
            ended = true;
            stray.push(seq);
            continue;
        }
        record.high_seq = seq;
    }
    Ok((record, stray))
}

struct Checked {
    record: TopicRecord,
    repairs: Vec<Repair>,
    /// Seqs (of the record's generation) whose keys are cut.
    cut_keys: Vec<u64>,
}

/// Checks the newest events of `record`'s range (see the module docs).
fn check(events: &Keyspace, mut record: TopicRecord) -> Result<Checked, StorageError> {
    let mut checked = Checked {
        record: record.clone(),
        repairs: Vec::new(),
        cut_keys: Vec::new(),
    };
    if record.is_empty() {
        return Ok(checked);
    }
    let (low, high) = (record.low_seq, record.high_seq);
    // Walking down from `high`: the run of good events being checked ends at `top`; the
    // next key expected is `expected`.
    let mut top = high;
    let mut expected = high;
    let mut good = 0;
    let mut reason = "";
    let mut reached_low = true;
    let mut seen = Vec::new();
    let range = event_key(&record.topic, record.generation, low)
        ..=event_key(&record.topic, record.generation, high);
    for item in events.range(range).rev() {
        let (key, value) = item.into_inner()?;
        let Some((_, seq)) = split_event_key(&key) else {
            continue;
        };
        if seq != expected {
            // seq + 1..=expected are missing: the run restarts here.
            top = seq;
            good = 0;
            reason = "missing";
        }
        seen.push(seq);
        match view_event(&value).and_then(|v| {
            if v.epoch == &*record.epoch {
                Ok(())
            } else {
                Err("event of another epoch than its topic's record")
            }
        }) {
            Ok(()) => {
                good += 1;
                if good >= TAIL_CHECK_EVENTS {
                    reached_low = false;
                    break;
                }
            }
            Err(why) => {
                top = seq - 1;
                good = 0;
                reason = why;
            }
        }
        expected = seq - 1;
    }
    if reached_low && expected >= low {
        // low..=expected are missing.
        if top > expected {
            checked.repairs.push(Repair {
                topic: record.topic.clone(),
                epoch: record.epoch.clone(),
                kind: RepairKind::LostHead,
                from_seq: low,
                to_seq: expected,
                reason: "missing",
            });
            record.low_seq = expected + 1;
        } else {
            // No good event at all.
            top = low - 1;
            reason = "missing";
        }
    }
    if top < high {
        checked.repairs.push(Repair {
            topic: record.topic.clone(),
            epoch: record.epoch.clone(),
            kind: RepairKind::CutTail,
            from_seq: top + 1,
            to_seq: high,
            reason,
        });
        checked.cut_keys = seen.into_iter().filter(|&seq| seq > top).collect();
        record.high_seq = top;
    }
    checked.record = record;
    Ok(checked)
}

/// A record for `topic` from its events: the newest generation on disk, its first and last
/// key, the epoch of its newest readable event. `None` when nothing readable is there.
fn rebuild(events: &Keyspace, topic: &Arc<str>) -> Result<Option<TopicRecord>, StorageError> {
    let Some(last) = events.prefix(topic_prefix(topic)).next_back() else {
        return Ok(None);
    };
    let Some((generation, high)) = split_event_key(&last.key()?) else {
        return Ok(None);
    };
    let range = event_key(topic, generation, 1)..=event_key(topic, generation, high);
    let Some(first) = events.range(range.clone()).next() else {
        return Ok(None);
    };
    let (first_key, first_value) = first.into_inner()?;
    let Some((_, low)) = split_event_key(&first_key) else {
        return Ok(None);
    };
    let mut epoch = None;
    for item in events.range(range).rev().take(TAIL_CHECK_EVENTS) {
        let value = item.value()?;
        if let Ok(view) = view_event(&value) {
            epoch = Some(Arc::<str>::from(view.epoch));
            break;
        }
    }
    let Some(epoch) = epoch else {
        return Ok(None);
    };
    Ok(Some(TopicRecord {
        topic: topic.clone(),
        epoch,
        low_seq: low,
        high_seq: high,
        committed_seq: 0,
        // Events before `low` were trimmed at times unknown: as late as the first kept.
        trimmed_until_ts: if low > 1 {
            layout::event_ts(&first_value).unwrap_or(0)
        } else {
            0
        },
        generation,
    }))
}
