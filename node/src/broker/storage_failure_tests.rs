//! What the broker does when its history refuses a write (a full disk, say): nothing the
//! store did not keep is sent, fanned out, acknowledged or remembered. The memory backend
//! never fails, so these tests put a store in its place that fails on demand.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::test_support::{drain, json, subscription};
use super::{Broker, Outbox, Sequenced, TopicSnapshot, now_ms};
use crate::broker::sequencing::ReplicaRefusal;
use crate::cluster::link::{PeerLink, PeerMessage};
use crate::event::Event;
use crate::routing::dedupe::PublishId;
use crate::storage::{HistoryBudget, HistoryStore, MemoryHistory, Replay, Retention, StorageError};

/// A memory store whose writes fail while `fail` is set, as a disk's would when full.
#[derive(Debug)]
struct FailingHistory {
    inner: MemoryHistory,
    fail: Arc<AtomicBool>,
    /// `writable` refuses while writes fail (a store that knows it failed and refuses until
    /// reopened); otherwise it says yes and the write itself fails, as the first one on a
    /// full disk does.
    refuse_until_reopened: bool,
}

impl FailingHistory {
    fn refused(&self) -> Result<(), StorageError> {
        if self.fail.load(Ordering::Relaxed) {
            Err(StorageError::DiskFull(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            )))
        } else {
            Ok(())
        }
    }
}

impl HistoryStore for FailingHistory {
    fn writable(&self) -> Result<(), StorageError> {
        if self.refuse_until_reopened {
            self.refused()
        } else {
            Ok(())
        }
    }
    fn append(&mut self, event: Arc<Event>, now_ms: i64) -> Result<(), StorageError> {
        self.refused()?;
        self.inner.append(event, now_ms)
    }
    fn replace(
        &mut self,
        topic: &str,
        events: Vec<Arc<Event>>,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        self.refused()?;
        self.inner.replace(topic, events, now_ms)
    }
    fn forget_from(&mut self, topic: &str, epoch: &str, seq: u64) {
        self.inner.forget_from(topic, epoch, seq);
    }
    fn expire(&mut self, now_ms: i64) {
        self.inner.expire(now_ms);
    }
    fn trim_oldest(&mut self, bytes: usize, spare: Option<&str>) -> usize {
        self.inner.trim_oldest(bytes, spare)
    }
    fn forget_one(&mut self, topic: &str) {
        self.inner.forget_one(topic);
    }
    fn knows(&self, topic: &str) -> bool {
        self.inner.knows(topic)
    }
    fn get(&self, topic: &str, epoch: &str, seq: u64) -> Option<Arc<Event>> {
        self.inner.get(topic, epoch, seq)
    }
    fn earliest(&self, topic: &str) -> Replay {
        self.inner.earliest(topic)
    }
    fn after(&self, topic: &str, epoch: &str, seq: u64) -> Replay {
        self.inner.after(topic, epoch, seq)
    }
    fn since(&self, topic: &str, since_ms: i64) -> Replay {
        self.inner.since(topic, since_ms)
    }
    fn topics(&self) -> usize {
        self.inner.topics()
    }
    fn events(&self) -> usize {
        self.inner.events()
    }
    fn bytes(&self) -> usize {
        self.inner.bytes()
    }
    fn budget(&self) -> &HistoryBudget {
        self.inner.budget()
    }
}

/// A broker whose history fails while the returned switch is on.
fn failing_broker() -> (Broker, Arc<AtomicBool>) {
    failing_broker_that(false)
}

/// The same, with `FailingHistory::refuse_until_reopened` set as given.
fn failing_broker_that(refuse_until_reopened: bool) -> (Broker, Arc<AtomicBool>) {
    let fail = Arc::new(AtomicBool::new(false));
    let retention = Retention::default();
    let switch = fail.clone();
    let broker = Broker::new(retention.clone()).with_history(move || {
        Box::new(FailingHistory {
            inner: MemoryHistory::new(retention.clone()),
            fail: switch.clone(),
            refuse_until_reopened,
        })
    });
    (broker, fail)
}

fn replicated_seqs(queues: &mut crate::cluster::link::LinkQueues) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Ok(message) = queues.control.try_recv() {
        if let PeerMessage::Replicate(event) = message {
            seqs.push(event.seq);
        }
    }
    seqs
}

