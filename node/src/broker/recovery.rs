//! Starting from history on disk (setting `storage = "disk"`): the broker puts every topic
//! the node's [`DiskLog`] kept back in its shards, as copies that a claim weighs.
//!
//! A recovered topic is a copy (`moved`), never sequenced as it is: before numbering after
//! it, this node claims it (at once when alone; after asking its peers in a cluster, see
//! `Cluster::reclaim_recovered`), so a peer that went on with the topic while this node was
//! down is heard first. Until then a resume here is served up to the topic's committed
//! position as recorded on disk (what the owner last said was stored on every replica).

use std::sync::Arc;

use super::{Broker, now_ms};
use crate::storage::disk::{DiskLog, Repair, RepairKind};
use crate::storage::{DiskHistory, HistoryStore, StorageError};

impl Broker {
    /// Keeps history in `log` from now on, and takes up every topic it holds; returns the
    /// recovered topics' names. Fails when the log cannot be read back (the node does not
    /// start on a history it cannot serve).
    ///
    /// `repairs` are what opening the log cut: a topic whose last events were cut (or whose
    /// record was rebuilt) may have had them acknowledged and delivered, so this node never
    /// numbers after what it kept in that epoch unless a peer knows the epoch further (a
    /// claim then starts a new epoch, and cursors past the cut are told `epoch_changed`).
    pub fn with_disk_history(
        mut self,
        log: &Arc<DiskLog>,
        repairs: &[Repair],
    ) -> Result<(Self, Vec<Arc<str>>), StorageError> {
        let now = now_ms();
        let clock = self.clock_ms();
        let mut stores: Vec<DiskHistory> = (0..self.shards.len())
            .map(|_| DiskHistory::new(log.clone(), self.retention.clone()))
            .collect();
        let mut recovered = Vec::new();
        for record in log.topics() {
            let index = self.shard_index(&record.topic);
            let store = &mut stores[index];
            store.restore(&record, now)?;
            // Quiet since its newest event (or the newest trimmed one): forgotten when it
            // would have been had the node not restarted.
            let newest_ts = store
                .get(&record.topic, &record.epoch, record.high_seq)
                .map_or(record.trimmed_until_ts, |e| e.ts);
            let quiet_ms = now.saturating_sub(newest_ts).max(0);
            let cut = repairs.iter().any(|r| {
                r.topic == record.topic
                    && matches!(r.kind, RepairKind::CutTail | RepairKind::RebuiltRecord)
            });
            self.shards[index].get_mut().topics.restore_copy(
                &record.topic,
                record.epoch.clone(),
                record.high_seq,
                record.committed_seq,
                clock.saturating_sub(quiet_ms),
                cut,
            );
            recovered.push(record.topic.clone());
        }
        for (shard, store) in self.shards.iter_mut().zip(stores) {
            shard.get_mut().history = Box::new(store) as Box<dyn HistoryStore>;
        }
        Ok((self, recovered))
    }
}
