//! The broker: the routing core behind locks, connected to client connections' outboxes.
//!
//! Who owns what:
//! - the subscription index (`RwLock`): written by `sub`/`unsub`, read by every publish;
//! - per-topic sequence counters, sharded by topic hash (`Mutex` per shard);
//! - each connection's [`Outbox`]: a bounded queue its own task drains onto the socket.
//!
//! A publish locks its topic's shard, takes the next sequence number, queues the event to
//! every matching subscription with a non-blocking `try_send`, and only then unlocks: two
//! publishes of one topic are therefore queued everywhere in sequence order, and a full queue
//! never blocks the publisher or any other subscriber (its owner is disconnected instead).

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{Delivery, Event, Payload};
use crate::routing::{Match, QueueGroup, SubscriptionIndex, TopicSequences};

/// Sequence shards: enough that publishes of different topics rarely wait on each other.
const SEQUENCE_SHARDS: usize = 64;

/// What a connection's task receives from the broker.
#[derive(Debug)]
pub enum Outbound {
    Event {
        sub: Arc<Subscription>,
        event: Arc<Event>,
        delivery: Option<Delivery>,
    },
}

/// The broker's handle on one client connection.
#[derive(Debug)]
pub struct Outbox {
    pub connection: u64,
    queue: mpsc::Sender<Outbound>,
    /// Cancelled when the queue overflowed: the connection must be closed as a slow consumer.
    overflowed: CancellationToken,
}

impl Outbox {
    /// A new outbox holding at most `capacity` undelivered items, and the receiving end.
    pub fn new(connection: u64, capacity: usize) -> (Arc<Self>, mpsc::Receiver<Outbound>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let outbox = Self {
            connection,
            queue,
            overflowed: CancellationToken::new(),
        };
        (Arc::new(outbox), rx)
    }

    /// Resolves once the queue has overflowed.
    pub fn overflowed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.overflowed.cancelled()
    }

    pub fn has_overflowed(&self) -> bool {
        self.overflowed.is_cancelled()
    }

    fn offer(&self, item: Outbound) -> Offer {
        if self.overflowed.is_cancelled() {
            return Offer::Refused;
        }
        match self.queue.try_send(item) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Refused,
        }
    }

    fn mark_overflowed(&self) {
        self.overflowed.cancel();
    }
}

enum Offer {
    Queued,
    Full,
    /// Closed, or already being disconnected as a slow consumer.
    Refused,
}

/// One subscription as the index holds it. Compared by identity: two `sub`s with equal
/// fields are still two subscriptions.
#[derive(Debug)]
pub struct Subscription {
    pub id: Arc<str>,
    pub pattern: Arc<str>,
    pub group: Option<Arc<str>>,
    pub outbox: Arc<Outbox>,
}

#[derive(Debug, Clone)]
struct Subscriber(Arc<Subscription>);

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Where an accepted publish landed.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub epoch: Arc<str>,
    pub seq: u64,
    /// Subscriptions (queue groups counted once) the event was queued to.
    pub deliveries: usize,
}

#[derive(Debug)]
pub struct Broker {
    index: RwLock<SubscriptionIndex<Subscriber>>,
    sequences: Box<[Mutex<TopicSequences>]>,
    shard_hasher: foldhash::fast::RandomState,
    epoch: Arc<str>,
    next_delivery: AtomicU64,
}

impl Broker {
    /// A broker whose events are numbered in `epoch`.
    pub fn new(epoch: impl Into<Arc<str>>) -> Self {
        Self {
            index: RwLock::new(SubscriptionIndex::new()),
            sequences: (0..SEQUENCE_SHARDS)
                .map(|_| Mutex::new(TopicSequences::new()))
                .collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            epoch: epoch.into(),
            next_delivery: AtomicU64::new(1),
        }
    }

    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// Subscriptions held, across all connections.
    pub fn subscriptions(&self) -> usize {
        self.index.read().len()
    }

    /// Adds a subscription; its pattern must already be validated.
    pub fn subscribe(&self, subscription: Arc<Subscription>) {
        let group = subscription.group.clone();
        let pattern = subscription.pattern.clone();
        self.index
            .write()
            .insert(&pattern, group.as_deref(), Subscriber(subscription));
    }