#[test]
fn an_owner_that_cannot_store_an_event_refuses_it_sends_nothing_and_gives_its_position_back() {
    let (owner, fail) = failing_broker();
    let outbox = Outbox::new(1, 1024);
    subscription(&owner, "s", "t", None, &outbox);
    let epoch = owner.install_topic("t", None);
    let (replica, mut queues) = PeerLink::new("r", 1, 16);
    let replicas = [replica];

    // Stored and confirmed: delivered.
    let Sequenced::Waiting(first, _) = owner.sequence("t", json("1"), &replicas, true) else {
        panic!("a replica to wait for");
    };
    owner.on_stored("r", "t", &epoch, first.seq);
    // Sequenced, not yet confirmed by the replica when the next write fails.
    let Sequenced::Waiting(_, mut second_stored) = owner.sequence("t", json("2"), &replicas, true)
    else {
        panic!("a replica to wait for");
    };
    assert_eq!(replicated_seqs(&mut queues), vec![1, 2]);
    assert_eq!(drain(&outbox).len(), 1);

    fail.store(true, Ordering::Relaxed);
    let refused = owner.sequence_holding(
        "t",
        json("3"),
        Some(PublishId::client("p3")),
        &replicas,
        true,
        None,
    );
    let Sequenced::Failed(error) = refused else {
        panic!("the store refused it: {refused:?}");
    };
    assert!(error.is_disk_full(), "{error}");
    assert!(
        replicated_seqs(&mut queues).is_empty(),
        "no copy of it sent"
    );
    assert!(drain(&outbox).is_empty(), "nothing fanned out");
    assert_eq!(owner.stats.events_not_stored.load(Ordering::Relaxed), 1);

    // The event before it was stored here: it goes on, and is delivered once its replica
    // confirms it.
    owner.on_stored("r", "t", &epoch, 2);
    assert!(second_stored.try_recv().is_ok(), "confirmed");
    let delivered = drain(&outbox);
    assert_eq!(delivered.iter().map(|d| d.1).collect::<Vec<_>>(), vec![2]);
    assert!(owner.is_ready("t"), "still sequenced here");

    // Room again: the refused position is numbered again, in the same epoch, and the same
    // publish id makes the event (it was never remembered).
    fail.store(false, Ordering::Relaxed);
    let Sequenced::Done(again) = owner.sequence_holding(
        "t",
        json("3"),
        Some(PublishId::client("p3")),
        &[],
        true,
        None,
    ) else {
        panic!("stored without replicas");
    };
    assert_eq!((&*again.epoch, again.seq), (&*epoch, 3));
    let delivered = drain(&outbox);
    assert_eq!(delivered.iter().map(|d| d.1).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn a_store_that_refuses_writes_until_reopened_takes_no_position() {
    let (owner, fail) = failing_broker_that(true);
    let outbox = Outbox::new(1, 1024);
    subscription(&owner, "s", "t", None, &outbox);
    let epoch = owner.install_topic("t", None);
    owner.sequence("t", json("1"), &[], true);
    fail.store(true, Ordering::Relaxed);
    for _ in 0..3 {
        let refused = owner.sequence("t", json("x"), &[], true);
        assert!(matches!(refused, Sequenced::Failed(_)), "{refused:?}");
    }
    fail.store(false, Ordering::Relaxed);
    let Sequenced::Done(next) = owner.sequence("t", json("2"), &[], true) else {
        panic!("stored");
    };
    assert_eq!(
        (&*next.epoch, next.seq),
        (&*epoch, 2),
        "no position was used up"
    );
    assert_eq!(owner.stats.events_not_stored.load(Ordering::Relaxed), 3);
}

fn copy(seq: u64, id: &str) -> Arc<Event> {
    Arc::new(
        Event::new("t".into(), "e1".into(), seq, now_ms(), json("1"))
            .with_publish_id(Some(PublishId::client(id))),
    )
}

#[test]
fn a_replica_that_cannot_store_a_copy_refuses_it_and_records_nothing() {
    let (replica, fail) = failing_broker();
    fail.store(true, Ordering::Relaxed);
    assert_eq!(
        replica.store_replica(copy(1, "a")).unwrap_err(),
        ReplicaRefusal::StorageFailed
    );
    assert!(
        replica.topic_snapshot("t").is_none(),
        "the position is not kept"
    );
    let clock = replica.clock_ms();
    assert!(
        replica
            .shard("t")
            .lock()
            .dedupe
            .seen("t", &PublishId::client("a"), clock)
            .is_none(),
        "nor the publish id: a retry must not be answered with a position nobody stored"
    );
    fail.store(false, Ordering::Relaxed);
    replica.store_replica(copy(1, "a")).unwrap();
    let snapshot = replica.topic_snapshot("t").expect("stored now");
    assert_eq!(snapshot.last_seq, 1);
    assert_eq!(snapshot.events.len(), 1);
    assert_eq!(snapshot.ids.len(), 1);
}

#[test]
fn a_whole_copy_that_cannot_be_stored_is_dropped_not_kept_in_part() {
    let (replica, fail) = failing_broker();
    fail.store(true, Ordering::Relaxed);
    replica.store_copy(
        "t",
        TopicSnapshot {
            epoch: "e1".into(),
            last_seq: 2,
            events: vec![copy(1, "a"), copy(2, "b")],
            ids: Vec::new(),
        },
    );
    assert!(replica.topic_snapshot("t").is_none());
    assert_eq!(replica.stats.events_not_stored.load(Ordering::Relaxed), 1);
}

#[test]
fn a_claim_that_cannot_store_the_history_it_took_over_starts_a_new_epoch() {
    let (owner, fail) = failing_broker();
    fail.store(true, Ordering::Relaxed);
    let epoch = owner.install_topic(
        "t",
        Some(TopicSnapshot {
            epoch: "e1".into(),
            last_seq: 2,
            events: vec![copy(1, "a"), copy(2, "b")],
            ids: Vec::new(),
        }),
    );
    assert_ne!(&*epoch, "e1", "it holds none of e1's events");
    let snapshot = owner.topic_snapshot("t").expect("claimed");
    assert_eq!((snapshot.last_seq, snapshot.events.len()), (0, 0));
}
