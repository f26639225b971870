//! The sweep that forgets idle topics: which topics go, which stay, and what a resume from a
//! forgotten topic's cursor gets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Broker, ReplayPage, now_ms};
use crate::event::Payload;
use crate::protocol::{Cursor, ResumeFrom};
use crate::storage::{Retention, RetentionPolicy, reason};

const IDLE: Duration = Duration::from_secs(2);

fn broker(max_events: usize, max_age: Duration) -> Broker {
    Broker::new(Retention::new(
        RetentionPolicy {
            max_events,
            max_age,
            max_bytes: RetentionPolicy::DEFAULT_MAX_BYTES,
        },
        Retention::DEFAULT_MAX_TOTAL_BYTES,
    ))
    .with_topic_idle_forget(IDLE)
}

/// Sweeps as if `ms` had passed.
fn sweep_later(broker: &Broker, ms: i64, claimed: &[Arc<str>]) -> usize {
    broker.sweep_at(now_ms() + ms, broker.clock_ms() + ms, claimed)
}

fn json(text: &'static str) -> Payload {
    Payload::Json(Bytes::from_static(text.as_bytes()))
}

fn after(epoch: &str, seq: u64) -> ResumeFrom {
    ResumeFrom::Cursor(Cursor {
        epoch: epoch.to_owned(),
        seq,
    })
}

#[test]
fn an_expired_topic_is_forgotten_once_idle_and_comes_back_in_a_new_epoch() {
    let broker = broker(1000, Duration::from_secs(1));
    let epoch = broker.publish("t", json("1")).epoch;
    broker.publish("t", json("2"));
    broker.publish("t", json("3"));

    // History expired, the topic not yet idle long enough: a resume learns exactly what
    // it missed.
    assert_eq!(sweep_later(&broker, 1_500, &[]), 0);
    assert_eq!(broker.history_size(), (0, 0));
    assert_eq!(broker.topics_known(), 1);
    let replay = broker
        .replay_candidates("t", &after(&epoch, 1), ReplayPage::UNBOUNDED)
        .unwrap();
    let gap = &replay[0].replay.gaps[0];
    assert_eq!(
        (gap.reason, gap.from_seq, gap.to_seq),
        (reason::RETENTION, 2, 3)
    );

    // Idle past `topic_idle_forget`: forgotten. This node has nothing to say about the
    // cursor any more (the cluster's replay then names it `epoch_changed`).
    assert_eq!(sweep_later(&broker, 3_000, &[]), 1);
    assert_eq!(broker.topics_known(), 0);
    assert!(broker.topic_snapshot("t").is_none());
    assert!(
        broker
            .replay_candidates("t", &after(&epoch, 3), ReplayPage::UNBOUNDED)
            .unwrap()
            .is_empty()
    );

    // Published again: a new epoch from 1, never the old epoch restarted.
    let again = broker.publish("t", json("4"));
    assert_ne!(again.epoch, epoch);
    assert_eq!(again.seq, 1);
    let replay = broker
        .replay_candidates("t", &after(&epoch, 3), ReplayPage::UNBOUNDED)
        .unwrap();
    let gap = &replay[0].replay.gaps[0];
    assert_eq!(
        (gap.reason, &*gap.epoch, gap.from_seq, gap.to_seq),
        (reason::EPOCH_CHANGED, &*epoch, 4, 0)
    );
    assert_eq!(replay[0].replay.events.len(), 1);
    assert_eq!(replay[0].replay.events[0].seq, 1);
}

#[test]
fn a_topic_with_retained_history_is_kept_however_quiet() {
    let broker = broker(1000, Duration::from_secs(3600));
    broker.publish("t", json("1"));
    assert_eq!(sweep_later(&broker, 60_000, &[]), 0);
    assert_eq!(broker.topics_known(), 1);
    assert_eq!(broker.history_size(), (1, 1));
}

#[test]
fn a_topic_that_keeps_no_history_is_forgotten_only_once_idle() {
    let broker = broker(0, Duration::from_secs(3600));
    let epoch = broker.publish("t", json("1")).epoch;
    assert_eq!(sweep_later(&broker, 1_000, &[]), 0, "still active");
    assert_eq!(
        broker.publish("t", json("2")).seq,
        2,
        "a topic published more often than topic_idle_forget keeps its epoch"
    );
    assert_eq!(sweep_later(&broker, 3_000, &[]), 1);
    assert_ne!(broker.publish("t", json("3")).epoch, epoch);
}

