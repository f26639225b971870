//! What recovery does with damage written straight into the keyspaces: each repair, its
//! warning, and that the repaired store opens cleanly the next time.

use bytes::Bytes;
use tempfile::TempDir;

use super::layout::{encode_event, view_event};
use super::recovery::TAIL_CHECK_EVENTS;
use super::tests::{all, append_range, event, open, raw_keys, reopen, seqs};
use super::*;
use crate::event::Payload;

/// A log with topic "t" holding 1..=n of epoch "e", damaged by `damage`, reopened.
fn damaged(n: u64, damage: impl FnOnce(&DiskLog, u64)) -> (TempDir, DiskLog, Recovered) {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    append_range(&log, "t", "e", 1..=n);
    append_range(&log, "fine", "e", 1..=3);
    let generation = log.topic("t").expect("a record").generation;
    damage(&log, generation);
    let (log, recovered) = reopen(log, dir.path());
    assert_eq!(
        seqs(&all(&log, "fine")),
        vec![1, 2, 3],
        "other topics untouched"
    );
    (dir, log, recovered)
}

fn put(log: &DiskLog, generation: u64, seq: u64, value: &[u8]) {
    log.events
        .insert(event_key("t", generation, seq), value)
        .expect("writes");
}

fn delete(log: &DiskLog, generation: u64, seq: u64) {
    log.events
        .remove(event_key("t", generation, seq))
        .expect("deletes");
}

fn only_repair(recovered: &Recovered) -> &Repair {
    assert_eq!(recovered.repairs.len(), 1, "{:?}", recovered.repairs);
    &recovered.repairs[0]
}

/// The repair was written: the next opening finds nothing more to do.
fn settled(dir: &TempDir, log: DiskLog) -> DiskLog {
    let before: Vec<_> = log.topics().collect();
    let (log, recovered) = reopen(log, dir.path());
    assert!(recovered.repairs.is_empty(), "{:?}", recovered.repairs);
    assert_eq!(recovered.topics, before);
    log
}

#[test]
fn a_corrupt_value_cuts_the_tail_from_it() {
    let (dir, log, recovered) = damaged(10, |log, g| put(log, g, 8, b"\x01\x00garbage"));
    let repair = only_repair(&recovered);
    assert_eq!(
        (
            repair.kind,
            &*repair.topic,
            &*repair.epoch,
            repair.from_seq,
            repair.to_seq
        ),
        (RepairKind::CutTail, "t", "e", 8, 10)
    );
    assert_eq!(repair.reason, "value is shorter than its fields");
    assert_eq!(seqs(&all(&log, "t")), (1..=7).collect::<Vec<_>>());
    assert_eq!(raw_keys(&log, "t").len(), 7, "the cut keys are deleted");
    let log = settled(&dir, log);
    // Position 8 can be written again.
    append_range(&log, "t", "e", 8..=8);
    assert_eq!(seqs(&all(&log, "t")), (1..=8).collect::<Vec<_>>());
}

#[test]
fn a_missing_last_event_is_cut() {
    let (dir, log, recovered) = damaged(10, |log, g| delete(log, g, 10));
    let repair = only_repair(&recovered);
    assert_eq!(
        (repair.kind, repair.from_seq, repair.to_seq, repair.reason),
        (RepairKind::CutTail, 10, 10, "missing")
    );
    assert_eq!(log.topic("t").expect("a record").high_seq, 9);
    settled(&dir, log);
}

#[test]
fn a_gap_near_the_end_cuts_everything_after_it() {
    let (dir, log, recovered) = damaged(10, |log, g| delete(log, g, 8));
    let repair = only_repair(&recovered);
    assert_eq!(
        (repair.kind, repair.from_seq, repair.to_seq),
        (RepairKind::CutTail, 8, 10)
    );
    assert_eq!(seqs(&all(&log, "t")), (1..=7).collect::<Vec<_>>());
    settled(&dir, log);
}

