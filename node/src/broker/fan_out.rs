//! Fan-out: queueing a completed event to every matching local subscription and peer, and
//! delivering what peers forward here.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cluster::link::{Interest, PeerLink, PeerMessage};
use crate::event::{Event, GroupOrigin};
use crate::routing::{Match, QueueGroup};

use super::groups::PlacedOnPeer;
use super::outbox::{Offer, Outbound};
use super::{Broker, PublishPermit, Subscriber, Subscription};

pub(super) type Forwards = Vec<(Arc<PeerLink>, bool, Vec<(Interest, u64)>)>;

pub(super) fn forward_entry<'f>(
    forwards: &'f mut Forwards,
    link: &Arc<PeerLink>,
) -> &'f mut (Arc<PeerLink>, bool, Vec<(Interest, u64)>) {
    let i = match forwards.iter().position(|f| Arc::ptr_eq(&f.0, link)) {
        Some(i) => i,
        None => {
            forwards.push((link.clone(), false, Vec::new()));
            forwards.len() - 1
        }
    };
    &mut forwards[i]
}

/// The interest (pattern and name) of a local queue group; its members share both.
pub(super) fn group_interest(group: &QueueGroup<Subscriber>) -> Interest {
    Interest {
        pattern: group
            .members()
            .first()
            .map_or_else(|| Arc::from(""), |m| m.0.pattern.clone()),
        group: Some(group.name().clone()),
    }
}

impl Broker {
    /// Queues `event` to every matching local subscription and peer; returns how many
    /// subscriptions and peers it was queued to. `hold` (the event's share of its
    /// publisher's publish buffer) goes with its forwards, and back once they are written.
    pub(super) fn fan_out(&self, event: &Arc<Event>, hold: Option<PublishPermit>) -> usize {
        let index = self.index.read();
        let remote = self.remote.read();
        let mut deliveries = 0;
        let mut local_groups = Vec::new();
        index.for_each_match(&event.topic, |m| match m {
            Match::Subscriber(Subscriber(sub)) => {
                deliveries += usize::from(self.offer_plain(sub, event));
            }
            Match::Group(group) => local_groups.push(group),
        });
        // Groups whose members are all gone for now keep the event for when one is back.
        self.keep_for_dormant_groups(event);
        if remote.is_empty() {
            for group in local_groups {
                let interest = group_interest(group);
                self.record_placed(&interest, event);
                if self.offer_to_group(group, event, false, None, None) {
                    deliveries += 1;
                } else {
                    self.keep_for_group(&interest, event, false);
                }
            }
            return deliveries;
        }
        let mut forwards = Forwards::new();
        let mut remote_groups = Vec::new();
        remote.for_each_match(&event.topic, |m| match m {
            Match::Subscriber(r) => forward_entry(&mut forwards, &r.link).1 = true,
            Match::Group(group) => remote_groups.push(group),
        });
        for group in local_groups {
            let pattern = group.members().first().map(|m| m.0.pattern.clone());
            let same_remote = remote_groups.iter().position(|r| {
                r.name() == group.name()
                    && r.members().first().map(|m| &m.interest.pattern) == pattern.as_ref()
            });
            let remote_group = same_remote.map(|i| remote_groups.swap_remove(i));
            deliveries += self.place_group_event(event, Some(group), remote_group, &mut forwards);
        }
        for remote_group in remote_groups {
            deliveries += self.place_group_event(event, None, Some(remote_group), &mut forwards);
        }
        let mut refused = Vec::new();
        let hold = if forwards.is_empty() {
            None
        } else {
            hold.map(Arc::new)
        };
        for (link, plain, groups) in forwards {
            let interests: Vec<Interest> = groups.iter().map(|(i, _)| i.clone()).collect();
            if self.send_forward(&link, event, plain, groups, false, 0, hold.clone()) {
                deliveries += 1;
            } else {
                refused.extend(interests.into_iter().map(|i| (i, link.name.clone())));
            }
        }
        drop((index, remote));
        // The queue-group shares of a peer whose queue was full go to another member.
        for (interest, peer) in refused {
            self.place_again(event, &interest, Some(&peer), 0);
        }
        deliveries
    }