#[test]
fn a_topic_being_claimed_is_kept() {
    let broker = broker(1000, Duration::from_secs(1));
    broker.publish("t", json("1"));
    broker.publish("u", json("1"));
    let claimed: Arc<str> = "t".into();
    assert_eq!(sweep_later(&broker, 3_000, &[claimed]), 1);
    assert!(broker.topic_snapshot("t").is_some());
    assert!(broker.topic_snapshot("u").is_none());
}

#[test]
fn a_replicas_copy_is_forgotten_like_the_owners_state() {
    let owner = broker(1000, Duration::from_secs(1));
    let replica = broker(1000, Duration::from_secs(1));
    owner.publish("t", json("1"));
    let snapshot = owner.topic_snapshot("t").unwrap();
    for event in &snapshot.events {
        replica
            .store_replica(event.clone())
            .expect("a copy of a topic this node does not sequence is stored");
    }
    assert_eq!(replica.topics_known(), 1);
    assert!(
        !replica.is_ready("t"),
        "a copy is not sequenced by the replica"
    );
    assert_eq!(sweep_later(&replica, 3_000, &[]), 1);
    assert_eq!(replica.topics_known(), 0);
}

#[test]
fn forgetting_ten_thousand_topics_leaves_nothing_behind() {
    let broker = broker(10, Duration::from_secs(1));
    for n in 0..10_000 {
        broker.publish(&format!("many.{n}"), json("1"));
    }
    assert_eq!(broker.topics_known(), 10_000);
    assert_eq!(broker.history_size(), (10_000, 10_000));
    assert_eq!(sweep_later(&broker, 3_000, &[]), 10_000);
    assert_eq!(broker.topics_known(), 0);
    assert_eq!(broker.history_size(), (0, 0));
    let wildcard = ResumeFrom::Topics {
        topics: [(
            "many.7".to_owned(),
            Cursor {
                epoch: "e".into(),
                seq: 1,
            },
        )]
        .into(),
        since: 0,
    };
    assert!(
        broker
            .replay_candidates("many.>", &wildcard, ReplayPage::UNBOUNDED)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_topic_quiet_long_enough_is_forgotten_on_access_before_the_sweep_comes() {
    let broker = Broker::new(Retention::new(
        RetentionPolicy {
            max_events: 1000,
            max_age: Duration::from_millis(10),
            max_bytes: RetentionPolicy::DEFAULT_MAX_BYTES,
        },
        Retention::DEFAULT_MAX_TOTAL_BYTES,
    ))
    .with_topic_idle_forget(Duration::from_millis(30));
    let epoch = broker.publish("t", json("1")).epoch;
    assert!(broker.topic_snapshot("t").is_some());
    std::thread::sleep(Duration::from_millis(60));
    assert!(
        broker.topic_snapshot("t").is_none(),
        "a claim must not continue knowledge that may be older than what others forgot"
    );
    assert_eq!(broker.topics_known(), 0);
    assert!(!broker.is_ready("t"));
    assert_ne!(broker.publish("t", json("2")).epoch, epoch);
}

#[test]
fn retention_overrides_set_how_long_their_topics_are_remembered() {
    let long = RetentionPolicy {
        max_events: 10,
        max_age: Duration::from_secs(3600),
        max_bytes: RetentionPolicy::DEFAULT_MAX_BYTES,
    };
    let broker = Broker::new(Retention {
        overrides: vec![("audit.".into(), long)],
        ..Retention::new(
            RetentionPolicy {
                max_age: Duration::from_secs(1),
                ..long
            },
            Retention::DEFAULT_MAX_TOTAL_BYTES,
        )
    })
    .with_topic_idle_forget(IDLE);
    broker.publish("audit.x", json("1"));
    broker.publish("chat.x", json("1"));
    assert_eq!(sweep_later(&broker, 3_000, &[]), 1);
    assert!(broker.topic_snapshot("audit.x").is_some());
    assert_eq!(sweep_later(&broker, 3_601_000, &[]), 1);
    assert_eq!(broker.topics_known(), 0);
}