    pub fn unsubscribe(&self, subscription: &Arc<Subscription>) -> bool {
        self.index.write().remove(
            &subscription.pattern,
            subscription.group.as_deref(),
            &Subscriber(subscription.clone()),
        )
    }

    /// Sequences `payload` on `topic` (a validated publish topic) and queues it to every
    /// matching subscription and to one member of every matching queue group.
    pub fn publish(&self, topic: &str, payload: Payload) -> Receipt {
        let shard = self.shard_hasher.hash_one(topic) as usize % self.sequences.len();
        let mut sequences = self.sequences[shard].lock();
        let (topic, seq) = sequences.next(topic);
        let event = Arc::new(Event::new(
            topic,
            self.epoch.clone(),
            seq,
            now_ms(),
            payload,
        ));
        let mut deliveries = 0;
        let index = self.index.read();
        index.for_each_match(&event.topic, |m| {
            let delivered = match m {
                Match::Subscriber(Subscriber(sub)) => {
                    let item = Outbound::Event {
                        sub: sub.clone(),
                        event: event.clone(),
                        delivery: None,
                    };
                    match sub.outbox.offer(item) {
                        Offer::Queued => true,
                        Offer::Full => {
                            sub.outbox.mark_overflowed();
                            false
                        }
                        Offer::Refused => false,
                    }
                }
                Match::Group(group) => self.offer_to_group(group, &event, false, None),
            };
            deliveries += usize::from(delivered);
        });
        drop(index);
        drop(sequences);
        Receipt {
            epoch: self.epoch.clone(),
            seq,
            deliveries,
        }
    }

    /// Hands a queue-group event that its member did not acknowledge (timeout, disconnect) to
    /// a member of the same group, preferring one on another connection. False when the group
    /// has no member left that can take it.
    pub fn redeliver(&self, from: &Subscription, event: &Arc<Event>) -> bool {
        let Some(name) = from.group.as_deref() else {
            return false;
        };
        let index = self.index.read();
        index.group(&from.pattern, name).is_some_and(|group| {
            self.offer_to_group(group, event, true, Some(from.outbox.connection))
        })
    }

    /// Round-robin over the group, skipping members whose queue is full; `avoid` names a
    /// connection to use only when no other member can take the event.
    fn offer_to_group(
        &self,
        group: &QueueGroup<Subscriber>,
        event: &Arc<Event>,
        redelivered: bool,
        avoid: Option<u64>,
    ) -> bool {
        let mut first_full = None;
        let mut avoided = None;
        for Subscriber(member) in group.round_robin() {
            if avoid == Some(member.outbox.connection) {
                avoided.get_or_insert(member);
                continue;
            }
            match self.offer_delivery(member, event, redelivered) {
                Offer::Queued => return true,
                Offer::Full => {
                    first_full.get_or_insert(member);
                }
                Offer::Refused => {}
            }
        }
        if let Some(member) = avoided {
            match self.offer_delivery(member, event, redelivered) {
                Offer::Queued => return true,
                Offer::Full => {
                    first_full.get_or_insert(member);
                }
                Offer::Refused => {}
            }
        }
        if let Some(member) = first_full {
            // Every member is behind: the one whose turn it was is the slow consumer.
            member.outbox.mark_overflowed();
            tracing::warn!(
                topic = %event.topic,
                seq = event.seq,
                group = %group.name(),
                "every queue-group member's buffer is full; delivery dropped"
            );
        }
        false
    }

    fn offer_delivery(
        &self,
        member: &Arc<Subscription>,
        event: &Arc<Event>,
        redelivered: bool,
    ) -> Offer {
        let delivery = Delivery {
            id: self.next_delivery.fetch_add(1, Ordering::Relaxed),
            redelivered,
        };
        member.outbox.offer(Outbound::Event {
            sub: member.clone(),
            event: event.clone(),
            delivery: Some(delivery),
        })
    }
}

