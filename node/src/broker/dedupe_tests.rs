//! Idempotent publishing on the broker: a publish sent again with the same id gets the
//! first one's position, waits with it while it is in flight, fails with it, and is
//! answered the same by a replica that takes the topic over.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot::error::TryRecvError;

use super::test_support::{drain, json, subscription};
use super::{Broker, Outbox, Receipt, Sequenced, now_ms};
use crate::cluster::link::{PeerLink, PeerMessage};
use crate::event::Event;
use crate::routing::dedupe::PublishId;
use crate::storage::Retention;

fn id(text: &str) -> Option<PublishId> {
    Some(PublishId::client(text))
}

fn receipt_of(outcome: Sequenced) -> Receipt {
    match outcome {
        Sequenced::Done(r) | Sequenced::Waiting(r, _) => r,
        Sequenced::NotReady => panic!("the topic is held here"),
        Sequenced::Failed(error) => panic!("the memory store refused it: {error}"),
    }
}

#[test]
fn a_publish_sent_again_gets_the_first_position_and_makes_no_event() {
    let broker = Broker::new(Retention::default());
    broker.install_topic("t", None);
    let outbox = Outbox::new(1, 16);
    subscription(&broker, "s", "t", None, &outbox);
    let first = receipt_of(broker.sequence_holding("t", json("1"), id("a"), &[], true, None));
    let again = receipt_of(broker.sequence_holding("t", json("1"), id("a"), &[], true, None));
    assert_eq!(again, first);
    let other = receipt_of(broker.sequence_holding("t", json("2"), id("b"), &[], true, None));
    assert_eq!(other.seq, first.seq + 1, "another id is another event");
    assert_eq!(
        drain(&outbox).iter().map(|d| d.1).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        broker
            .stats
            .publish_duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The same id on another topic is another publish.
    broker.install_topic("u", None);
    let elsewhere = receipt_of(broker.sequence_holding("u", json("1"), id("a"), &[], true, None));
    assert_eq!(elsewhere.seq, 1);
}

#[test]
fn after_the_window_the_same_id_is_a_new_event() {
    let broker = Broker::new(Retention::default()).with_dedupe(Duration::from_secs(2), 1 << 20);
    broker.install_topic("t", None);
    let first = receipt_of(broker.sequence_holding("t", json("1"), id("a"), &[], true, None));
    broker.sweep_at(now_ms() + 2_000, broker.clock_ms() + 2_000, &[]);
    let later = receipt_of(broker.sequence_holding("t", json("1"), id("a"), &[], true, None));
    assert_eq!(later.seq, first.seq + 1);
    assert_eq!(broker.dedupe_size().0, 1, "the expired id was forgotten");
}

#[test]
fn a_zero_window_turns_dedupe_off() {
    let broker = Broker::new(Retention::default()).with_dedupe(Duration::ZERO, 1 << 20);
    broker.install_topic("t", None);
    let first = receipt_of(broker.sequence_holding("t", json("1"), id("a"), &[], true, None));
    let again = receipt_of(broker.sequence_holding("t", json("1"), id("a"), &[], true, None));
    assert_eq!(again.seq, first.seq + 1);
}

#[test]
fn a_publish_sent_again_while_the_first_is_in_flight_waits_for_it() {
    let broker = Broker::new(Retention::default());
    let epoch = broker.install_topic("t", None);
    let outbox = Outbox::new(1, 16);
    subscription(&broker, "s", "t", None, &outbox);
    let (replica, mut queues) = PeerLink::new("r", 1, 16);
    let replicas = std::slice::from_ref(&replica);
    let Sequenced::Waiting(first, mut first_stored) =
        broker.sequence_holding("t", json("1"), id("a"), replicas, true, None)
    else {
        panic!("a replica to wait for");
    };
    let Sequenced::Waiting(again, mut again_stored) =
        broker.sequence_holding("t", json("1"), id("a"), replicas, true, None)
    else {
        panic!("waits with the first");
    };
    assert_eq!(again, first);
    assert_eq!(again_stored.try_recv(), Err(TryRecvError::Empty));
    // The replica gets the topic's history, then the event once, with its id.
    assert!(matches!(
        queues.control.try_recv(),
        Ok(PeerMessage::SyncTopic { .. })
    ));
    let Ok(PeerMessage::Replicate(event)) = queues.control.try_recv() else {
        panic!("a copy for the replica");
    };
    assert_eq!(event.publish_id, id("a"));
    assert!(queues.control.try_recv().is_err(), "no second copy");
    broker.on_stored("r", "t", &epoch, first.seq);
    assert_eq!(first_stored.try_recv(), Ok(()));
    assert_eq!(again_stored.try_recv(), Ok(()), "told with the first");
    assert_eq!(drain(&outbox).len(), 1, "one event");
}

#[test]
fn a_failed_publish_fails_its_duplicates_and_may_be_sent_again() {
    let broker = Broker::new(Retention::default());
    broker.install_topic("t", None);
    let (replica, _queues) = PeerLink::new("r", 1, 16);
    let replicas = std::slice::from_ref(&replica);
    assert!(matches!(
        broker.sequence_holding("t", json("1"), id("a"), replicas, true, None),
        Sequenced::Waiting(..)
    ));
    let Sequenced::Waiting(_, mut again_stored) =
        broker.sequence_holding("t", json("1"), id("a"), replicas, true, None)
    else {
        panic!("waits with the first");
    };
    broker.relinquish_all();
    assert_eq!(again_stored.try_recv(), Err(TryRecvError::Closed));
    // Claimed again: the id is free, the publish makes an event in the new epoch.
    let renewed = broker.install_topic("t", broker.topic_snapshot("t"));
    let retried = receipt_of(broker.sequence_holding("t", json("1"), id("a"), &[], true, None));
    assert_eq!((retried.epoch, retried.seq), (renewed, 1));
}

#[test]
fn a_replica_that_takes_over_answers_a_retry_with_the_original_position() {
    let owner = Broker::new(Retention::default());
    owner.install_topic("t", None);
    let (to_replica, mut queues) = PeerLink::new("r", 1, 16);
    let first = receipt_of(owner.sequence_holding(
        "t",
        json("1"),
        id("a"),
        std::slice::from_ref(&to_replica),
        true,
        None,
    ));
    assert!(matches!(
        queues.control.try_recv(),
        Ok(PeerMessage::SyncTopic { .. })
    ));
    let Ok(PeerMessage::Replicate(copy)) = queues.control.try_recv() else {
        panic!("a copy for the replica");
    };

    // The replica stored it; the owner is gone and the replica claims the topic.
    let replica = Broker::new(Retention::default());
    let copy = Event::new(
        copy.topic.clone(),
        copy.epoch.clone(),
        copy.seq,
        copy.ts,
        copy.payload.clone(),
    )
    .with_publish_id(copy.publish_id.clone());
    replica
        .store_replica(Arc::new(copy))
        .expect("a replica stores an event from the owner it recognises");
    let known = replica.topic_snapshot("t");
    assert_eq!(known.as_ref().map(|k| k.ids.len()), Some(1));
    replica.install_topic("t", known);
    let retried = receipt_of(replica.sequence_holding("t", json("1"), id("a"), &[], true, None));
    assert_eq!(retried, first);
    let next = receipt_of(replica.sequence_holding("t", json("2"), id("b"), &[], true, None));
    assert_eq!(next.seq, first.seq + 1);

    // A third node that only hears of the topic in a claim's answer knows the id too.
    let newcomer = Broker::new(Retention::default());
    newcomer.install_topic("t", replica.hand_over("t").unwrap());
    let again = receipt_of(newcomer.sequence_holding("t", json("1"), id("a"), &[], true, None));
    assert_eq!(again, first);
}
