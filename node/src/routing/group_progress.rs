//! What each queue group has not processed yet, per topic, so that it survives the node
//! that placed the events.
//!
//! The node that places a topic's events (its owner) records, per topic and group, every
//! event it placed or keeps waiting for the group and that no member has acknowledged
//! ([`GroupProgress`]), and reports the changes to the topic's replicas several times a
//! second. A replica keeps the last report of each placing node ([`PeerProgress`]). When the
//! placing node is declared down, the replica that becomes the topic's owner places again,
//! from its copy of the history, what the report names as unacknowledged and every event
//! after the newest the report names as placed — marked `redelivered`, since a member may
//! have had it: the group processes it at least once.
//!
//! No I/O: the broker and the cluster move reports between nodes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::cluster::link::Interest;
use crate::event::Event;

/// Reports kept per placing node; beyond, the ones with nothing unacknowledged go first.
const MAX_REPORTS_PER_PEER: usize = 65_536;

/// Where one queue group stands on one topic, as the placing node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressReport {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub group: Interest,
    /// The newest `seq` placed for the group: later events were not placed by the reporter.
    pub placed_up_to: u64,
    /// Events placed (or waiting for a member) and not acknowledged: inclusive ranges of
    /// `seq`, ascending.
    pub unsettled: Vec<(u64, u64)>,
}

impl ProgressReport {
    /// Whether a new placer must place `seq` (of the report's epoch) again: it is
    /// unacknowledged, or newer than anything the reporter placed.
    pub fn wants(&self, seq: u64) -> bool {
        seq > self.placed_up_to
            || self
                .unsettled
                .binary_search_by(|&(from, to)| {
                    if to < seq {
                        std::cmp::Ordering::Less
                    } else if from > seq {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok()
    }

    /// The unacknowledged ranges, clipped to before `first_retained`: what a new placer can
    /// no longer place from its history (`u64::MAX`: none of it is retained).
    pub fn unsettled_before(&self, first_retained: u64) -> Vec<(u64, u64)> {
        self.unsettled
            .iter()
            .filter(|&&(from, _)| from < first_retained)
            .map(|&(from, to)| (from, to.min(first_retained - 1)))
            .collect()
    }
}

#[derive(Debug)]
struct Entry {
    epoch: Arc<str>,
    placed_up_to: u64,
    unsettled: BTreeSet<u64>,
}

/// The placing node's side: per topic and group, what is placed and not acknowledged.
#[derive(Debug, Default)]
pub struct GroupProgress {
    entries: HashMap<(Arc<str>, Interest), Entry>,
    /// Entries changed since the last report.
    dirty: HashSet<(Arc<str>, Interest)>,
}

impl GroupProgress {
    /// `event` was placed on a member of `group`, or kept waiting for one.
    pub fn placed(&mut self, group: &Interest, event: &Event) {
        let key = (event.topic.clone(), group.clone());
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            epoch: event.epoch.clone(),
            placed_up_to: 0,
            unsettled: BTreeSet::new(),
        });
        if entry.epoch != event.epoch {
            // A new epoch: what the old one owed is no longer this topic's sequence.
            *entry = Entry {
                epoch: event.epoch.clone(),
                placed_up_to: 0,
                unsettled: BTreeSet::new(),
            };
        }
        entry.unsettled.insert(event.seq);
        entry.placed_up_to = entry.placed_up_to.max(event.seq);
        self.dirty.insert(key);
    }

    /// A member of `group` acknowledged `event`, or the group was told it will not get it.
    pub fn settled(&mut self, group: &Interest, event: &Event) {
        let key = (event.topic.clone(), group.clone());
        if let Some(entry) = self.entries.get_mut(&key)
            && entry.epoch == event.epoch
            && entry.unsettled.remove(&event.seq)
        {
            self.dirty.insert(key);
        }
    }

    /// Events placed and not acknowledged, across topics and groups.
    #[cfg(test)]
    fn unsettled(&self) -> usize {
        self.entries.values().map(|e| e.unsettled.len()).sum()
    }

    /// The reports of what changed since the last call. An entry with nothing left
    /// unacknowledged is reported once more and then forgotten here (its replicas keep it).
    pub fn take_reports(&mut self) -> Vec<ProgressReport> {
        let mut reports = Vec::with_capacity(self.dirty.len());
        for key in self.dirty.drain() {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            reports.push(ProgressReport {
                topic: key.0.clone(),
                epoch: entry.epoch.clone(),
                group: key.1.clone(),
                placed_up_to: entry.placed_up_to,
                unsettled: ranges(&entry.unsettled),
            });
            if entry.unsettled.is_empty() {
                self.entries.remove(&key);
            }
        }
        reports
    }
}

/// Consecutive `seq`s as inclusive ranges.
fn ranges(seqs: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs {
        match out.last_mut() {
            Some((_, to)) if *to + 1 == seq => *to = seq,
            _ => out.push((seq, seq)),
        }
    }
    out
}

/// One placing node's last reports, by topic and group.
type ReportsOf = HashMap<(Arc<str>, Interest), ProgressReport>;

/// A replica's side: the last report of each placing node, per topic and group.
#[derive(Debug, Default)]
pub struct PeerProgress {
    by_peer: HashMap<Arc<str>, ReportsOf>,
}

impl PeerProgress {
    /// Keeps `reports` from `peer`, each replacing the last one for its topic and group.
    pub fn store(&mut self, peer: &Arc<str>, reports: Vec<ProgressReport>) {
        let kept = self.by_peer.entry(peer.clone()).or_default();
        for report in reports {
            kept.insert((report.topic.clone(), report.group.clone()), report);
        }
        if kept.len() > MAX_REPORTS_PER_PEER {
            kept.retain(|_, r| !r.unsettled.is_empty());
        }
    }