#[test]
fn an_event_of_another_epoch_is_cut() {
    let (_dir, log, recovered) = damaged(10, |log, g| {
        let stranger = Event::new(
            "t".into(),
            "intruder".into(),
            9,
            0,
            Payload::Binary(Bytes::new()),
        );
        put(log, g, 9, &encode_event(&stranger));
    });
    let repair = only_repair(&recovered);
    assert_eq!(
        (repair.kind, repair.from_seq, repair.to_seq),
        (RepairKind::CutTail, 9, 10)
    );
    assert!(all(&log, "t").iter().all(|e| &*e.epoch == "e"));
}

#[test]
fn missing_first_events_move_the_front_as_if_trimmed() {
    let (dir, log, recovered) = damaged(10, |log, g| (1..=3).for_each(|seq| delete(log, g, seq)));
    let repair = only_repair(&recovered);
    assert_eq!(
        (repair.kind, repair.from_seq, repair.to_seq),
        (RepairKind::LostHead, 1, 3)
    );
    assert_eq!(seqs(&all(&log, "t")), (4..=10).collect::<Vec<_>>());
    settled(&dir, log);
}

#[test]
fn nothing_readable_leaves_an_empty_history_at_its_position() {
    let (dir, log, recovered) = damaged(3, |log, g| (1..=3).for_each(|seq| put(log, g, seq, b"")));
    let repair = only_repair(&recovered);
    assert_eq!(
        (repair.kind, repair.from_seq, repair.to_seq),
        (RepairKind::CutTail, 1, 3)
    );
    let record = log.topic("t").expect("the record stays");
    assert_eq!((record.low_seq, record.high_seq), (1, 0));
    settled(&dir, log);
}

#[test]
fn an_unreadable_record_is_rebuilt_from_the_events() {
    let (dir, log, recovered) = damaged(10, |log, _| {
        log.trim_front("t", 2).expect("trims");
        log.topics
            .insert(layout::record_key("t"), b"\x07junk")
            .expect("writes");
    });
    let repair = only_repair(&recovered);
    assert_eq!(
        (repair.kind, &*repair.epoch, repair.reason),
        (
            RepairKind::RebuiltRecord,
            "e",
            "unknown topic record format"
        )
    );
    let record = log.topic("t").expect("rebuilt");
    // The trimmed keys were not compacted yet: they are found, and served again.
    assert_eq!(
        (
            &*record.epoch,
            record.low_seq,
            record.high_seq,
            record.committed_seq
        ),
        ("e", 1, 10, 0)
    );
    assert_eq!(seqs(&all(&log, "t")), (1..=10).collect::<Vec<_>>());
    settled(&dir, log);
}

#[test]
fn an_unreadable_record_without_events_is_dropped() {
    let (dir, log, recovered) = damaged(2, |log, _| {
        log.topics
            .insert(layout::record_key("ghost"), b"")
            .expect("writes");
    });
    let repair = only_repair(&recovered);
    assert_eq!(
        (repair.kind, &*repair.topic),
        (RepairKind::DroppedRecord, "ghost")
    );
    assert_eq!(log.topic("ghost"), None);
    settled(&dir, log);
}

#[test]
fn damage_before_the_checked_tail_fails_the_read_that_reaches_it() {
    let n = TAIL_CHECK_EVENTS as u64 + 20;
    let (_dir, log, recovered) = damaged(n, |log, g| put(log, g, 5, b"\x01"));
    assert!(
        recovered.repairs.is_empty(),
        "too far back for the open check"
    );
    assert_eq!(
        seqs(&log.read("t", 1, 4, usize::MAX).expect("reads")),
        vec![1, 2, 3, 4]
    );
    match log.read("t", 1, 10, usize::MAX) {
        Err(StorageError::Corrupt { topic, seq, .. }) => assert_eq!((&*topic, seq), ("t", 5)),
        other => panic!("expected a corrupt event at 5, got {other:?}"),
    }
    assert_eq!(log.read("t", 6, 1, usize::MAX).expect("reads")[0].seq, 6);
    assert!(matches!(
        log.get("t", "e", 5),
        Err(StorageError::Corrupt { seq: 5, .. })
    ));
}

