//! Moving queue-group progress between nodes (see [`crate::routing::group_progress`]):
//! this node's changes go to each topic's replicas; a gone peer's last reports are acted on
//! by the node that owns their topics now.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use murmur_proto::cluster::v1 as pb;

use super::Cluster;
use super::link::{PeerLink, PeerMessage};
use super::transport;
use crate::routing::group_progress::ProgressReport;

/// Entries per `GroupProgress` frame, at most.
const ENTRIES_PER_FRAME: usize = 256;
/// Unacknowledged ranges accepted per entry from a peer; more are cut. A peer's
/// unacknowledged events are bounded by `max_unacked` per member and the topic's history,
/// and consecutive ones make one range, so it never sends this many.
const MAX_RANGES_PER_ENTRY: usize = 4096;

impl Cluster {
    /// Sends what changed in this node's queue-group progress to each topic's replicas (the
    /// placement's first `replication` nodes but this one). Called several times a second.
    pub fn report_group_progress(&self) {
        let reports = self.broker.take_progress_reports();
        if reports.is_empty() {
            return;
        }
        let mut per_peer: HashMap<String, Vec<pb::GroupProgressEntry>> = HashMap::new();
        for report in reports {
            let entry = entry_to_pb(&report);
            for name in self
                .placement(&report.topic)
                .into_iter()
                .take(self.replication)
                .filter(|n| n != self.name())
            {
                per_peer.entry(name).or_default().push(entry.clone());
            }
        }
        for (name, entries) in per_peer {
            // No link: the peer is gone or coming back; it gets the next change.
            let Some(link) = self.link_to(&name) else {
                continue;
            };
            for chunk in entries.chunks(ENTRIES_PER_FRAME) {
                link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::GroupProgress(
                    pb::GroupProgress {
                        entries: chunk.to_vec(),
                    },
                )));
            }
        }
    }

    /// A peer reported where queue groups stand on topics it places events for.
    pub(super) fn on_group_progress(&self, peer: &Arc<str>, progress: pb::GroupProgress) {
        let reports = progress
            .entries
            .into_iter()
            .filter_map(entry_from_pb)
            .collect();
        self.broker.store_peer_progress(peer, reports);
    }

    /// `peer` is down or left: for each topic it placed events for and this node owns now,
    /// what its groups had not acknowledged is placed again from this node's history.
    pub(super) fn take_over_group_progress(&self, peer: &str, link: Option<&PeerLink>) {
        if let Some(link) = link {
            link.groups_taken_over.store(true, Ordering::Release);
        }
        let reports = self.broker.take_peer_progress(peer);
        let mut placed = 0;
        let mut topics = 0;
        for report in reports
            .iter()
            .filter(|r| self.owner_of(&r.topic) == self.name())
        {
            placed += self.broker.take_over_group_progress(report);
            topics += 1;
        }
        if topics > 0 {
            tracing::info!(
                peer,
                topics,
                placed,
                "took over the queue-group progress of a gone peer: unacknowledged events placed again"
            );
        }
    }
}

fn entry_to_pb(report: &ProgressReport) -> pb::GroupProgressEntry {
    pb::GroupProgressEntry {
        topic: report.topic.to_string(),
        epoch: report.epoch.to_string(),
        group: Some(pb::Interest {
            pattern: report.group.pattern.to_string(),
            group: report.group.group.as_deref().map(str::to_owned),
        }),
        placed_up_to: report.placed_up_to,
        unsettled: report
            .unsettled
            .iter()
            .map(|&(from, to)| pb::SeqRange { from, to })
            .collect(),
    }
}

/// A peer's entry, or None when it is malformed (no group, ranges out of order).
fn entry_from_pb(entry: pb::GroupProgressEntry) -> Option<ProgressReport> {
    let group = transport::interest_from_pb(entry.group?);
    group.group.as_ref()?;
    let mut unsettled: Vec<(u64, u64)> = entry
        .unsettled
        .into_iter()
        .take(MAX_RANGES_PER_ENTRY)
        .map(|r| (r.from, r.to))
        .collect();
    let ordered = unsettled
        .windows(2)
        .all(|w| w[0].1 < w[1].0 && w[0].0 <= w[0].1)
        && unsettled.last().is_none_or(|r| r.0 <= r.1);
    if !ordered {
        tracing::debug!(topic = %entry.topic, "a peer's group progress has ranges out of order; ignored");
        return None;
    }
    unsettled.shrink_to_fit();
    Some(ProgressReport {
        topic: entry.topic.into(),
        epoch: entry.epoch.into(),
        group,
        placed_up_to: entry.placed_up_to,
        unsettled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::link::Interest;

    #[test]
    fn entries_survive_the_wire_and_malformed_ones_are_refused() {
        let report = ProgressReport {
            topic: "jobs.a".into(),
            epoch: "e1".into(),
            group: Interest {
                pattern: "jobs.*".into(),
                group: Some("w".into()),
            },
            placed_up_to: 9,
            unsettled: vec![(1, 2), (5, 5)],
        };
        assert_eq!(entry_from_pb(entry_to_pb(&report)), Some(report.clone()));
        let mut backwards = entry_to_pb(&report);
        backwards.unsettled.reverse();
        assert_eq!(entry_from_pb(backwards), None);
        let mut no_group = entry_to_pb(&report);
        no_group.group.as_mut().unwrap().group = None;
        assert_eq!(entry_from_pb(no_group), None);
    }
}
