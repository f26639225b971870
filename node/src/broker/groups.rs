//! Queue groups: placing each event on exactly one member in the whole cluster (here or on
//! a peer), tracking what was placed on peers, and handing on what a member did not
//! acknowledge.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cluster::link::Interest;
use crate::event::{Delivery, Event, GroupOrigin};
use crate::routing::QueueGroup;

use super::fan_out::{Forwards, forward_entry};
use super::outbox::{Offer, Outbound};
use super::{Broker, RemoteInterest, Subscriber, Subscription};

#[derive(Debug)]
pub(super) struct PlacedOnPeer {
    pub(super) peer: Arc<str>,
    pub(super) event: Arc<Event>,
    pub(super) interest: Interest,
    /// How often peers gave this event back unplaced.
    pub(super) bounces: u32,
}

/// How often a queue-group event may come back from peers unplaced before it counts as lost:
/// enough for members to drain a full buffer between tries, not so many that an event no
/// member will take circles between nodes for long.
const MAX_GROUP_BOUNCES: u32 = 16;

/// What became of a queue-group event whose member did not acknowledge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivery {
    /// Queued to a member (this node's, or a peer's).
    Placed,
    /// Another node placed it here: that node must place it elsewhere.
    ReturnToOrigin(Arc<GroupOrigin>),
    /// No member could take it now: kept for the group until one can.
    Kept,
}

impl Broker {
    pub(super) fn new_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// A peer reports a queue-group event this node placed there: acknowledged by a member,
    /// or not placeable there (then it goes to another member, marked redelivered).
    pub fn settle_on_peer(&self, peer: &str, token: u64, acked: bool) {
        let placed = {
            let mut placed = self.placed_on_peers.lock();
            match placed.get(&token) {
                Some(p) if &*p.peer == peer => placed.remove(&token),
                _ => None,
            }
        };
        let Some(placed) = placed else {
            return;
        };
        if acked {
            self.record_acked(&placed.interest, &placed.event);
        } else {
            self.place_again(
                &placed.event,
                &placed.interest,
                Some(peer),
                placed.bounces + 1,
            );
        }
    }

    /// Places a queue-group event again, anywhere but on `not_on` unless it is the only node
    /// left with members. `bounces` counts how often peers gave it back: an event that no
    /// member anywhere has room for would otherwise travel between nodes for as long as they
    /// stay full. Tries each candidate once, in a loop: nothing here recurses.
    ///
    /// Must not be called with the index or the remote index locked (it reads both).
    pub(super) fn place_again(
        &self,
        event: &Arc<Event>,
        interest: &Interest,
        not_on: Option<&str>,
        bounces: u32,
    ) {
        let Some(name) = interest.group.as_deref() else {
            return;
        };
        let index = self.index.read();
        let remote = self.remote.read();
        let local = index.group(&interest.pattern, name);
        if local.is_some_and(|g| self.offer_to_group(g, event, true, None, None)) {
            return;
        }
        if bounces <= MAX_GROUP_BOUNCES
            && let Some(group) = remote.group(&interest.pattern, name)
        {
            // Another node first; the node it came back from only when it is the only one
            // left (its member may take it on a later try).
            let mut members: Vec<&RemoteInterest> = group.round_robin().collect();
            members.sort_by_key(|m| not_on == Some(&*m.link.name));
            for member in members {
                let token = self.new_token();
                let groups = vec![(interest.clone(), token)];
                if self.send_forward(&member.link, event, false, groups, true, bounces, None) {
                    return;
                }
            }
        }
        // No member anywhere has room now (or the peers kept giving it back): it waits for
        // one, marked as handed on.
        self.keep_for_group(interest, event, true);
        drop((index, remote));
    }

