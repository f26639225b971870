//! The disk backend keeps the seam's contract, and a store reopened from its log serves
//! what the store before it served.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tempfile::TempDir;

use super::{DiskHistory, SharedLog};
use crate::event::{Event, Payload};
use crate::storage::contract::retention;
use crate::storage::disk::{DiskLog, FsyncMode};
use crate::storage::{HistoryStore, Replay, Retention};

/// A store on a log of its own, in a directory that lives as long as the store.
fn disk(retention: Retention) -> Box<dyn HistoryStore> {
    let dir = TempDir::new().expect("a temporary directory");
    let (log, _) = DiskLog::open(dir.path(), FsyncMode::Never).expect("the log opens");
    let mut store = DiskHistory::new(Arc::new(SharedLog::new(log)), retention);
    store.keep_alive = Some(Box::new(dir));
    Box::new(store)
}

crate::storage::contract::contract_tests!(disk);

fn event(topic: &str, epoch: &str, seq: u64, ts: i64) -> Arc<Event> {
    Arc::new(Event::new(
        topic.into(),
        epoch.into(),
        seq,
        ts,
        Payload::Json(Bytes::from(format!("{{\"n\":{seq}}}"))),
    ))
}

fn open(dir: &Path) -> Arc<DiskLog> {
    Arc::new(
        DiskLog::open(dir, FsyncMode::Never)
            .expect("the log opens")
            .0,
    )
}

/// A store over `log`, shared with the test (which reads the log itself).
fn store_over(log: &Arc<DiskLog>, retention: Retention) -> DiskHistory {
    DiskHistory::new(Arc::new(SharedLog::shared(log.clone())), retention)
}

/// A store over `log` with every topic the log kept put back.
fn restored(log: &Arc<DiskLog>, retention: Retention, now_ms: i64) -> DiskHistory {
    let mut store = store_over(log, retention);
    for record in log.topics() {
        store.restore(&record, now_ms).expect("the topic restores");
    }
    store
}