#[test]
fn every_repair_is_one_warning_naming_topic_epoch_and_range() {
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    append_range(&log, "chat.room", "ep-1", 1..=10);
    let generation = log.topic("chat.room").expect("a record").generation;
    log.events
        .insert(event_key("chat.room", generation, 9), b"\x02")
        .expect("writes");
    drop(log);
    let (_log, recovered) = tracing::subscriber::with_default(subscriber, || open(dir.path()));
    assert_eq!(recovered.repairs.len(), 1);
    let text = String::from_utf8(capture.0.lock().clone()).expect("UTF-8");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    for part in [
        "events 9..=10",
        "\"chat.room\"",
        "epoch ep-1",
        "cut, never served",
        "unknown event format",
    ] {
        assert!(lines[0].contains(part), "{part:?} not in {:?}", lines[0]);
    }
}

#[test]
fn a_store_of_another_layout_version_is_refused() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    log.topics.insert(layout::META_FORMAT, [9]).expect("writes");
    drop(log);
    let result = DiskLog::open(dir.path(), FsyncMode::Never);
    assert!(
        matches!(result, Err(StorageError::Format { expected: 1, .. })),
        "{result:?}"
    );
}

#[test]
fn values_written_by_the_log_pass_its_own_check() {
    // The encoder and the checks agree on every event the log accepts.
    let id = PublishId::client(&"i".repeat(4096));
    let event = Event::new("t".into(), "e".into(), 1, 0, Payload::Binary(Bytes::new()))
        .with_publish_id(Some(id));
    assert!(check_event(&event).is_ok());
    assert!(view_event(&encode_event(&event)).is_ok());
}

#[test]
fn appends_that_follow_are_found_past_the_record_and_strays_past_a_hole_are_cut() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    append_range(&log, "t", "e", 1..=3);
    // A trim writes the record (high_seq 3 then); the appends after it write only events.
    log.trim_front("t", 1).expect("trims");
    append_range(&log, "t", "e", 4..=9);
    let stored = log
        .topics
        .get(layout::record_key("t"))
        .expect("reads")
        .expect("a record");
    let on_disk = layout::decode_record("t".into(), &stored).expect("decodes");
    assert_eq!(
        (on_disk.low_seq, on_disk.high_seq),
        (2, 3),
        "not rewritten per append"
    );
    let generation = on_disk.generation;
    let (log, recovered) = reopen(log, dir.path());
    assert!(recovered.repairs.is_empty(), "{:?}", recovered.repairs);
    let record = log.topic("t").expect("t");
    assert_eq!(
        (record.low_seq, record.high_seq),
        (2, 9),
        "extended over the appends"
    );
    assert_eq!(seqs(&all(&log, "t")), (2..=9).collect::<Vec<_>>());
    // Damage: a hole at 11 with an event past it. The extension stops at the hole and the
    // stray goes, so that appends filling 10 and 11 later never run into it.
    let later = event("t", "e", 12);
    put(&log, generation, 10, &encode_event(&event("t", "e", 10)));
    put(&log, generation, 12, &encode_event(&later));
    let (log, recovered) = reopen(log, dir.path());
    let repair = only_repair(&recovered);
    assert_eq!(
        (repair.kind, repair.from_seq, repair.to_seq),
        (RepairKind::CutTail, 12, 12)
    );
    assert_eq!(seqs(&all(&log, "t")), (2..=10).collect::<Vec<_>>());
    let log = settled(&dir, log);
    append_range(&log, "t", "e", 11..=11);
    let (log, _) = reopen(log, dir.path());
    assert_eq!(seqs(&all(&log, "t")), (2..=11).collect::<Vec<_>>());
}
