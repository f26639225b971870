//! Starting from history on disk (setting `storage = "disk"`): the broker puts every topic
//! the node's [`DiskLog`] kept back in its shards, as copies that a claim weighs.
//!
//! A recovered topic is a copy (`moved`), never sequenced as it is: before numbering after
//! it, this node claims it (at once when alone; after asking its peers in a cluster, see
//! `Cluster::reclaim_recovered`), so a peer that went on with the topic while this node was
//! down is heard first. Until then a resume here is served up to the topic's committed
//! position as recorded on disk (what the owner last said was stored on every replica).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Broker, now_ms};
use crate::routing::dedupe::{Position, RememberedId};
use crate::storage::disk::{Repair, RepairKind};
use crate::storage::disk_history::SharedLog;
use crate::storage::{DiskHistory, HistoryStore, StorageError};

/// How often a failed disk log is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(5);

/// The broker's disk log, for reopening it after a failure.
#[derive(Debug)]
pub(super) struct DiskState {
    log: Arc<SharedLog>,
    last_attempt: Mutex<Option<Instant>>,
}

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
        log: Arc<SharedLog>,
        repairs: &[Repair],
    ) -> Result<(Self, Vec<Arc<str>>), StorageError> {
        let now = now_ms();
        let clock = self.clock_ms();
        let mut stores: Vec<DiskHistory> = (0..self.shards.len())
            .map(|_| DiskHistory::new(log.clone(), self.retention.clone()))
            .collect();
        let mut recovered = Vec::new();
        for record in log.get()?.topics() {
            let index = self.shard_index(&record.topic);
            let store = &mut stores[index];
            store.restore(&record, now)?;
            // Quiet since its newest event (or the newest trimmed one): forgotten when it
            // would have been had the node not restarted.
            let newest_ts = store
                .get(&record.topic, &record.epoch, record.high_seq)
                .map_or(record.trimmed_until_ts, |e| e.ts);
            // The publish ids its events carry, as if remembered when each was published: a
            // publish sent again after the restart gets its first position, not a second
            // event (idempotent publishing across a whole-cluster restart).
            let ids: Vec<RememberedId> = store
                .earliest(&record.topic)
                .events
                .iter()
                .filter_map(|event| {
                    let id = event.publish_id.clone()?;
                    Some(RememberedId {
                        id,
                        position: Position {
                            epoch: event.epoch.clone(),
                            seq: event.seq,
                        },
                        age_ms: u64::try_from(now.saturating_sub(event.ts)).unwrap_or(0),
                    })
                })
                .collect();
            self.shards[index]
                .get_mut()
                .dedupe
                .import(&record.topic, ids, clock);
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
        self.disk = Some(DiskState {
            log,
            last_attempt: Mutex::new(None),
        });
        Ok((self, recovered))
    }

    /// True while the disk history refuses writes (after a failure, until it is reopened).
    pub fn disk_history_failed(&self) -> bool {
        self.disk.as_ref().is_some_and(|d| d.log.has_failed())
    }

    /// Reopens the disk history if it failed (at most every 5 s; see `SharedLog`): with
    /// every shard locked, closes the log, opens it again (recovering what was
    /// acknowledged), and has every shard write what it serves over what the failed writes
    /// left; topics no shard holds any more are forgotten on disk. Publishes of the topics
    /// wait for the locks meanwhile. Returns true when the log was reopened.
    pub fn reopen_failed_history(&self) -> bool {
        let Some(disk) = &self.disk else {
            return false;
        };
        if !disk.log.has_failed() {
            return false;
        }
        {
            let mut last = disk.last_attempt.lock();
            if last.is_some_and(|at| at.elapsed() < REOPEN_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let mut shards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        if let Err(error) = disk.log.reopen() {
            tracing::warn!(%error, "history on disk is still failing; publishes get `unavailable`, reads go on from memory; trying again in 5 s");
            return false;
        }
        let mut held = std::collections::HashSet::new();
        for shard in &mut shards {
            match shard.history.rewrite_durable() {
                Ok(topics) => held.extend(topics),
                Err(error) => {
                    tracing::warn!(%error, "history on disk failed again while it was rewritten; trying again in 5 s");
                    return false;
                }
            }
        }
        let forgotten = disk.log.get().and_then(|log| {
            let gone: Vec<_> = log.topics().filter(|r| !held.contains(&r.topic)).collect();
            gone.iter().try_for_each(|r| log.forget_topic(&r.topic))
        });
        if let Err(error) = forgotten {
            tracing::warn!(%error, "history on disk failed again while it was rewritten; trying again in 5 s");
            return false;
        }
        tracing::info!(
            topics = held.len(),
            "history on disk reopened after a failure: publishes are stored again"
        );
        true
    }
}