/// Milliseconds since the Unix epoch, the `ts` of events.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn subscription(
        broker: &Broker,
        id: &str,
        pattern: &str,
        group: Option<&str>,
        outbox: &Arc<Outbox>,
    ) -> Arc<Subscription> {
        let sub = Arc::new(Subscription {
            id: id.into(),
            pattern: pattern.into(),
            group: group.map(Into::into),
            outbox: outbox.clone(),
        });
        broker.subscribe(sub.clone());
        sub
    }

    fn json(text: &'static str) -> Payload {
        Payload::Json(Bytes::from_static(text.as_bytes()))
    }

    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<(String, u64, Option<Delivery>)> {
        let mut got = Vec::new();
        while let Ok(Outbound::Event {
            sub,
            event,
            delivery,
        }) = rx.try_recv()
        {
            got.push((sub.id.to_string(), event.seq, delivery));
        }
        got
    }

    #[test]
    fn publish_reaches_matching_subscriptions_in_order() {
        let broker = Broker::new("e1");
        let (outbox, mut rx) = Outbox::new(1, 16);
        subscription(&broker, "exact", "a.b", None, &outbox);
        subscription(&broker, "wild", "a.*", None, &outbox);
        subscription(&broker, "other", "c", None, &outbox);
        assert_eq!(broker.publish("a.b", json("1")).seq, 1);
        let receipt = broker.publish("a.b", json("2"));
        assert_eq!((receipt.seq, receipt.deliveries), (2, 2));
        assert_eq!(broker.publish("a.c", json("3")).seq, 1);
        let got = drain(&mut rx);
        let seqs =
            |id: &str| -> Vec<u64> { got.iter().filter(|g| g.0 == id).map(|g| g.1).collect() };
        assert_eq!(seqs("exact"), vec![1, 2]);
        assert_eq!(seqs("wild"), vec![1, 2, 1]);
        assert!(seqs("other").is_empty());
    }

    #[test]
    fn full_queue_marks_only_that_connection() {
        let broker = Broker::new("e");
        let (slow, _slow_rx) = Outbox::new(1, 2);
        let (fast, mut fast_rx) = Outbox::new(2, 100);
        subscription(&broker, "s", "t", None, &slow);
        subscription(&broker, "f", "t", None, &fast);
        for _ in 0..5 {
            broker.publish("t", json("0"));
        }
        assert!(slow.has_overflowed());
        assert!(!fast.has_overflowed());
        assert_eq!(drain(&mut fast_rx).len(), 5);
    }

    #[test]
    fn queue_group_gets_one_delivery_per_event_and_skips_full_members() {
        let broker = Broker::new("e");
        let (a, mut a_rx) = Outbox::new(1, 1);
        let (b, mut b_rx) = Outbox::new(2, 100);
        subscription(&broker, "qa", "jobs", Some("w"), &a);
        subscription(&broker, "qb", "jobs", Some("w"), &b);
        for _ in 0..10 {
            assert_eq!(broker.publish("jobs", json("0")).deliveries, 1);
        }
        let (got_a, got_b) = (drain(&mut a_rx), drain(&mut b_rx));
        assert_eq!(got_a.len() + got_b.len(), 10, "each event once");
        assert_eq!(got_a.len(), 1, "a full member is skipped, not disconnected");
        assert!(!a.has_overflowed());
        assert!(got_b.iter().all(|g| g.2.is_some_and(|d| !d.redelivered)));
    }

    #[test]
    fn redelivery_prefers_another_member() {
        let broker = Broker::new("e");
        let (a, mut a_rx) = Outbox::new(1, 100);
        let (b, mut b_rx) = Outbox::new(2, 100);
        let qa = subscription(&broker, "qa", "jobs.*", Some("w"), &a);
        subscription(&broker, "qb", "jobs.*", Some("w"), &b);
        subscription(&broker, "other-pattern", "jobs.>", Some("w"), &a);
        let event = Arc::new(Event::new("jobs.x".into(), "e".into(), 7, 0, json("0")));
        assert!(broker.redeliver(&qa, &event));
        assert!(drain(&mut a_rx).is_empty());
        let got = drain(&mut b_rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 7);
        assert!(got[0].2.unwrap().redelivered);
    }
}
