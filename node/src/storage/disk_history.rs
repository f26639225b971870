//! The disk backend (setting `storage = "disk"`): every write goes to the node's
//! [`DiskLog`] first and then to a copy in memory that serves reads.
//!
//! - **Write-through, disk first.** An append is in the log (handed to the OS, or synced
//!   with `fsync = "always"`) before the memory copy has it, so nothing the broker goes on
//!   to acknowledge or fan out is missing from the disk; a write the log refuses leaves the
//!   memory copy as it was and fails the call (the broker answers `unavailable`).
//! - **One retention.** The memory copy is trimmed by the retention settings as the memory
//!   backend is; whatever it trims (count, age, bytes, the node's budget) is trimmed from the
//!   log too ([`MemoryHistory::take_trims`]): record updates (compactions drop the events
//!   later), gathered and written in one batch with the once-a-second expiry, or sooner when
//!   4,096 are waiting. Reads come from memory, so a trim not yet on disk is never served;
//!   after a crash the log may hold up to a second of events memory had trimmed, and the
//!   restore trims them again by the same retention.
//! - **Reads from memory**, as fast as the memory backend's. History beyond RAM, paged from
//!   disk, is the next step of issue 17 (docs/storage.md); until then what a node retains
//!   is bounded by `history_max_total_bytes` on disk as in memory.
//! - **Recovery.** At start the node opens the log and puts every topic it kept back into
//!   memory ([`DiskHistory::restore`]); the broker takes their epochs and positions as
//!   copies a claim weighs (`Broker::with_disk_history`).
//!
//! Several stores (one per shard of the broker) share one log: each holds its own topics.

use std::collections::HashMap;
use std::sync::Arc;

use super::disk::{FsyncMode, TopicRecord};
use super::memory::{Held, MemoryHistory, Trimmed};
use super::{HistoryBudget, HistoryStore, Replay, Retention, StorageError, SyncTicket};
use crate::event::Event;
use crate::limits::LogLimiter;

/// Events read from the log at once when a topic is restored.
const RESTORE_PAGE_EVENTS: usize = 4096;

/// Trims of the memory copy waiting to be written to the log, at most: past it they are
/// written at once rather than with the next second's [`HistoryStore::expire`].
const TRIMS_WRITTEN_AT: usize = 4096;

/// A shard's topic history on disk, served from memory (see the module docs).
#[derive(Debug)]
pub struct DiskHistory {
    cache: MemoryHistory,
    log: Arc<SharedLog>,
    /// Limits the warning for a trim or forget the log refused.
    warn: LogLimiter,
    /// What must live as long as the store in tests (the log's temporary directory).
    #[cfg(test)]
    keep_alive: Option<Box<dyn std::any::Any + Send>>,
}

impl DiskHistory {
    pub fn new(log: Arc<SharedLog>, retention: Retention) -> Self {
        Self {
            cache: MemoryHistory::recording_trims(retention),
            log,
            warn: LogLimiter::new(std::time::Duration::from_secs(10)),
            #[cfg(test)]
            keep_alive: None,
        }
    }

    /// Puts `record`'s topic back in memory from the log: its epoch, where it stands, and
    /// its retained events (read in pages). Trimmed at once if today's retention is tighter
    /// than the one the events were kept under.
    pub fn restore(&mut self, record: &TopicRecord, now_ms: i64) -> Result<(), StorageError> {
        let mut events = Vec::with_capacity(usize::try_from(record.len()).unwrap_or(0));
        let log = self.log.get()?;
        let mut from = record.low_seq;
        while from <= record.high_seq {
            let page = log.read(&record.topic, from, RESTORE_PAGE_EVENTS, usize::MAX)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            events.extend(page);
        }
        self.cache.restore(
            record.topic.clone(),
            record.epoch.clone(),
            record.low_seq,
            record.trimmed_until_ts,
            events,
            now_ms,
        );
        self.trim_log();
        Ok(())
    }

    /// Trims the log as far as the memory copy was trimmed: one batch for every topic
    /// trimmed since the last call, each to the furthest point.
    fn trim_log(&mut self) {
        let trims = self.cache.take_trims();
        if trims.is_empty() {
            return;
        }
        let mut furthest: HashMap<Arc<str>, Trimmed> = HashMap::with_capacity(trims.len());
        for trim in trims {
            match furthest.get_mut(&trim.topic) {
                // The same epoch: trims only move forward. Another: the newer one counts.
                Some(known) if known.epoch == trim.epoch && known.first_seq >= trim.first_seq => {}
                Some(known) => *known = trim,
                None => {
                    furthest.insert(trim.topic.clone(), trim);
                }
            }
        }
        let batch: Vec<(Arc<str>, Arc<str>, u64, i64)> = furthest
            .into_values()
            .filter(|t| t.first_seq > 0)
            .map(|t| (t.topic, t.epoch, t.first_seq - 1, t.trimmed_until_ts))
            .collect();
        if let Err(error) = self.log.get().and_then(|log| log.trim_fronts(&batch)) {
            let topic = batch.first().map_or("", |t| &*t.0).to_owned();
            self.warn_refused("trim", &topic, &error);
        }
    }

    /// Trims the log now if many trims are waiting (they are otherwise written once a
    /// second, by [`HistoryStore::expire`]).
    fn trim_log_if_due(&mut self) {
        if self.cache.trims_pending() >= TRIMS_WRITTEN_AT {
            self.trim_log();
        }
    }

