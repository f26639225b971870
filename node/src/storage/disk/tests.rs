//! The disk log's operations, each checked before and after reopening the store.

use std::path::Path;

use bytes::Bytes;
use tempfile::TempDir;

use super::layout::topic_prefix;
use super::*;
use crate::event::Payload;

pub(super) fn event(topic: &str, epoch: &str, seq: u64) -> Arc<Event> {
    event_with(topic, epoch, seq, format!("{{\"n\":{seq}}}"))
}

fn event_with(topic: &str, epoch: &str, seq: u64, json: String) -> Arc<Event> {
    Arc::new(Event::new(
        topic.into(),
        epoch.into(),
        seq,
        1_000 + seq.cast_signed(),
        Payload::Json(Bytes::from(json)),
    ))
}

pub(super) fn open(dir: &Path) -> (DiskLog, Recovered) {
    DiskLog::open(dir, FsyncMode::Never).expect("the log opens")
}

pub(super) fn reopen(log: DiskLog, dir: &Path) -> (DiskLog, Recovered) {
    drop(log);
    open(dir)
}

pub(super) fn all(log: &DiskLog, topic: &str) -> Vec<Arc<Event>> {
    log.read(topic, 0, usize::MAX, usize::MAX)
        .expect("the history reads")
}

pub(super) fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Every field an event is made of (the encodings cached for delivery are not).
pub(super) fn assert_same(a: &Event, b: &Event) {
    assert_eq!(
        (&a.topic, &a.epoch, a.seq, a.ts, &a.payload, &a.publish_id),
        (&b.topic, &b.epoch, b.seq, b.ts, &b.payload, &b.publish_id)
    );
}

/// The (generation, seq) of every key of `topic` in the events keyspace, as stored.
pub(super) fn raw_keys(log: &DiskLog, topic: &str) -> Vec<(u64, u64)> {
    log.events
        .prefix(topic_prefix(topic))
        .map(|item| layout::split_event_key(&item.key().expect("key")).expect("an event key"))
        .collect()
}

pub(super) fn append_range(
    log: &DiskLog,
    topic: &str,
    epoch: &str,
    seqs: std::ops::RangeInclusive<u64>,
) {
    let events: Vec<_> = seqs.map(|seq| event(topic, epoch, seq)).collect();
    log.append(&events).expect("appends");
}

