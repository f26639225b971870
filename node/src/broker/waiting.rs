//! Queue-group events waiting for a member ([`GroupBacklog`]): kept by the node that places
//! them when no member anywhere can take one now, and placed again — several times a
//! second, by [`Broker::place_waiting`] — once a member has room or is back.
//!
//! Lock order, as everywhere in the broker: the subscription index, then the remote index,
//! then the backlog. The backlog is never held while anything else is locked after it, and
//! placing from it never calls back into it (a peer that gives an event back does so later,
//! from its own message).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::cluster::link::Interest;
use crate::event::Event;
use crate::routing::SubscriptionIndex;
use crate::routing::group_backlog::{Dropped, GroupGap};

use super::outbox::{Offer, Outbound};
use super::{Broker, RemoteInterest, Subscriber};

/// Waiting events placed per group and pass, at most: one pass must not hold the indexes
/// for long while a large backlog drains.
const PLACED_PER_PASS: usize = 4096;
/// Of those, on peers' members at most: a peer whose members are full gives each back, and
/// the next pass would send them all again.
const FORWARDED_PER_PASS: usize = 256;

impl Broker {
    /// Keeps a queue-group event that no member can take now, for `group` to get later.
    /// Call with the indexes read-locked or not at all (never with the backlog locked).
    pub(super) fn keep_for_group(&self, group: &Interest, event: &Arc<Event>, redelivered: bool) {
        let policy = self.retention.policy(&event.topic);
        let dropped =
            self.backlog
                .lock()
                .keep(group, event.clone(), redelivered, Instant::now(), policy);
        self.backlog_in_use.store(true, Ordering::Release);
        self.stats.group_events_kept.fetch_add(1, Ordering::Relaxed);
        self.count_dropped(dropped, event, group);
    }

    /// The groups of dormant (member-less) groups matching `topic` keep the event: called by
    /// fan-out with both indexes read-locked, so a group that got a member meanwhile is no
    /// longer dormant (the member's arrival wakes it under the index's write lock).
    pub(super) fn keep_for_dormant_groups(&self, event: &Arc<Event>) {
        if !self.any_dormant.load(Ordering::Acquire) {
            return;
        }
        let dormant = self.backlog.lock().dormant_matching(&event.topic);
        for group in dormant {
            self.record_placed(&group, event);
            self.keep_for_group(&group, event, false);
        }
    }

    /// After a member of `interest` left (here or on a peer): when no node has a member any
    /// more, the group is remembered as dormant and keeps its events. Called with both
    /// indexes locked (one of them for writing), so no fan-out sees the group in between.
    pub(super) fn note_member_gone(
        &self,
        index: &SubscriptionIndex<Subscriber>,
        remote: &SubscriptionIndex<RemoteInterest>,
        interest: &Interest,
    ) {
        let Some(name) = interest.group.as_deref() else {
            return;
        };
        if index.group(&interest.pattern, name).is_some()
            || remote.group(&interest.pattern, name).is_some()
        {
            return;
        }
        let dropped = self.backlog.lock().set_dormant(interest, Instant::now());
        self.backlog_in_use.store(true, Ordering::Release);
        self.any_dormant.store(true, Ordering::Release);
        self.count_expired(dropped);
    }

    /// A member of `interest` arrived (here or on a peer): its group is no longer dormant.
    /// Called with the index that got it write-locked.
    pub(super) fn note_member_arrived(&self, interest: &Interest) {
        if interest.group.is_some() && self.any_dormant.load(Ordering::Acquire) {
            let mut backlog = self.backlog.lock();
            backlog.wake(interest);
            self.any_dormant
                .store(backlog.dormant_groups() > 0, Ordering::Release);
        }
    }

    /// Places what waits for groups that have a member with room, and turns what waited
    /// past its topic's bounds into gaps. Does nothing while the stall fence holds (no
    /// queue-group event may be placed then).
    pub fn place_waiting(&self) {
        if !self.backlog_in_use.load(Ordering::Acquire) || self.is_fenced() {
            return;
        }
        let index = self.index.read();
        let remote = self.remote.read();
        let mut backlog = self.backlog.lock();
        let dropped = backlog.expire(Instant::now(), |topic| self.retention.policy(topic));
        self.count_expired(dropped);
        for group in backlog.placeable() {
            let Some(name) = group.group.as_deref() else {
                continue;
            };
            let local = index.group(&group.pattern, name);
            let peers = remote.group(&group.pattern, name);
            if local.is_none() && peers.is_none() {
                // Its last member left without being noticed as such: keep waiting.
                backlog.set_dormant(&group, Instant::now());
                continue;
            }
            if let Some(local) = local {
                backlog.deliver_gaps(&group, |gap| self.offer_gap(local, gap));
            }
            let mut forwarded = 0;
            let placed = backlog.place(&group, PLACED_PER_PASS, |kept| {
                if local.is_some_and(|g| {
                    self.offer_to_group(g, &kept.event, kept.redelivered, None, None)
                }) {
                    return true;
                }
                let Some(peers) = peers.filter(|_| forwarded < FORWARDED_PER_PASS) else {
                    return false;
                };
                for member in peers.round_robin() {
                    let groups = vec![(group.clone(), self.new_token())];
                    if self.send_forward(
                        &member.link,
                        &kept.event,
                        false,
                        groups,
                        kept.redelivered,
                        0,
                        None,
                    ) {
                        forwarded += 1;
                        return true;
                    }
                }
                false
            });
            self.stats
                .group_events_placed_late
                .fetch_add(placed as u64, Ordering::Relaxed);
        }
        if backlog.is_empty() {
            self.backlog_in_use.store(false, Ordering::Release);
        }
        self.any_dormant
            .store(backlog.dormant_groups() > 0, Ordering::Release);
        self.stats
            .group_events_waiting
            .store(backlog.events() as u64, Ordering::Relaxed);
    }

    /// Tells one local member of the group that it will never get `gap`'s events.
    fn offer_gap(&self, group: &crate::routing::QueueGroup<Subscriber>, gap: &GroupGap) -> bool {
        group.round_robin().any(|Subscriber(member)| {
            matches!(
                member.outbox.offer(Outbound::Gap {
                    sub: member.clone(),
                    gap: gap.clone(),
                }),
                Offer::Queued
            )
        })
    }

    fn count_dropped(&self, dropped: Dropped, event: &Event, group: &Interest) {
        if dropped.gapped == 0 && dropped.forgotten == 0 {
            return;
        }
        self.count_expired(dropped);
        if let Some(suppressed) = self.lost_log.allow() {
            tracing::warn!(
                topic = %event.topic,
                group = group.group.as_deref().unwrap_or(""),
                suppressed,
                "queue-group events waiting for a member reached the topic's history bound: \
                 the oldest are named to the group as a gap"
            );
        }
    }

    /// Counts what left the backlog without reaching a member; the group owes nothing for
    /// it any more (it was told, or it is gone).
    fn count_expired(&self, dropped: Dropped) {
        self.stats
            .group_events_gapped
            .fetch_add(dropped.gapped, Ordering::Relaxed);
        self.stats
            .group_deliveries_lost
            .fetch_add(dropped.forgotten, Ordering::Relaxed);
        if !dropped.left.is_empty() {
            let mut progress = self.progress.lock();
            for (group, event) in &dropped.left {
                progress.settled(group, event);
            }
        }
    }
}
