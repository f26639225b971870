//! The contract of [`HistoryStore`], written once over the trait so that every backend runs
//! the same tests: a backend's test module calls [`contract_tests!`] with a constructor
//! (`Retention -> Box<dyn HistoryStore>`). Most of these were the memory store's own tests
//! before the seam; they pin what resumers are told (events, retention and epoch gaps) and
//! the byte accounting the node-wide budget relies on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Gap, HistoryStore, Replay, Retention, RetentionPolicy, reason, retained_bytes};
use crate::event::{Event, Payload};

/// Makes a store of the backend under test. Called more than once by some tests: stores
/// made from clones of one [`Retention`] must share its node-wide budget.
pub(crate) type NewStore<'a> = &'a dyn Fn(Retention) -> Box<dyn HistoryStore>;

/// One `#[test]` per contract function, for the backend `$new` makes.
macro_rules! contract_tests {
    ($new:expr) => {
        #[test]
        fn replays_what_follows_a_cursor() {
            $crate::storage::contract::replays_what_follows_a_cursor(&$new);
        }

        #[test]
        fn count_retention_yields_a_gap_naming_exactly_what_was_lost() {
            $crate::storage::contract::count_retention_yields_a_gap_naming_exactly_what_was_lost(&$new);
        }

        #[test]
        fn age_retention_trims_and_expires_topics() {
            $crate::storage::contract::age_retention_trims_and_expires_topics(&$new);
        }

        #[test]
        fn a_new_epoch_is_a_gap_then_the_new_epoch_from_its_start() {
            $crate::storage::contract::a_new_epoch_is_a_gap_then_the_new_epoch_from_its_start(&$new);
        }

        #[test]
        fn since_replays_topics_new_to_the_subscriber() {
            $crate::storage::contract::since_replays_topics_new_to_the_subscriber(&$new);
        }

        #[test]
        fn prefix_overrides_pick_the_longest_match() {
            $crate::storage::contract::prefix_overrides_pick_the_longest_match(&$new);
        }

        #[test]
        fn a_topic_keeps_at_most_its_bytes_and_reports_the_rest_as_a_retention_gap() {
            $crate::storage::contract::a_topic_keeps_at_most_its_bytes_and_reports_the_rest_as_a_retention_gap(&$new);
        }

        #[test]
        fn one_event_over_the_topic_bound_is_kept_until_the_next() {
            $crate::storage::contract::one_event_over_the_topic_bound_is_kept_until_the_next(&$new);
        }

        #[test]
        fn the_node_bound_holds_across_stores_and_the_growing_topic_pays() {
            $crate::storage::contract::the_node_bound_holds_across_stores_and_the_growing_topic_pays(&$new);
        }

        #[test]
        fn trimming_for_room_takes_the_oldest_events_across_topics_first() {
            $crate::storage::contract::trimming_for_room_takes_the_oldest_events_across_topics_first(&$new);
        }

        #[test]
        fn every_way_out_of_the_store_gives_its_bytes_back() {
            $crate::storage::contract::every_way_out_of_the_store_gives_its_bytes_back(&$new);
        }

        #[test]
        fn a_history_that_starts_mid_sequence_reports_what_came_before() {
            $crate::storage::contract::a_history_that_starts_mid_sequence_reports_what_came_before(&$new);
        }

        #[test]
        fn failed_events_copies_and_forgotten_topics() {
            $crate::storage::contract::failed_events_copies_and_forgotten_topics(&$new);
        }
    };
}
pub(crate) use contract_tests;

/// Retention of `max_events` and `max_age_s`, the default byte bounds.
pub(crate) fn retention(max_events: usize, max_age_s: u64) -> Retention {
    Retention::new(
        RetentionPolicy {
            max_events,
            max_age: Duration::from_secs(max_age_s),
            max_bytes: RetentionPolicy::DEFAULT_MAX_BYTES,
        },
        Retention::DEFAULT_MAX_TOTAL_BYTES,
    )
}

fn event(topic: &str, epoch: &str, seq: u64, ts: i64) -> Arc<Event> {
    Arc::new(Event::new(
        topic.into(),
        epoch.into(),
        seq,
        ts,
        Payload::Json(Bytes::from_static(b"0")),
    ))
}

fn seqs(replay: &Replay) -> Vec<u64> {
    replay.events.iter().map(|e| e.seq).collect()
}