#[test]
fn every_field_of_an_event_survives_a_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let long_topic = "l".repeat(4096);
    let originals = vec![
        Arc::new(
            Event::new(
                "a.b".into(),
                "18c2f3a4b5c-0a1b2c3d".into(),
                1,
                -5,
                Payload::Json(Bytes::from_static(br#"{"x":[1,"\u00e9"]}"#)),
            )
            .with_publish_id(Some(PublishId::client("k-1"))),
        ),
        Arc::new(
            Event::new(
                "a.b".into(),
                "18c2f3a4b5c-0a1b2c3d".into(),
                2,
                i64::MAX,
                Payload::Binary(Bytes::from_static(&[0, 1, 255, 0])),
            )
            .with_publish_id(Some(PublishId::node("n1", 0xabc, 7))),
        ),
        Arc::new(Event::new(
            "a.b".into(),
            "18c2f3a4b5c-0a1b2c3d".into(),
            3,
            0,
            Payload::Binary(Bytes::new()),
        )),
        Arc::new(Event::new(
            "ünï.cödé".into(),
            "é".into(),
            41,
            7,
            Payload::Json(Bytes::from("\"ünï\"")),
        )),
        Arc::new(Event::new(
            long_topic.as_str().into(),
            "e".into(),
            1,
            8,
            Payload::Json(Bytes::from_static(b"null")),
        )),
    ];
    let (log, _) = open(dir.path());
    log.append(&originals).expect("appends");
    let check = |log: &DiskLog| {
        let mut read = all(log, "a.b");
        read.extend(all(log, "ünï.cödé"));
        read.extend(all(log, &long_topic));
        assert_eq!(read.len(), originals.len());
        for (original, back) in originals.iter().zip(&read) {
            assert_same(original, back);
        }
        let got = log
            .get("a.b", "18c2f3a4b5c-0a1b2c3d", 2)
            .expect("reads")
            .expect("event 2 is there");
        assert_same(&originals[1], &got);
        assert!(log.get("a.b", "other", 2).expect("reads").is_none());
        assert!(
            log.get("a.b", "18c2f3a4b5c-0a1b2c3d", 4)
                .expect("reads")
                .is_none()
        );
    };
    check(&log);
    let (log, recovered) = reopen(log, dir.path());
    assert!(recovered.repairs.is_empty());
    check(&log);
    let unicode = log.topic("ünï.cödé").expect("a record");
    // Joined mid-sequence: the earlier events may be as recent as this one.
    assert_eq!(
        (unicode.low_seq, unicode.high_seq, unicode.trimmed_until_ts),
        (41, 41, 7)
    );
}

#[test]
fn many_topics_come_back_identical_after_a_drop_and_after_a_clean_close() {
    let dir = TempDir::new().expect("temp dir");
    let (log, recovered) = open(dir.path());
    assert!(recovered.topics.is_empty() && recovered.repairs.is_empty());
    let topics: Vec<String> = (0..40).map(|i| format!("room.{i:02}")).collect();
    // Round-robin over the topics, 16 events a batch: each batch touches 16 topics.
    let all_events: Vec<Arc<Event>> = (1..=25)
        .flat_map(|seq| topics.iter().map(move |t| event(t, "e1", seq)))
        .collect();
    for batch in all_events.chunks(16) {
        log.append(batch).expect("appends");
    }
    log.set_committed("room.03", "e1", 20).expect("commits");
    log.trim_front("room.07", 10).expect("trims");
    let records: Vec<TopicRecord> = log.topics().collect();
    assert_eq!(records.len(), 40);
    assert_eq!(records[3].committed_seq, 20);
    assert_eq!((records[7].low_seq, records[7].high_seq), (11, 25));
    let histories: Vec<Vec<Arc<Event>>> = topics.iter().map(|t| all(&log, t)).collect();
    assert_eq!(seqs(&histories[0]), (1..=25).collect::<Vec<_>>());

    let compare = |log: &DiskLog, recovered: &Recovered| {
        assert!(recovered.repairs.is_empty(), "{:?}", recovered.repairs);
        assert_eq!(recovered.topics, records);
        assert_eq!(log.topics().collect::<Vec<_>>(), records);
        for (topic, before) in topics.iter().zip(&histories) {
            let after = all(log, topic);
            assert_eq!(after.len(), before.len());
            for (a, b) in before.iter().zip(&after) {
                assert_same(a, b);
            }
        }
    };
    let (log, recovered) = reopen(log, dir.path());
    compare(&log, &recovered);
    log.close().expect("closes");
    let (log, recovered) = open(dir.path());
    compare(&log, &recovered);
}

#[test]
fn reads_are_pages_bounded_by_count_and_bytes() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    // 100 events of exactly 10 payload bytes each.
    let events: Vec<_> = (1..=100)
        .map(|seq| event_with("t", "e", seq, format!("\"{seq:08}\"")))
        .collect();
    log.append(&events).expect("appends");
    assert_eq!(
        seqs(&log.read("t", 1, 10, usize::MAX).expect("reads")),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&log.read("t", 95, 10, usize::MAX).expect("reads")),
        (95..=100).collect::<Vec<_>>()
    );
    // 25 bytes hold two events; a bound below one event still gives one.
    assert_eq!(
        seqs(&log.read("t", 50, 10, 25).expect("reads")),
        vec![50, 51]
    );
    assert_eq!(
        seqs(&log.read("t", 50, 10, 30).expect("reads")),
        vec![50, 51, 52]
    );
    assert_eq!(seqs(&log.read("t", 50, 10, 1).expect("reads")), vec![50]);
    assert!(log.read("t", 101, 10, 100).expect("reads").is_empty());
    assert!(log.read("t", 1, 0, 100).expect("reads").is_empty());
    assert!(log.read("unknown", 1, 10, 100).expect("reads").is_empty());

    // Paging through from a cursor yields the whole history, in order, once.
    let mut cursor = 0;
    let mut paged = Vec::new();
    loop {
        let page = log.read("t", cursor + 1, 7, 45).expect("reads");
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 4, "45 bytes hold at most four 10-byte events");
        cursor = last.seq;
        paged.extend(page);
    }
    assert_eq!(seqs(&paged), (1..=100).collect::<Vec<_>>());

    // Below the first retained event, a read starts at it.
    log.trim_front("t", 60).expect("trims");
    assert_eq!(
        seqs(&log.read("t", 1, 3, usize::MAX).expect("reads")),
        vec![61, 62, 63]
    );
}

