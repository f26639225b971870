//! Queue-group progress that outlives the placing node (see
//! [`crate::routing::group_progress`]): recorded here as events are placed and
//! acknowledged, reported to the topics' replicas by the cluster, and acted on by the
//! replica that becomes the owner when the placing node is gone.
//!
//! Lock order: the progress lock is taken last, after the indexes and the backlog, and
//! nothing is locked while it is held.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cluster::link::Interest;
use crate::event::Event;
use crate::routing::group_backlog::GroupGap;
use crate::routing::group_progress::ProgressReport;

use super::{Broker, Subscription};

impl Broker {
    /// `event` goes to `group` for the first time: placed on a member, or kept for one.
    pub(super) fn record_placed(&self, group: &Interest, event: &Event) {
        self.progress.lock().placed(group, event);
    }

    /// A member here acknowledged `event`, which this node placed (the member's delivery
    /// has no origin elsewhere).
    pub fn group_delivery_acked(&self, member: &Subscription, event: &Event) {
        let group = Interest {
            pattern: member.pattern.clone(),
            group: member.group.clone(),
        };
        self.progress.lock().settled(&group, event);
    }

    /// A peer's member acknowledged `event`, which this node placed there.
    pub(super) fn record_acked(&self, group: &Interest, event: &Event) {
        self.progress.lock().settled(group, event);
    }

    /// Queue-group events this node placed on peers' members that no member acknowledged
    /// yet.
    pub fn group_events_on_peers(&self) -> usize {
        self.placed_on_peers.lock().len()
    }

    /// What changed in this node's queue-group progress since the last call, for the
    /// topics' replicas.
    pub fn take_progress_reports(&self) -> Vec<ProgressReport> {
        self.progress.lock().take_reports()
    }

    /// Keeps what `peer` reported about the groups it places events for.
    pub fn store_peer_progress(&self, peer: &Arc<str>, reports: Vec<ProgressReport>) {
        self.peer_progress.lock().store(peer, reports);
    }

    /// What `peer` last reported about the groups it places events for.
    pub fn peer_progress_of(&self, peer: &str) -> Vec<ProgressReport> {
        self.peer_progress.lock().reports_of(peer)
    }

    /// Takes what `peer` (now gone) reported; the caller acts on the topics it now owns.
    pub fn take_peer_progress(&self, peer: &str) -> Vec<ProgressReport> {
        self.peer_progress.lock().take(peer)
    }

    /// Takes over a gone placer's queue-group progress on one topic: every event of the
    /// report's epoch in this node's history that the group had not acknowledged, or that
    /// came after the newest the placer had placed, is placed again (marked `redelivered`:
    /// a member may have had it), or waits for a member. What the history no longer holds
    /// is named to the group as a gap. Returns how many events were placed again.
    pub fn take_over_group_progress(&self, report: &ProgressReport) -> usize {
        if self.is_ready(&report.topic) {
            // This node sequences the topic already (it was handed over before the peer
            // went): the events after the report are its own to place, and it placed them.
            return 0;
        }
        let (events, first_retained) = {
            let shard = self.shard(&report.topic).lock();
            let retained = shard.history.earliest(&report.topic).events;
            let same_epoch: Vec<Arc<Event>> = retained
                .into_iter()
                .filter(|e| e.epoch == report.epoch)
                .collect();
            let first = same_epoch.first().map_or(u64::MAX, |e| e.seq);
            let wanted: Vec<Arc<Event>> = same_epoch
                .into_iter()
                .filter(|e| report.wants(e.seq))
                .collect();
            (wanted, first)
        };
        for (from_seq, to_seq) in report.unsettled_before(first_retained) {
            let gap = GroupGap {
                topic: report.topic.clone(),
                epoch: report.epoch.clone(),
                from_seq,
                to_seq,
            };
            let dropped = self.backlog.lock().add_gap(&report.group, gap);
            self.backlog_in_use.store(true, Ordering::Release);
            self.stats
                .group_deliveries_lost
                .fetch_add(dropped.forgotten, Ordering::Relaxed);
        }
        for event in &events {
            self.record_placed(&report.group, event);
            self.place_again(event, &report.group, None, 0);
        }
        self.stats
            .group_events_taken_over
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        events.len()
    }
}