pub(crate) fn replays_what_follows_a_cursor(new: NewStore<'_>) {
    let mut store = new(retention(100, 3600));
    for seq in 1..=5 {
        store
            .append(event("t", "e1", seq, 1000 + seq as i64), 2000)
            .expect("the store takes it");
    }
    assert_eq!(seqs(&store.after("t", "e1", 2)), vec![3, 4, 5]);
    assert!(store.after("t", "e1", 2).gaps.is_empty());
    assert!(store.after("t", "e1", 5).events.is_empty(), "up to date");
    assert!(
        store.after("t", "e1", 9).events.is_empty(),
        "ahead: nothing to send"
    );
    assert_eq!(seqs(&store.earliest("t")), vec![1, 2, 3, 4, 5]);
    assert!(store.after("never", "e1", 0).events.is_empty());
}

pub(crate) fn count_retention_yields_a_gap_naming_exactly_what_was_lost(new: NewStore<'_>) {
    let mut store = new(retention(3, 3600));
    for seq in 1..=10 {
        store
            .append(event("t", "e1", seq, seq as i64), 10)
            .expect("the store takes it");
    }
    let replay = store.after("t", "e1", 4);
    assert_eq!(
        replay.gaps,
        vec![Gap {
            topic: "t".into(),
            epoch: "e1".into(),
            from_seq: 5,
            to_seq: 7,
            reason: reason::RETENTION
        }]
    );
    assert_eq!(seqs(&replay), vec![8, 9, 10]);
    assert!(
        store.earliest("t").gaps.is_empty(),
        "earliest claims nothing seen"
    );
    assert_eq!(seqs(&store.earliest("t")), vec![8, 9, 10]);
}

pub(crate) fn age_retention_trims_and_expires_topics(new: NewStore<'_>) {
    let mut store = new(retention(100, 10));
    store
        .append(event("old", "e", 1, 1_000), 1_000)
        .expect("the store takes it");
    store
        .append(event("old", "e", 2, 5_000), 5_000)
        .expect("the store takes it");
    store
        .append(event("new", "e", 1, 14_000), 14_000)
        .expect("the store takes it");
    store.expire(12_000);
    assert_eq!(seqs(&store.earliest("old")), vec![2]);
    store.expire(30_000);
    assert_eq!(store.topics(), 0);
    assert_eq!(store.events(), 0);
    // What was trimmed is still known.
    let replay = store.after("old", "e", 0);
    assert_eq!(replay.gaps.len(), 1);
    assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 2));
    assert_eq!(
        store.since("old", 2_000).gaps.len(),
        1,
        "trimmed events were newer"
    );
    assert!(store.since("old", 9_000).gaps.is_empty());
}

pub(crate) fn a_new_epoch_is_a_gap_then_the_new_epoch_from_its_start(new: NewStore<'_>) {
    let mut store = new(retention(100, 3600));
    store
        .append(event("t", "e1", 1, 1), 1)
        .expect("the store takes it");
    store
        .append(event("t", "e1", 2, 2), 2)
        .expect("the store takes it");
    store
        .append(event("t", "e2", 1, 3), 3)
        .expect("the store takes it");
    store
        .append(event("t", "e2", 2, 4), 4)
        .expect("the store takes it");
    let replay = store.after("t", "e1", 1);
    assert_eq!(replay.gaps.len(), 1);
    assert_eq!(replay.gaps[0].reason, reason::EPOCH_CHANGED);
    assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (2, 0));
    assert_eq!(&*replay.gaps[0].epoch, "e1");
    assert_eq!(seqs(&replay), vec![1, 2]);
    assert!(replay.events.iter().all(|e| &*e.epoch == "e2"));
}

pub(crate) fn since_replays_topics_new_to_the_subscriber(new: NewStore<'_>) {
    let mut store = new(retention(2, 3600));
    for seq in 1..=4 {
        store
            .append(event("t", "e", seq, seq as i64 * 100), 500)
            .expect("the store takes it");
    }
    // Retained: 3 (ts 300) and 4 (ts 400); trimmed up to ts 200.
    let recent = store.since("t", 250);
    assert!(recent.gaps.is_empty());
    assert_eq!(seqs(&recent), vec![3, 4]);
    let long_ago = store.since("t", 50);
    assert_eq!(
        long_ago.gaps.len(),
        1,
        "trimmed events were published after `since`"
    );
    assert_eq!((long_ago.gaps[0].from_seq, long_ago.gaps[0].to_seq), (1, 2));
    assert_eq!(seqs(&long_ago), vec![3, 4]);
}