    fn warn_refused(&self, what: &str, topic: &str, error: &StorageError) {
        if self.warn.allow().is_some() {
            tracing::warn!(
                %topic,
                %error,
                "history on disk refused a {what}: the node serves what memory holds; \
                 writes fail until the log is reopened (restart the node)"
            );
        }
    }
}

impl HistoryStore for DiskHistory {
    fn sync_ticket(&self) -> Option<SyncTicket> {
        Some(match self.log.get() {
            Ok(log) if log.fsync() != FsyncMode::Always => return None,
            Ok(log) => {
                let mark = log.written_mark();
                SyncTicket::new(move || log.sync_through(mark))
            }
            Err(error) => SyncTicket::new(move || Err(error)),
        })
    }

    fn writable(&self) -> Result<(), StorageError> {
        let log = self.log.get()?;
        match log.failure() {
            Some((cause, disk_full)) => Err(StorageError::Failed { cause, disk_full }),
            None => Ok(()),
        }
    }

    fn append(&mut self, event: Arc<Event>, now_ms: i64) -> Result<(), StorageError> {
        let log = self.log.get()?;
        if log.fsync() == FsyncMode::Always {
            // Synced by whoever acknowledges it, with the appends around it.
            log.append_unsynced(std::slice::from_ref(&event))?;
        } else {
            log.append(std::slice::from_ref(&event))?;
        }
        self.cache.append(event, now_ms)?;
        self.trim_log_if_due();
        Ok(())
    }

    fn replace(
        &mut self,
        topic: &str,
        events: Vec<Arc<Event>>,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        // Trims waiting for this topic were of its old history: written first, so none
        // lands on the new one.
        self.trim_log();
        self.log.get()?.replace(topic, &events)?;
        self.cache.replace(topic, events, now_ms)?;
        self.trim_log_if_due();
        Ok(())
    }

    fn forget_from(&mut self, topic: &str, epoch: &str, seq: u64) {
        self.trim_log();
        if let Err(error) = self
            .log
            .get()
            .and_then(|log| log.forget_from(topic, epoch, seq))
        {
            self.warn_refused("forget", topic, &error);
        }
        self.cache.forget_from(topic, epoch, seq);
    }

    fn expire(&mut self, now_ms: i64) {
        self.cache.expire(now_ms);
        self.trim_log();
    }

    fn trim_oldest(&mut self, bytes: usize, spare: Option<&str>) -> usize {
        let freed = self.cache.trim_oldest(bytes, spare);
        self.trim_log_if_due();
        freed
    }

    fn forget_one(&mut self, topic: &str) {
        self.trim_log();
        let forgotten = self.log.get().and_then(|log| match log.topic(topic) {
            Some(_) => log.forget_topic(topic),
            None => Ok(()),
        });
        if let Err(error) = forgotten {
            self.warn_refused("forget", topic, &error);
        }
        self.cache.forget_one(topic);
    }

    fn note_committed(&mut self, topic: &str, epoch: &str, seq: u64) {
        if let Err(error) = self
            .log
            .get()
            .and_then(|log| log.set_committed(topic, epoch, seq))
        {
            self.warn_refused("commit", topic, &error);
        }
    }

    fn rewrite_durable(&mut self) -> Result<Vec<Arc<str>>, StorageError> {
        // What memory holds is written as it is now: the trims waiting are part of it.
        self.cache.take_trims();
        let log = self.log.get()?;
        let mut held = Vec::new();
        for Held {
            topic,
            epoch,
            first_seq,
            len,
            trimmed_until_ts: trimmed_ts,
        } in self.cache.held()
        {
            let on_disk = log.topic(&topic);
            if len > 0 {
                let last_seq = first_seq + len as u64 - 1;
                let same = on_disk.as_ref().is_some_and(|r| {
                    r.epoch == epoch && r.low_seq == first_seq && r.high_seq == last_seq
                });
                if !same {
                    log.replace(&topic, &self.cache.earliest(&topic).events)?;
                }
            } else if let Some(record) = on_disk.filter(|r| !r.is_empty()) {
                if record.epoch == epoch {
                    log.trim_fronts(&[(topic.clone(), epoch, record.high_seq, trimmed_ts)])?;
                } else {
                    log.forget_topic(&topic)?;
                }
            }
            held.push(topic);
        }
        Ok(held)
    }

    fn knows(&self, topic: &str) -> bool {
        self.cache.knows(topic)
    }

    fn get(&self, topic: &str, epoch: &str, seq: u64) -> Option<Arc<Event>> {
        self.cache.get(topic, epoch, seq)
    }

    fn earliest(&self, topic: &str) -> Replay {
        self.cache.earliest(topic)
    }

    fn after(&self, topic: &str, epoch: &str, seq: u64) -> Replay {
        self.cache.after(topic, epoch, seq)
    }

    fn since(&self, topic: &str, since_ms: i64) -> Replay {
        self.cache.since(topic, since_ms)
    }

    fn topics(&self) -> usize {
        self.cache.topics()
    }

    fn events(&self) -> usize {
        self.cache.events()
    }

    fn bytes(&self) -> usize {
        self.cache.bytes()
    }

    fn budget(&self) -> &HistoryBudget {
        self.cache.budget()
    }
}

mod shared_log;
#[cfg(test)]
mod tests;

pub use shared_log::SharedLog;