#[test]
fn trimming_moves_the_front_survives_a_reopen_and_compactions_drop_the_keys() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    append_range(&log, "t", "e", 1..=50);
    append_range(&log, "other", "e", 1..=5);
    log.trim_front("t", 20).expect("trims");
    log.trim_front("t", 10)
        .expect("below the front: nothing to do");
    log.trim_front("unknown", 10)
        .expect("unknown topic: nothing to do");
    let record = log.topic("t").expect("a record");
    assert_eq!((record.low_seq, record.high_seq), (21, 50));
    assert_eq!(
        record.trimmed_until_ts, 1_020,
        "ts of the newest trimmed event"
    );
    assert_eq!(seqs(&all(&log, "t")), (21..=50).collect::<Vec<_>>());

    let (log, recovered) = reopen(log, dir.path());
    assert!(recovered.repairs.is_empty());
    assert_eq!(log.topic("t"), Some(record.clone()));
    assert_eq!(seqs(&all(&log, "t")), (21..=50).collect::<Vec<_>>());
    // Nothing was deleted by the trim itself; a compaction (with the rules loaded at
    // open) drops exactly what is below the front.
    assert_eq!(raw_keys(&log, "t").len(), 50);
    log.compact_now().expect("compacts");
    let generation = record.generation;
    assert_eq!(
        raw_keys(&log, "t"),
        (21..=50).map(|seq| (generation, seq)).collect::<Vec<_>>()
    );
    assert_eq!(raw_keys(&log, "other").len(), 5, "other topics keep theirs");

    // Trimming past the end empties the history but keeps the position.
    log.trim_front("t", u64::MAX).expect("trims");
    let emptied = log.topic("t").expect("the record stays");
    assert!(emptied.is_empty());
    assert_eq!(
        (emptied.low_seq, emptied.high_seq, emptied.trimmed_until_ts),
        (51, 50, 1_050)
    );
    let (log, _) = reopen(log, dir.path());
    assert_eq!(log.topic("t"), Some(emptied));
    assert!(all(&log, "t").is_empty());
    // The next event follows.
    append_range(&log, "t", "e", 51..=51);
    let record = log.topic("t").expect("a record");
    assert_eq!(
        (record.low_seq, record.high_seq, record.generation),
        (51, 51, generation)
    );
}

#[test]
fn forgetting_failed_events_survives_a_reopen_and_their_positions_can_be_written_again() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    append_range(&log, "t", "e1", 1..=10);
    log.forget_from("t", "other", 5)
        .expect("another epoch: nothing to do");
    log.forget_from("t", "e1", 11)
        .expect("past the end: nothing to do");
    log.forget_from("unknown", "e1", 1)
        .expect("unknown topic: nothing to do");
    assert_eq!(log.topic("t").expect("a record").high_seq, 10);

    log.forget_from("t", "e1", 8).expect("forgets");
    let record = log.topic("t").expect("a record");
    assert_eq!((record.low_seq, record.high_seq), (1, 7));
    assert_eq!(raw_keys(&log, "t").len(), 7, "the tail's keys are deleted");
    let (log, recovered) = reopen(log, dir.path());
    assert!(recovered.repairs.is_empty());
    assert_eq!(log.topic("t"), Some(record.clone()));
    assert_eq!(seqs(&all(&log, "t")), (1..=7).collect::<Vec<_>>());

    // The owner's event for position 8 takes its place.
    let owners = event_with("t", "e1", 8, "\"owner's\"".into());
    log.append(std::slice::from_ref(&owners)).expect("appends");
    let (log, _) = reopen(log, dir.path());
    let read = all(&log, "t");
    assert_eq!(seqs(&read), (1..=8).collect::<Vec<_>>());
    assert_same(&read[7], &owners);

    // Forgetting everything retained moves the topic to a fresh generation.
    log.trim_front("t", 2).expect("trims");
    log.forget_from("t", "e1", 1).expect("forgets");
    let emptied = log.topic("t").expect("the record stays");
    assert!(emptied.is_empty());
    assert_eq!((emptied.low_seq, emptied.high_seq), (3, 2));
    assert_ne!(emptied.generation, record.generation);
    append_range(&log, "t", "e1", 3..=4);
    let (log, _) = reopen(log, dir.path());
    assert_eq!(seqs(&all(&log, "t")), vec![3, 4]);
    log.compact_now().expect("compacts");
    let generation = log.topic("t").expect("a record").generation;
    assert_eq!(raw_keys(&log, "t"), vec![(generation, 3), (generation, 4)]);
}