pub(crate) fn prefix_overrides_pick_the_longest_match(new: NewStore<'_>) {
    let mut r = retention(10, 60);
    let small = RetentionPolicy {
        max_events: 1,
        ..r.default
    };
    let none = RetentionPolicy {
        max_events: 0,
        ..r.default
    };
    r.overrides = vec![("chat.".into(), small), ("chat.ephemeral.".into(), none)];
    assert_eq!(r.policy("chat.lobby"), small);
    assert_eq!(r.policy("chat.ephemeral.typing"), none);
    assert_eq!(r.policy("orders"), r.default);
    let mut store = new(r);
    store
        .append(event("chat.ephemeral.typing", "e", 1, 1), 1)
        .expect("the store takes it");
    assert_eq!(store.topics(), 0, "max_events 0 keeps nothing");
    assert_eq!(store.events(), 0);
    let missed = store.since("chat.ephemeral.typing", 0);
    assert!(missed.events.is_empty());
    assert_eq!(missed.gaps.len(), 1, "but says what was published");
    store
        .append(event("chat.lobby", "e", 1, 1), 1)
        .expect("the store takes it");
    store
        .append(event("chat.lobby", "e", 2, 1), 1)
        .expect("the store takes it");
    assert_eq!(seqs(&store.earliest("chat.lobby")), vec![2]);
}

fn sized(topic: &str, seq: u64, payload_bytes: usize) -> Arc<Event> {
    let text = format!("\"{}\"", "x".repeat(payload_bytes - 2));
    Arc::new(Event::new(
        topic.into(),
        "e".into(),
        seq,
        seq as i64,
        Payload::Json(Bytes::from(text)),
    ))
}

fn policy(max_bytes: usize) -> RetentionPolicy {
    RetentionPolicy {
        max_events: 1000,
        max_age: Duration::from_secs(3600),
        max_bytes,
    }
}

pub(crate) fn a_topic_keeps_at_most_its_bytes_and_reports_the_rest_as_a_retention_gap(
    new: NewStore<'_>,
) {
    let one = retained_bytes(&sized("t", 1, 10_000));
    let mut store = new(Retention::new(policy(3 * one), usize::MAX));
    for seq in 1..=10 {
        store
            .append(sized("t", seq, 10_000), 10)
            .expect("the store takes it");
    }
    assert_eq!(store.events(), 3);
    assert_eq!(store.bytes(), 3 * one);
    let replay = store.after("t", "e", 0);
    assert_eq!(replay.gaps.len(), 1);
    assert_eq!(replay.gaps[0].reason, reason::RETENTION);
    assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 7));
    assert_eq!(replay.events.len(), 3);
}

pub(crate) fn one_event_over_the_topic_bound_is_kept_until_the_next(new: NewStore<'_>) {
    let mut store = new(Retention::new(policy(100), usize::MAX));
    store
        .append(sized("t", 1, 10_000), 10)
        .expect("the store takes it");
    assert_eq!(store.events(), 1, "the newest event stays");
    store
        .append(sized("t", 2, 10_000), 10)
        .expect("the store takes it");
    assert_eq!(store.events(), 1);
    assert_eq!(store.earliest("t").events[0].seq, 2);
}

pub(crate) fn the_node_bound_holds_across_stores_and_the_growing_topic_pays(new: NewStore<'_>) {
    let one = retained_bytes(&sized("a", 1, 1_000));
    let retention = Retention::new(policy(usize::MAX), 10 * one);
    let budget = retention.budget.clone();
    // Two stores (two shards of one broker) share the node's budget.
    let mut first = new(retention.clone());
    let mut second = new(retention);
    for seq in 1..=6 {
        first
            .append(sized("a", seq, 1_000), 10)
            .expect("the store takes it");
    }
    for seq in 1..=20 {
        second
            .append(sized("b", seq, 1_000), 10)
            .expect("the store takes it");
    }
    assert!(budget.used() <= budget.limit(), "{}", budget.used());
    assert_eq!(budget.used(), first.bytes() + second.bytes());
    assert_eq!(first.events(), 6, "a quiet topic keeps what it had");
    assert_eq!(second.events(), 4, "the growing topic gave up its oldest");
    let replay = second.after("b", "e", 0);
    assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 16));
}

pub(crate) fn trimming_for_room_takes_the_oldest_events_across_topics_first(new: NewStore<'_>) {
    let mut store = new(Retention::new(policy(usize::MAX), usize::MAX));
    // ts = seq: a's events are older than b's.
    for seq in 1..=3 {
        store
            .append(sized("a", seq, 100), 10)
            .expect("the store takes it");
    }
    for seq in 4..=6 {
        store
            .append(sized("b", seq, 100), 10)
            .expect("the store takes it");
    }
    let one = retained_bytes(&sized("a", 1, 100));
    assert_eq!(store.trim_oldest(4 * one, Some("x")), 4 * one);
    assert!(store.earliest("a").events.is_empty());
    assert_eq!(store.earliest("b").events[0].seq, 5);
    assert_eq!(store.trim_oldest(10 * one, Some("b")), 0, "b is spared");
    assert_eq!(store.after("b", "e", 4).events.len(), 2);
}