/// What a resumer is told: gaps (epoch, range, reason), then (epoch, seq, payload).
type Told = (
    Vec<(String, u64, u64, &'static str)>,
    Vec<(String, u64, Payload)>,
);

fn told(replay: &Replay) -> Told {
    (
        replay
            .gaps
            .iter()
            .map(|g| (g.epoch.to_string(), g.from_seq, g.to_seq, g.reason))
            .collect(),
        replay
            .events
            .iter()
            .map(|e| (e.epoch.to_string(), e.seq, e.payload.clone()))
            .collect(),
    )
}

/// Every read a resumer can make of the topics `t`, `u` and `v`.
fn every_read(store: &dyn HistoryStore) -> Vec<String> {
    let mut reads = Vec::new();
    for topic in ["t", "u", "v"] {
        reads.push(format!(
            "earliest {topic}: {:?}",
            told(&store.earliest(topic))
        ));
        for epoch in ["e1", "e2"] {
            for seq in [0, 2, 5, 8, 12] {
                let replay = store.after(topic, epoch, seq);
                reads.push(format!("after {topic} {epoch} {seq}: {:?}", told(&replay)));
            }
        }
        for since in [0, 1_004, 1_010, 5_000] {
            let replay = store.since(topic, since);
            reads.push(format!("since {topic} {since}: {:?}", told(&replay)));
        }
        reads.push(format!("knows {topic}: {}", store.knows(topic)));
    }
    reads.push(format!(
        "sizes: {} topics, {} events, {} bytes",
        store.topics(),
        store.events(),
        store.bytes()
    ));
    reads
}

#[test]
fn a_store_reopened_from_its_log_serves_what_it_served_before() {
    let dir = TempDir::new().expect("a temporary directory");
    let hour = 3600;
    let log = open(dir.path());
    let mut store = store_over(&log, retention(6, hour));
    // `t`: trimmed by count (a retention gap before 5); `u`: a new epoch mid-way, then a
    // failed tail forgotten; `v`: forgotten altogether.
    for seq in 1..=10 {
        store
            .append(event("t", "e1", seq, 1_000 + seq as i64), 2_000)
            .expect("the store takes it");
    }
    for seq in 1..=3 {
        store
            .append(event("u", "e1", seq, 1_000 + seq as i64), 2_000)
            .expect("the store takes it");
    }
    for seq in 1..=5 {
        store
            .append(event("u", "e2", seq, 1_100 + seq as i64), 2_000)
            .expect("the store takes it");
    }
    store.forget_from("u", "e2", 4);
    store
        .append(event("v", "e1", 1, 1_001), 2_000)
        .expect("the store takes it");
    store.forget_one("v");
    let before = every_read(&store);
    drop(store);
    drop(log);

    let log = open(dir.path());
    let store = restored(&log, retention(6, hour), 2_000);
    assert_eq!(every_read(&store), before);
    assert_eq!(store.get("t", "e1", 10).map(|e| e.seq), Some(10));
    assert!(
        store.get("u", "e2", 4).is_none(),
        "a failed event stays gone"
    );
}

#[test]
fn the_log_is_trimmed_as_far_as_memory_is() {
    let dir = TempDir::new().expect("a temporary directory");
    let log = open(dir.path());
    let mut store = store_over(&log, retention(3, 60));
    for seq in 1..=10 {
        store
            .append(event("t", "e1", seq, 1_000 * seq as i64), 10_000)
            .expect("the store takes it");
    }
    // Trims are written with the next second's expiry.
    assert_eq!(log.topic("t").expect("the log knows t").low_seq, 1);
    store.expire(10_000);
    let record = log.topic("t").expect("the log knows t");
    assert_eq!(
        (record.low_seq, record.high_seq),
        (8, 10),
        "count retention"
    );
    assert_eq!(record.trimmed_until_ts, 7_000);
    // For room: the oldest events go, on disk too.
    let freed = store.trim_oldest(1, None);
    assert!(freed > 0);
    store.expire(10_000);
    assert_eq!(log.topic("t").expect("t").low_seq, 9);
    // By age: a minute after the newest, nothing is left, and the record says what was.
    store.expire(10_000 + 61_000);
    let record = log.topic("t").expect("t keeps its record");
    assert!(record.is_empty(), "everything expired: {record:?}");
    assert_eq!((record.low_seq, record.trimmed_until_ts), (11, 10_000));
    assert!(
        log.read("t", 0, usize::MAX, usize::MAX)
            .expect("reads")
            .is_empty()
    );
}

#[test]
fn many_waiting_trims_are_written_at_once() {
    let dir = TempDir::new().expect("a temporary directory");
    let log = open(dir.path());
    let mut store = store_over(&log, retention(1, 3600));
    let topics = super::TRIMS_WRITTEN_AT as u64 + 10;
    for seq in 1..=2 {
        for topic in 0..topics {
            store
                .append(event(&format!("t{topic}"), "e1", seq, 1_000), 2_000)
                .expect("the store takes it");
        }
    }
    // Each topic was trimmed once by the second round; most of those trims are on disk
    // without an expiry.
    let trimmed = (0..topics)
        .filter(|t| log.topic(&format!("t{t}")).expect("known").low_seq == 2)
        .count();
    assert!(
        trimmed >= super::TRIMS_WRITTEN_AT,
        "{trimmed} trimmed on disk"
    );
}

#[test]
fn a_tighter_retention_at_restart_trims_the_log_too() {
    let dir = TempDir::new().expect("a temporary directory");
    let hour = 3600;
    let log = open(dir.path());
    let mut store = store_over(&log, retention(100, hour));
    for seq in 1..=10 {
        store
            .append(event("t", "e1", seq, 1_000 + seq as i64), 2_000)
            .expect("the store takes it");
    }
    drop(store);
    drop(log);
    let log = open(dir.path());
    let store = restored(&log, retention(4, hour), 2_000);
    let replay = store.after("t", "e1", 0);
    assert_eq!(
        replay.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 6));
    assert_eq!(log.topic("t").expect("t").low_seq, 7, "the log follows");
}

#[test]
fn committed_positions_and_replaced_copies_survive_a_restart() {
    let dir = TempDir::new().expect("a temporary directory");
    let hour = 3600;
    let log = open(dir.path());
    let mut store = store_over(&log, retention(100, hour));
    store
        .replace(
            "t",
            vec![event("t", "e1", 4, 1_004), event("t", "e1", 5, 1_005)],
            2_000,
        )
        .expect("the store takes the copy");
    store.note_committed("t", "e1", 4);
    store.note_committed("t", "other", 5);
    drop(store);
    drop(log);
    let log = open(dir.path());
    let record = log.topic("t").expect("t");
    assert_eq!(
        (record.low_seq, record.high_seq, record.committed_seq),
        (4, 5, 4)
    );
    let store = restored(&log, retention(100, hour), 2_000);
    let replay = store.after("t", "e1", 1);
    assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (2, 3));
    assert_eq!(replay.events.len(), 2);
}