    /// Picks the node that delivers `event` to a queue group present here (`local`), on
    /// peers (`remote`), or both: round-robin over the nodes. A peer's share is added to its
    /// forward; returns 1 if a local member took it.
    pub(super) fn place_group_event(
        &self,
        event: &Arc<Event>,
        local: Option<&QueueGroup<Subscriber>>,
        remote: Option<&QueueGroup<RemoteInterest>>,
        forwards: &mut Forwards,
    ) -> usize {
        let remote_members = remote.map_or(&[][..], QueueGroup::members);
        let here = usize::from(local.is_some());
        let candidates = here + remote_members.len();
        if candidates == 0 {
            return 0;
        }
        let interest = match (local, remote_members.first()) {
            (Some(group), _) => super::fan_out::group_interest(group),
            (None, Some(member)) => member.interest.clone(),
            (None, None) => return 0,
        };
        self.record_placed(&interest, event);
        let start = self.group_turn.fetch_add(1, Ordering::Relaxed) % candidates;
        for i in 0..candidates {
            let choice = (start + i) % candidates;
            match (local, choice.checked_sub(here)) {
                (Some(group), None) => {
                    if self.offer_to_group(group, event, false, None, None) {
                        return 1;
                    }
                }
                (_, Some(r)) => {
                    let member = &remote_members[r];
                    let token = self.new_token();
                    forward_entry(forwards, &member.link)
                        .2
                        .push((member.interest.clone(), token));
                    return 0;
                }
                (None, None) => {}
            }
        }
        self.keep_for_group(&interest, event, false);
        0
    }

    /// Hands a queue-group event that its member did not acknowledge (timeout, unsub,
    /// disconnect) to another member: another one here, else — for an event this node placed
    /// itself — one on a peer; an event a peer placed here goes back to that peer to place.
    /// Only when nobody else can, the same member gets it again if still subscribed.
    pub fn redeliver(
        &self,
        from: &Arc<Subscription>,
        event: &Arc<Event>,
        origin: Option<Arc<GroupOrigin>>,
    ) -> Redelivery {
        let Some(name) = from.group.as_deref() else {
            // Not a queue-group member: its deliveries are never handed on.
            return Redelivery::Placed;
        };
        let interest = Interest {
            pattern: from.pattern.clone(),
            group: from.group.clone(),
        };
        let index = self.index.read();
        let remote = self.remote.read();
        let local = index.group(&from.pattern, name);
        let skip = Some(from.outbox.connection);
        if local.is_some_and(|g| self.offer_to_group(g, event, true, skip, origin.clone())) {
            return Redelivery::Placed;
        }
        if let Some(origin) = origin {
            return Redelivery::ReturnToOrigin(origin);
        }
        if let Some(group) = remote.group(&from.pattern, name) {
            for member in group.round_robin() {
                let groups = vec![(interest.clone(), self.new_token())];
                if self.send_forward(&member.link, event, false, groups, true, 0, None) {
                    return Redelivery::Placed;
                }
            }
        }
        // Nobody else: the same member gets another chance, if it is still subscribed.
        if from.is_active() && matches!(self.offer_delivery(from, event, true, None), Offer::Queued)
        {
            return Redelivery::Placed;
        }
        // It waits for a member with room, or for one to come back.
        self.keep_for_group(&interest, event, true);
        Redelivery::Kept
    }

    /// Round-robin over the group, skipping members whose queue is full or who hold
    /// `max_unacked` deliveries, and any member on `skip_connection`. A member is never cut
    /// off for it: an event that none can take waits for one (see `waiting.rs`).
    pub(super) fn offer_to_group(
        &self,
        group: &QueueGroup<Subscriber>,
        event: &Arc<Event>,
        redelivered: bool,
        skip_connection: Option<u64>,
        origin: Option<Arc<GroupOrigin>>,
    ) -> bool {
        group.round_robin().any(|Subscriber(member)| {
            skip_connection != Some(member.outbox.connection)
                && matches!(
                    self.offer_delivery(member, event, redelivered, origin.clone()),
                    Offer::Queued
                )
        })
    }