pub(crate) fn every_way_out_of_the_store_gives_its_bytes_back(new: NewStore<'_>) {
    let retention = Retention::new(policy(usize::MAX), usize::MAX);
    let budget = retention.budget.clone();
    let mut store = new(retention);
    for seq in 1..=5 {
        store
            .append(sized("a", seq, 100), 10)
            .expect("the store takes it");
        store
            .append(sized("b", seq, 100), 10)
            .expect("the store takes it");
        store
            .append(sized("c", seq, 100), 10)
            .expect("the store takes it");
    }
    store.forget_from("a", "e", 3);
    assert_eq!(budget.used(), store.bytes());
    store.forget_one("b");
    assert_eq!(budget.used(), store.bytes());
    store
        .replace("c", vec![sized("c", 9, 100)], 10)
        .expect("the store takes it");
    assert_eq!(budget.used(), store.bytes());
    // A new epoch starts the history afresh.
    store
        .append(
            Arc::new(Event::new(
                "c".into(),
                "e2".into(),
                1,
                11,
                Payload::Json(Bytes::from_static(b"1")),
            )),
            11,
        )
        .expect("the store takes it");
    assert_eq!(budget.used(), store.bytes());
    store.expire(i64::MAX);
    assert_eq!(budget.used(), 0);
    assert_eq!(store.bytes(), 0);
}

pub(crate) fn a_history_that_starts_mid_sequence_reports_what_came_before(new: NewStore<'_>) {
    let mut store = new(Retention::default());
    let event = Arc::new(Event::new(
        "t".into(),
        "e".into(),
        3,
        5_000,
        Payload::Json(Bytes::from_static(b"0")),
    ));
    store.append(event, 5_000).expect("the store takes it");
    let replay = store.since("t", 1_000);
    assert_eq!(replay.gaps.len(), 1);
    assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 2));
    assert!(store.since("t", 6_000).gaps.is_empty());
}

pub(crate) fn failed_events_copies_and_forgotten_topics(new: NewStore<'_>) {
    let retention = retention(100, 3600);
    let budget = retention.budget.clone();
    let mut store = new(retention);
    assert!(!store.knows("t"));
    for seq in 1..=5 {
        store
            .append(event("t", "e", seq, seq as i64), 10)
            .expect("the store takes it");
    }
    assert!(store.knows("t"));
    assert_eq!(store.get("t", "e", 3).map(|e| e.seq), Some(3));
    assert!(
        store.get("t", "other", 3).is_none(),
        "another epoch's position"
    );
    assert!(store.get("t", "e", 6).is_none());
    // Failed at the end: gone, and not a gap (they were never published).
    store.forget_from("t", "e", 4);
    assert!(store.get("t", "e", 4).is_none());
    assert_eq!(seqs(&store.after("t", "e", 0)), vec![1, 2, 3]);
    assert!(store.after("t", "e", 0).gaps.is_empty());
    store.forget_from("t", "other", 1);
    assert_eq!(
        store.events(),
        3,
        "another epoch's failure leaves this one alone"
    );
    // The next event takes the failed one's position.
    store
        .append(event("t", "e", 4, 20), 20)
        .expect("the store takes it");
    assert_eq!(seqs(&store.earliest("t")), vec![1, 2, 3, 4]);
    // A copy from the owner replaces everything, even mid-sequence.
    store
        .replace(
            "t",
            vec![event("t", "e2", 7, 30), event("t", "e2", 8, 31)],
            31,
        )
        .expect("the store takes it");
    assert_eq!(seqs(&store.earliest("t")), vec![7, 8]);
    assert!(store.get("t", "e", 1).is_none());
    let replay = store.after("t", "e2", 2);
    assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (3, 6));
    assert_eq!(store.bytes(), budget.used());
    store
        .append(event("u", "e", 1, 40), 40)
        .expect("the store takes it");
    store.forget(&["t".into(), "u".into()]);
    assert!(!store.knows("t") && !store.knows("u"));
    assert_eq!((store.topics(), store.events(), store.bytes()), (0, 0, 0));
    assert_eq!(budget.used(), 0);
    assert!(store.after("t", "e2", 0).events.is_empty() && store.since("t", 0).gaps.is_empty());
}