    /// Queues a forward; its queue-group entries are tracked until the peer settles them.
    /// When the peer's queue is full nothing is queued, the entries are forgotten again and
    /// false is returned: placing them elsewhere is the caller's business. This never places
    /// anything itself, so no chain of full queues can make it recurse.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_forward(
        &self,
        link: &Arc<PeerLink>,
        event: &Arc<Event>,
        plain: bool,
        groups: Vec<(Interest, u64)>,
        redelivered: bool,
        bounces: u32,
        hold: Option<Arc<PublishPermit>>,
    ) -> bool {
        {
            let mut placed = self.placed_on_peers.lock();
            for (interest, token) in &groups {
                placed.insert(
                    *token,
                    PlacedOnPeer {
                        peer: link.name.clone(),
                        event: event.clone(),
                        interest: interest.clone(),
                        bounces,
                    },
                );
            }
        }
        let tokens: Vec<u64> = groups.iter().map(|(_, t)| *t).collect();
        let forward = PeerMessage::Forward {
            event: event.clone(),
            plain,
            groups,
            redelivered,
            hold,
        };
        if link.offer_event(forward) {
            return true;
        }
        let mut placed = self.placed_on_peers.lock();
        for token in tokens {
            placed.remove(&token);
        }
        false
    }

    pub(super) fn offer_plain(&self, sub: &Arc<Subscription>, event: &Arc<Event>) -> bool {
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
            Offer::AtLimit | Offer::Refused => false,
        }
    }

    /// Delivers an event a peer forwarded: to matching plain subscriptions if `plain`, and to
    /// one local member of each listed queue group. Never forwarded again: the mesh is full.
    pub fn deliver_forwarded(
        &self,
        event: &Arc<Event>,
        plain: bool,
        groups: &[(Interest, u64)],
        from_peer: &Arc<str>,
        redelivered: bool,
    ) -> Vec<u64> {
        self.stats.events_from_peers.fetch_add(1, Ordering::Relaxed);
        let index = self.index.read();
        if plain {
            index.for_each_match(&event.topic, |m| {
                if let Match::Subscriber(Subscriber(sub)) = m {
                    self.offer_plain(sub, event);
                }
            });
        }
        let mut not_placed = Vec::new();
        if !groups.is_empty() && self.is_fenced() {
            // Woken from a stall: the peer that placed these on this node may already have
            // placed them elsewhere after declaring it down. Give them back to place.
            tracing::debug!(topic = %event.topic, "fenced: queue-group events given back unplaced");
            not_placed.extend(groups.iter().map(|(_, token)| *token));
            return not_placed;
        }
        for (interest, token) in groups {
            let Some(name) = interest.group.as_deref() else {
                continue;
            };
            let origin = (*token != 0).then(|| {
                Arc::new(GroupOrigin {
                    peer: from_peer.clone(),
                    token: *token,
                })
            });
            let placed = index
                .group(&interest.pattern, name)
                .is_some_and(|group| self.offer_to_group(group, event, redelivered, None, origin));
            if !placed {
                tracing::debug!(topic = %event.topic, group = name, "forwarded queue-group event found no member here");
                not_placed.push(*token);
            }
        }
        not_placed
    }
}

#[cfg(test)]
mod tests {
    use crate::broker::test_support::{drain, json, subscription};
    use crate::broker::{Broker, Outbox};
    use crate::storage::Retention;

    #[test]
    fn publish_reaches_matching_subscriptions_in_order() {
        let broker = Broker::new(Retention::default());
        let outbox = Outbox::new(1, 16);
        subscription(&broker, "exact", "a.b", None, &outbox);
        subscription(&broker, "wild", "a.*", None, &outbox);
        subscription(&broker, "other", "c", None, &outbox);
        assert_eq!(broker.publish("a.b", json("1")).seq, 1);
        let receipt = broker.publish("a.b", json("2"));
        assert_eq!(receipt.seq, 2);
        assert_eq!(broker.publish("a.c", json("3")).seq, 1);
        let got = drain(&outbox);
        let seqs =
            |id: &str| -> Vec<u64> { got.iter().filter(|g| g.0 == id).map(|g| g.1).collect() };
        assert_eq!(seqs("exact"), vec![1, 2]);
        assert_eq!(seqs("wild"), vec![1, 2, 1]);
        assert!(seqs("other").is_empty());
    }

    #[test]
    fn full_queue_marks_only_that_connection() {
        let broker = Broker::new(Retention::default());
        let slow = Outbox::new(1, 2);
        let fast = Outbox::new(2, 100);
        subscription(&broker, "s", "t", None, &slow);
        subscription(&broker, "f", "t", None, &fast);
        for _ in 0..5 {
            broker.publish("t", json("0"));
        }
        assert!(slow.has_overflowed());
        assert!(!fast.has_overflowed());
        assert_eq!(drain(&fast).len(), 5);
    }
}