    /// Takes everything `peer` reported (it is down: its reports are acted on or dropped).
    pub fn take(&mut self, peer: &str) -> Vec<ProgressReport> {
        self.by_peer
            .remove(peer)
            .map(|kept| kept.into_values().collect())
            .unwrap_or_default()
    }

    /// What `peer` last reported, per topic and group (none once it is gone).
    pub fn reports_of(&self, peer: &str) -> Vec<ProgressReport> {
        self.by_peer
            .get(peer)
            .map(|kept| kept.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;

    fn group() -> Interest {
        Interest {
            pattern: "jobs.*".into(),
            group: Some("w".into()),
        }
    }

    fn event(topic: &str, epoch: &str, seq: u64) -> Event {
        Event::new(
            topic.into(),
            epoch.into(),
            seq,
            0,
            Payload::Json(bytes::Bytes::from_static(b"1")),
        )
    }

    #[test]
    fn reports_name_what_is_unacknowledged_as_ranges_and_forget_settled_entries() {
        let mut progress = GroupProgress::default();
        let g = group();
        for seq in 1..=6 {
            progress.placed(&g, &event("jobs.a", "e1", seq));
        }
        progress.settled(&g, &event("jobs.a", "e1", 3));
        progress.settled(&g, &event("jobs.a", "e0", 4)); // another epoch: not this entry
        let reports = progress.take_reports();
        assert_eq!(
            reports,
            vec![ProgressReport {
                topic: "jobs.a".into(),
                epoch: "e1".into(),
                group: g.clone(),
                placed_up_to: 6,
                unsettled: vec![(1, 2), (4, 6)],
            }]
        );
        assert!(progress.take_reports().is_empty(), "nothing changed since");
        for seq in [1, 2, 4, 5, 6] {
            progress.settled(&g, &event("jobs.a", "e1", seq));
        }
        let last = progress.take_reports();
        assert_eq!(last[0].unsettled, vec![]);
        assert_eq!(progress.unsettled(), 0);
        assert!(
            progress.entries.is_empty(),
            "reported once more, then forgotten"
        );
    }

    #[test]
    fn a_new_epoch_starts_the_entry_afresh() {
        let mut progress = GroupProgress::default();
        let g = group();
        progress.placed(&g, &event("jobs.a", "e1", 9));
        progress.placed(&g, &event("jobs.a", "e2", 1));
        let reports = progress.take_reports();
        assert_eq!(
            (reports[0].epoch.as_ref(), reports[0].placed_up_to),
            ("e2", 1)
        );
        assert_eq!(reports[0].unsettled, vec![(1, 1)]);
    }

    #[test]
    fn a_new_placer_places_the_unacknowledged_and_everything_after_the_report() {
        let report = ProgressReport {
            topic: "jobs.a".into(),
            epoch: "e1".into(),
            group: group(),
            placed_up_to: 6,
            unsettled: vec![(1, 2), (5, 5)],
        };
        let again: Vec<u64> = (1..=9).filter(|&seq| report.wants(seq)).collect();
        assert_eq!(again, vec![1, 2, 5, 7, 8, 9]);
        assert_eq!(report.unsettled_before(2), vec![(1, 1)]);
        assert_eq!(report.unsettled_before(u64::MAX), vec![(1, 2), (5, 5)]);
        assert!(report.unsettled_before(1).is_empty());
    }

    #[test]
    fn replicas_keep_the_last_report_per_topic_and_group_until_the_peer_goes() {
        let mut kept = PeerProgress::default();
        let peer: Arc<str> = "node-1".into();
        let report = |placed_up_to| ProgressReport {
            topic: "jobs.a".into(),
            epoch: "e1".into(),
            group: group(),
            placed_up_to,
            unsettled: vec![],
        };
        kept.store(&peer, vec![report(3)]);
        kept.store(&peer, vec![report(5)]);
        assert_eq!(kept.reports_of("node-1"), vec![report(5)]);
        assert!(kept.take("node-2").is_empty());
        assert_eq!(kept.take("node-1"), vec![report(5)]);
        assert!(kept.reports_of("node-1").is_empty());
    }
}