#[test]
fn replace_swaps_a_history_for_a_copy_and_the_old_one_is_compacted_away() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    append_range(&log, "t", "e1", 1..=10);
    log.set_committed("t", "e1", 6).expect("commits");
    let before = log.topic("t").expect("a record");

    let copy: Vec<_> = (5..=9)
        .map(|seq| event_with("t", "e1", seq, format!("\"copy {seq}\"")))
        .collect();
    log.replace("t", &copy).expect("replaces");
    let record = log.topic("t").expect("a record");
    assert_eq!((record.low_seq, record.high_seq), (5, 9));
    assert_eq!(
        record.committed_seq, 6,
        "same epoch: what was committed stays"
    );
    assert_eq!(record.trimmed_until_ts, 1_005, "joined mid-sequence");
    assert_ne!(record.generation, before.generation);
    let (log, _) = reopen(log, dir.path());
    let read = all(&log, "t");
    assert_eq!(read.len(), copy.len());
    for (a, b) in copy.iter().zip(&read) {
        assert_same(a, b);
    }

    // Refused whole: an event of another topic.
    let wrong = vec![event("t", "e2", 1), event("u", "e2", 2)];
    assert!(matches!(
        log.replace("t", &wrong),
        Err(StorageError::Invalid(_))
    ));
    assert_eq!(log.topic("t"), Some(record.clone()));

    log.replace("t", &[event("t", "e2", 1), event("t", "e2", 2)])
        .expect("replaces");
    let record = log.topic("t").expect("a record");
    assert_eq!(
        (
            &*record.epoch,
            record.low_seq,
            record.high_seq,
            record.committed_seq
        ),
        ("e2", 1, 2, 0)
    );
    log.compact_now().expect("compacts");
    assert_eq!(
        raw_keys(&log, "t"),
        vec![(record.generation, 1), (record.generation, 2)]
    );

    log.replace("t", &[]).expect("replaces with nothing");
    assert_eq!(log.topic("t"), None);
    let (log, recovered) = reopen(log, dir.path());
    assert!(recovered.topics.is_empty());
    assert!(all(&log, "t").is_empty());
}

#[test]
fn appends_follow_or_start_afresh_as_the_memory_backend_does() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    append_range(&log, "t", "e1", 1..=5);
    let first = log.topic("t").expect("a record");
    log.set_committed("t", "e1", 4).expect("commits");
    log.set_committed("t", "e1", 2).expect("lower: ignored");
    log.set_committed("t", "e0", 9)
        .expect("another epoch: ignored");
    assert_eq!(log.topic("t").expect("a record").committed_seq, 4);

    // A jump in the same epoch starts afresh (the committed seq stays with the epoch).
    append_range(&log, "t", "e1", 8..=8);
    let jumped = log.topic("t").expect("a record");
    assert_eq!(
        (jumped.low_seq, jumped.high_seq, jumped.committed_seq),
        (8, 8, 4)
    );
    assert_eq!(jumped.trimmed_until_ts, 1_008);
    assert_ne!(jumped.generation, first.generation);
    // So does a position already held (sent again).
    append_range(&log, "t", "e1", 8..=8);
    assert_ne!(
        log.topic("t").expect("a record").generation,
        jumped.generation
    );
    // And a new epoch, from 1.
    append_range(&log, "t", "e2", 1..=3);
    let renewed = log.topic("t").expect("a record");
    assert_eq!(
        (&*renewed.epoch, renewed.low_seq, renewed.high_seq),
        ("e2", 1, 3)
    );
    assert_eq!((renewed.committed_seq, renewed.trimmed_until_ts), (0, 0));
    assert_eq!(seqs(&all(&log, "t")), vec![1, 2, 3]);
    assert!(all(&log, "t").iter().all(|e| &*e.epoch == "e2"));

    // In one batch: a topic's events may follow each other and start afresh midway.
    log.append(&[
        event("u", "x", 1),
        event("t", "e2", 4),
        event("u", "x", 2),
        event("u", "y", 1),
    ])
    .expect("appends");
    let (log, _) = reopen(log, dir.path());
    assert_eq!(seqs(&all(&log, "t")), vec![1, 2, 3, 4]);
    let u = all(&log, "u");
    assert_eq!((seqs(&u), &*u[0].epoch), (vec![1], "y"));
}