    fn offer_delivery(
        &self,
        member: &Arc<Subscription>,
        event: &Arc<Event>,
        redelivered: bool,
        origin: Option<Arc<GroupOrigin>>,
    ) -> Offer {
        // Counted before it is queued, so that two publishers cannot both take the last slot.
        let reserved = member
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < member.max_unacked).then_some(n + 1)
            });
        if reserved.is_err() {
            return Offer::AtLimit;
        }
        let delivery = Delivery {
            id: self.next_delivery.fetch_add(1, Ordering::Relaxed),
            redelivered,
            origin,
        };
        let offer = member.outbox.offer(Outbound::Event {
            sub: member.clone(),
            event: event.clone(),
            delivery: Some(delivery),
        });
        if !matches!(offer, Offer::Queued) {
            member.delivery_settled();
        }
        offer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::MAX_GROUP_BOUNCES;
    use crate::broker::test_support::{drain, json, subscription};
    use crate::broker::{Broker, Outbox, Redelivery};
    use crate::cluster::link::{Interest, PeerLink, PeerMessage};
    use crate::event::Event;
    use crate::storage::Retention;

    #[test]
    fn queue_group_gets_one_delivery_per_event_and_skips_full_members() {
        let broker = Broker::new(Retention::default());
        let a = Outbox::new(1, 1);
        let b = Outbox::new(2, 100);
        subscription(&broker, "qa", "jobs", Some("w"), &a);
        subscription(&broker, "qb", "jobs", Some("w"), &b);
        for _ in 0..10 {
            broker.publish("jobs", json("0"));
        }
        let (got_a, got_b) = (drain(&a), drain(&b));
        assert_eq!(got_a.len() + got_b.len(), 10, "each event once");
        assert_eq!(got_a.len(), 1, "a full member is skipped, not disconnected");
        assert!(!a.has_overflowed());
        assert!(
            got_b
                .iter()
                .all(|g| g.2.as_ref().is_some_and(|d| !d.redelivered))
        );
    }

    /// The remote crash of issue 12: a queue-group member on a peer whose queue is full made
    /// `send_forward` → `settle_on_peer` → `place_again` → `send_forward` recurse until the
    /// stack overflowed. Now the event is tried on each candidate once and counted as lost.
    #[test]
    fn a_queue_group_event_for_a_peer_with_a_full_queue_is_tried_once_not_recursively() {
        let broker = Broker::new(Retention::default());
        let (peer, _queues) = PeerLink::new("p", 1, 1);
        broker.apply_peer_interest(
            &peer,
            Some(vec![Interest {
                pattern: "jobs".into(),
                group: Some("w".into()),
            }]),
            Vec::new(),
            Vec::new(),
        );
        let filler = Arc::new(Event::new("x".into(), "e".into(), 1, 0, json("0")));
        assert!(peer.offer_event(PeerMessage::Replicate(filler)));
        for _ in 0..1000 {
            broker.publish("jobs", json("1"));
        }
        assert_eq!(
            broker.stats.group_events_kept.load(Ordering::Relaxed),
            1000,
            "each waits for a member with room"
        );
        assert_eq!(
            broker.stats.group_deliveries_lost.load(Ordering::Relaxed),
            0
        );
        assert!(
            broker.placed_on_peers.lock().is_empty(),
            "nothing left tracked"
        );

        // The ack-timeout path: a local member that never acks hands its event on.
        let outbox = Outbox::new(1, 16);
        let member = subscription(&broker, "q", "jobs", Some("w"), &outbox);
        let event = Arc::new(Event::new("jobs".into(), "e".into(), 9, 0, json("0")));
        assert_eq!(
            broker.redeliver(&member, &event, None),
            Redelivery::Placed,
            "the same member gets it again when nobody else can"
        );
        // The member has room for 15 more: the waiting events fill it, the rest wait on.
        broker.place_waiting();
        assert_eq!(drain(&outbox).len(), 16);
        assert_eq!(broker.backlog.lock().events(), 1000 - 15);
    }

    #[test]
    fn a_queue_group_event_peers_keep_giving_back_stops_circling() {
        let broker = Broker::new(Retention::default());
        let (peer, mut queues) = PeerLink::new("p", 1, 1024);
        broker.apply_peer_interest(
            &peer,
            Some(vec![Interest {
                pattern: "jobs".into(),
                group: Some("w".into()),
            }]),
            Vec::new(),
            Vec::new(),
        );
        broker.publish("jobs", json("1"));
        let mut bounces = 0;
        // The peer's member never has room: it gives every forward back at once.
        while let Ok(PeerMessage::Forward { groups, .. }) = queues.events.try_recv() {
            for (_, token) in groups {
                broker.settle_on_peer("p", token, false);
            }
            bounces += 1;
            assert!(bounces < 100, "the event circles without end");
        }
        assert_eq!(bounces, MAX_GROUP_BOUNCES as usize + 1);
        assert_eq!(
            broker.stats.group_deliveries_lost.load(Ordering::Relaxed),
            0
        );
        assert_eq!(
            broker.backlog.lock().events(),
            1,
            "it stops circling and waits for room"
        );
    }

    #[test]
    fn a_group_whose_members_all_left_keeps_its_events_for_the_next_member() {
        let broker = Broker::new(Retention::default());
        let first = Outbox::new(1, 100);
        let member = subscription(&broker, "q", "jobs.*", Some("w"), &first);
        broker.publish("jobs.a", json("1"));
        assert!(broker.unsubscribe(&member));
        for _ in 0..3 {
            broker.publish("jobs.a", json("2"));
        }
        broker.publish("other", json("3"));
        assert_eq!(drain(&first).len(), 1);
        assert_eq!(broker.backlog.lock().events(), 3, "kept for the group");
        let later = Outbox::new(2, 100);
        subscription(&broker, "q2", "jobs.*", Some("w"), &later);
        broker.publish("jobs.a", json("4"));
        broker.place_waiting();
        let mut got: Vec<u64> = drain(&later).iter().map(|g| g.1).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            vec![2, 3, 4, 5],
            "what the group had not processed, once"
        );
        assert!(broker.backlog.lock().is_empty());
        assert_eq!(
            broker
                .stats
                .group_events_placed_late
                .load(Ordering::Relaxed),
            3
        );
    }

    #[test]
    fn past_the_topics_history_bound_the_group_gets_a_gap() {
        use crate::storage::RetentionPolicy;
        let retention = Retention::new(
            RetentionPolicy {
                max_events: 2,
                max_age: std::time::Duration::from_secs(600),
                max_bytes: usize::MAX,
            },
            usize::MAX,
        );
        let broker = Broker::new(retention);
        let outbox = Outbox::new(1, 100);
        let member = subscription(&broker, "q", "jobs", Some("w"), &outbox);
        broker.unsubscribe(&member);
        for _ in 0..5 {
            broker.publish("jobs", json("1"));
        }
        let back = Outbox::new(2, 100);
        subscription(&broker, "q", "jobs", Some("w"), &back);
        broker.place_waiting();
        let mut items = Vec::new();
        back.take(usize::MAX, &mut items);
        let seen: Vec<String> = items
            .iter()
            .map(|item| match item {
                crate::broker::Outbound::Gap { gap, .. } => {
                    format!("gap {}-{}", gap.from_seq, gap.to_seq)
                }
                crate::broker::Outbound::Event { event, .. } => format!("event {}", event.seq),
                crate::broker::Outbound::Reply(_) => "reply".into(),
            })
            .collect();
        assert_eq!(seen, vec!["gap 1-3", "event 4", "event 5"]);
        assert_eq!(broker.stats.group_events_gapped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn redelivery_prefers_another_member() {
        let broker = Broker::new(Retention::default());
        let a = Outbox::new(1, 100);
        let b = Outbox::new(2, 100);
        let qa = subscription(&broker, "qa", "jobs.*", Some("w"), &a);
        subscription(&broker, "qb", "jobs.*", Some("w"), &b);
        subscription(&broker, "other-pattern", "jobs.>", Some("w"), &a);
        let event = Arc::new(Event::new("jobs.x".into(), "e".into(), 7, 0, json("0")));
        assert_eq!(broker.redeliver(&qa, &event, None), Redelivery::Placed);
        assert!(drain(&a).is_empty());
        let got = drain(&b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 7);
        assert!(got[0].2.as_ref().unwrap().redelivered);
    }
}