#[test]
fn a_forgotten_topic_is_gone_after_a_reopen_and_from_the_disk_after_a_compaction() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    append_range(&log, "t", "e", 1..=20);
    append_range(&log, "keep", "e", 1..=3);
    log.forget_topic("t").expect("forgets");
    log.forget_topic("never-seen").expect("nothing to do");
    assert_eq!(log.topic("t"), None);
    assert!(all(&log, "t").is_empty());
    let (log, recovered) = reopen(log, dir.path());
    assert_eq!(recovered.topics.len(), 1);
    assert_eq!(log.topic("t"), None);
    // Re-created, it numbers from 1 in a new generation: the old keys are never read.
    append_range(&log, "t", "e2", 1..=2);
    assert_eq!(seqs(&all(&log, "t")), vec![1, 2]);
    log.compact_now().expect("compacts");
    let generation = log.topic("t").expect("a record").generation;
    assert_eq!(raw_keys(&log, "t"), vec![(generation, 1), (generation, 2)]);
    assert_eq!(raw_keys(&log, "keep").len(), 3);
}

#[test]
fn what_cannot_be_read_back_is_refused_before_anything_is_written() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    for bad in [
        event("t", "e", 0),
        event("", "e", 1),
        event(&"x".repeat(MAX_TOPIC_BYTES + 1), "e", 1),
        event("t", "", 1),
    ] {
        let result = log.append(&[event("t", "e", 1), bad]);
        assert!(
            matches!(result, Err(StorageError::Invalid(_))),
            "{result:?}"
        );
    }
    assert_eq!(log.topic("t"), None);
}

#[test]
fn a_second_opening_of_the_same_directory_is_refused() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) = open(dir.path());
    let second = DiskLog::open(dir.path(), FsyncMode::Never);
    assert!(matches!(second, Err(StorageError::Locked)), "{second:?}");
    drop(log);
    DiskLog::open(dir.path(), FsyncMode::Never).expect("free again once dropped");
}

#[test]
fn a_directory_that_cannot_be_made_is_an_error_not_a_panic() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("writes");
    let result = DiskLog::open(file.join("history"), FsyncMode::Always);
    assert!(result.is_err());
}

#[test]
fn interval_mode_syncs_in_the_background_and_its_thread_stops_on_drop() {
    let dir = TempDir::new().expect("temp dir");
    let (log, _) =
        DiskLog::open(dir.path(), FsyncMode::Interval(Duration::from_millis(5))).expect("opens");
    append_range(&log, "t", "e", 1..=3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.background_syncs() < 2 {
        assert!(Instant::now() < deadline, "no background sync within 10 s");
        thread::sleep(Duration::from_millis(5));
    }
    let flusher = log.flusher.as_ref().expect("a flusher");
    let syncs = flusher.syncs.clone();
    drop(log);
    // The thread held the last other reference to its counter and a database handle.
    assert_eq!(Arc::strong_count(&syncs), 1, "the thread has ended");
    let after_drop = syncs.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(30));
    assert_eq!(syncs.load(Ordering::Relaxed), after_drop);
    let (log, _) = DiskLog::open(dir.path(), FsyncMode::Always).expect("reopens: nothing holds it");
    assert_eq!(seqs(&all(&log, "t")), vec![1, 2, 3]);
    assert_eq!(log.background_syncs(), 0);
}

#[test]
fn the_log_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<DiskLog>();
}
