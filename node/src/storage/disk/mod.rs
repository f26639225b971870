//! Topic history on disk (issue 17): the durable layer a `disk` [`super::HistoryStore`]
//! backend will sit on. Not wired into the broker yet.
//!
//! One [`DiskLog`] per node: one fjall database in the node's history directory, with an
//! `events` keyspace for every topic's events and a `topics` keyspace of one record per
//! topic (epoch, retained range, committed seq), written in the same atomic batch as the
//! events they describe (layout: `layout.rs`, docs/storage.md "Disk layout"). What the log
//! offers is what the history seam does with events: append a batch (of many topics),
//! replace a topic's history, forget failed events at the end, trim from the front, forget a
//! topic, and read a page from a cursor, so that a resume from far back never loads a whole
//! history.
//!
//! - **Durability** ([`FsyncMode`]): every write is one fjall batch written to the journal
//!   and handed to the OS (`write(2)`) before the call returns, so a process crash
//!   (`kill -9`) loses nothing a call returned `Ok` for, in every mode. `Always` also
//!   `fdatasync`s the journal before returning (power loss loses nothing acknowledged);
//!   `Interval` syncs from a thread of its own every period (power loss loses at most the
//!   last period); `Never` leaves syncing to the OS and fjall's own rotations.
//! - **Trimming** is a record update; compactions drop what is below (`trim.rs` says why
//!   this and not deletes).
//! - **Recovery** at open checks every topic's record against its events and cuts what is
//!   missing or unreadable at the end of a history, with one warning per cut
//!   (`recovery.rs`); reads check every event they return and never return a bad one.
//! - **Concurrency**: every method takes `&self`; writes are serialized inside (fjall
//!   serializes its journal writes anyway), reads run beside them. The broker calls for one
//!   topic under that topic's shard lock, which is what keeps a topic's reads in step with
//!   its writes; the log itself does not order a read against a concurrent write of the
//!   same topic.
//! - **Failures** are [`StorageError`]s, a full disk told apart. fjall refuses every write
//!   after a failed one (its database is poisoned: what reached the disk is unknown), so a
//!   log that failed must be reopened; reopening recovers everything acknowledged.

mod layout;
mod recovery;
mod trim;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use fjall::compaction::filter::Factory;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use foldhash::fast::RandomState;
use parking_lot::{Mutex, RwLock};

pub use super::StorageError;
pub use layout::{MAX_TOPIC_BYTES, TopicRecord};
pub use recovery::{Recovered, Repair, RepairKind};

use crate::event::Event;
use crate::routing::dedupe::PublishId;
use layout::{EVENTS, META_NEXT_GEN, TOPICS, encode_event, event_key, event_ts, record_key};
use trim::{Change, TrimFactory, TrimRules};

/// When the journal is synced to the disk (setting `fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Every write batch is `fdatasync`ed before the call returns.
    Always,
    /// Writes are handed to the OS; a thread syncs the journal every period (at least 1 ms).
    Interval(Duration),
    /// Writes are handed to the OS; syncing is left to it (and to fjall's journal rotation).
    Never,
}

/// The journal fjall keeps beside its tables may grow to this before it forces memtable
/// flushes: fjall's minimum (docs/storage.md: its default, 512 MiB, is a lot of disk and of
/// replay at startup for little gain).
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;

/// How long [`DiskLog::close`] waits for fjall to write its memtables out.
const CLOSE_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Topic history on disk: see the module docs.
pub struct DiskLog {
    dir: PathBuf,
    fsync: FsyncMode,
    db: Database,
    events: Keyspace,
    topics: Keyspace,
    /// Every topic's record, as last committed.
    index: RwLock<HashMap<Arc<str>, TopicRecord, RandomState>>,
    /// The next generation to give out; held through every write, which serializes them.
    writer: Mutex<u64>,
    rules: Arc<TrimRules>,
    /// The first write or sync that failed, if one did: fjall refuses every write after it.
    failure: Arc<Mutex<Option<Failure>>>,
    /// `Interval` mode's syncing thread; stopped (and joined) when the log is dropped.
    flusher: Option<Flusher>,
    /// Writes committed so far (each handed to the OS), and how many of them a sync is
    /// known to cover: what [`Self::sync_through`] compares.
    written: AtomicU64,
    synced: AtomicU64,
    /// Held by the one thread syncing for everyone at a time (group commit).
    syncing: Mutex<()>,
}

impl fmt::Debug for DiskLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskLog")
            .field("dir", &self.dir)
            .field("fsync", &self.fsync)
            .field("topics", &self.index.read().len())
            .finish_non_exhaustive()
    }
}

impl DiskLog {
    /// Opens (or creates) the log in `dir`, recovers every topic's record and checks it
    /// against the events on disk (cutting what is missing or unreadable at the end; see
    /// [`Recovered::repairs`]). Fails with [`StorageError::Locked`] when another open log
    /// holds `dir`.
    pub fn open(
        dir: impl AsRef<Path>,
        fsync: FsyncMode,
    ) -> Result<(Self, Recovered), StorageError> {
        let dir = dir.as_ref().to_path_buf();
        let rules = Arc::new(TrimRules::default());
        let factory: Arc<dyn Factory> = Arc::new(TrimFactory(rules.clone()));
        let db = Database::builder(&dir)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .with_compaction_filter_factories(Arc::new(move |keyspace: &str| {
                (keyspace == EVENTS).then(|| factory.clone())
            }))
            .open()?;
        let events = db.keyspace(EVENTS, KeyspaceCreateOptions::default)?;
        let topics = db.keyspace(TOPICS, KeyspaceCreateOptions::default)?;
        let loaded = recovery::recover(&db, &events, &topics)?;
        rules.load(
            loaded.records.iter().map(|r| (r.generation, r.low_seq)),
            loaded.next_gen,
        );
        let index = loaded
            .records
            .iter()
            .map(|r| (r.topic.clone(), r.clone()))
            .collect();
        let failure = Arc::new(Mutex::new(None));
        let flusher = match fsync {
            FsyncMode::Interval(every) => Some(Flusher::start(db.clone(), every, failure.clone())?),
            FsyncMode::Always | FsyncMode::Never => None,
        };
        let log = Self {
            dir,
            fsync,
            db,
            events,
            topics,
            index: RwLock::new(index),
            writer: Mutex::new(loaded.next_gen),
            rules,
            failure,
            flusher,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncing: Mutex::new(()),
        };
        Ok((
            log,
            Recovered {
                topics: loaded.records,
                repairs: loaded.repairs,
            },
        ))
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first write or sync that failed, if one did (cause, and whether the disk was
    /// full): the log refuses every write since, until it is reopened.
    pub fn failure(&self) -> Option<(Arc<str>, bool)> {
        self.failure
            .lock()
            .as_ref()
            .map(|f| (f.cause.clone(), f.disk_full))
    }

    pub fn fsync(&self) -> FsyncMode {
        self.fsync
    }

    /// Appends `events` (of any topics, each topic's in order) in one atomic batch.
    ///
    /// An event follows its topic's history when it has the topic's epoch and the next seq
    /// (or, when nothing is retained, any seq from the record's `low_seq` on); any other
    /// event starts the topic's history afresh from itself, as the memory backend does.
    pub fn append(&self, events: &[Arc<Event>]) -> Result<(), StorageError> {
        for event in events {
            check_event(event)?;
        }
        self.write(Durability::Mode, |txn| {
            for event in events {
                txn.append(event);
            }
            Ok(())
        })
    }

    /// [`Self::append`] without the sync `FsyncMode::Always` makes: the events are handed to
    /// the OS (a process crash loses nothing), and the returned mark is what
    /// [`Self::sync_through`] takes to make them survive a power cut too. Many appends then
    /// share one `fdatasync` (group commit) instead of each waiting for its own.
    pub fn append_unsynced(&self, events: &[Arc<Event>]) -> Result<u64, StorageError> {
        for event in events {
            check_event(event)?;
        }
        self.write(Durability::Relaxed, |txn| {
            for event in events {
                txn.append(event);
            }
            Ok(())
        })?;
        Ok(self.written.load(Ordering::Acquire))
    }

    /// The mark of every write so far, for [`Self::sync_through`].
    pub fn written_mark(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// The mark a sync is known to cover.
    pub fn synced_mark(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Returns once every write up to `mark` ([`Self::append_unsynced`]) is synced to the
    /// disk: at once when a sync since covered it; else this thread syncs everything
    /// written so far, for every caller waiting meanwhile.
    pub fn sync_through(&self, mark: u64) -> Result<(), StorageError> {
        if self.synced.load(Ordering::Acquire) >= mark {
            return Ok(());
        }
        let _one_at_a_time = self.syncing.lock();
        if self.synced.load(Ordering::Acquire) >= mark {
            return Ok(());
        }
        let covered = self.written.load(Ordering::Acquire);
        self.sync()?;
        self.synced.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Replaces `topic`'s history with `events` (contiguous, oldest first; all of `topic`):
    /// a replica taking a whole copy from the owner. The old history is dropped by
    /// compactions; `committed_seq` stays when the epoch does. No events: the topic is
    /// forgotten.
    pub fn replace(&self, topic: &str, events: &[Arc<Event>]) -> Result<(), StorageError> {
        check_topic(topic)?;
        for event in events {
            if *event.topic != *topic {
                return Err(StorageError::Invalid(format!(
                    "an event of {:?} in a replace of {topic:?}",
                    event.topic
                )));
            }
            check_event(event)?;
        }
        self.write(Durability::Mode, |txn| {
            let previous = txn.record(topic);
            txn.stage(topic.into(), None);
            for event in events {
                txn.append(event);
            }
            if let (Some(previous), Some(mut now)) = (previous, txn.record(topic))
                && previous.epoch == now.epoch
            {
                now.committed_seq = previous.committed_seq;
                txn.stage(now.topic.clone(), Some(now));
            }
            Ok(())
        })
    }

    /// Forgets `topic`'s events of `epoch` from `seq` on: they failed (their replicas did not
    /// confirm them) and must not be served from here. Not recorded as trimmed. Forgetting
    /// everything retained moves the topic to a new generation (no tombstones); forgetting a
    /// tail writes a tombstone per event.
    pub fn forget_from(&self, topic: &str, epoch: &str, seq: u64) -> Result<(), StorageError> {
        self.write(Durability::Mode, |txn| {
            let Some(mut record) = txn.record(topic) else {
                return Ok(());
            };
            if *record.epoch != *epoch || record.is_empty() || seq > record.high_seq {
                return Ok(());
            }
            let from = seq.max(record.low_seq);
            if from == record.low_seq {
                record.generation = txn.new_generation();
            } else {
                for gone in from..=record.high_seq {
                    txn.batch
                        .remove(&self.events, event_key(topic, record.generation, gone));
                }
            }
            record.high_seq = from - 1;
            txn.stage(record.topic.clone(), Some(record));
            Ok(())
        })
    }

    /// Trims `topic`'s events up to `up_to_seq` (inclusive) from the front: its `low_seq`
    /// moves past them (and `trimmed_until_ts` to the newest one's `ts`); compactions drop
    /// them from the disk later. Reads never return them again.
    ///
    /// Written without a sync of its own even in `Always` mode: the next synced write
    /// persists it (the journal is sequential), and a trim lost to a power cut only brings
    /// back events that were retained anyway.
    pub fn trim_front(&self, topic: &str, up_to_seq: u64) -> Result<(), StorageError> {
        self.write(Durability::Relaxed, |txn| {
            let Some(mut record) = txn.record(topic) else {
                return Ok(());
            };
            if record.is_empty() || up_to_seq < record.low_seq {
                return Ok(());
            }
            let last = up_to_seq.min(record.high_seq);
            let newest = self.events.get(event_key(topic, record.generation, last))?;
            if let Some(ts) = newest.as_deref().and_then(event_ts) {
                record.trimmed_until_ts = record.trimmed_until_ts.max(ts);
            }
            record.low_seq = last + 1;
            txn.stage(record.topic.clone(), Some(record));
            Ok(())
        })
    }

    /// Trims several topics from the front in one batch, as [`Self::trim_front`] does one,
    /// for a caller that knows the `ts` of the newest event each trim removes (no read of
    /// it): `(topic, epoch, up_to_seq, newest_trimmed_ts)`. A trim of another epoch than the
    /// topic's is ignored.
    pub fn trim_fronts(
        &self,
        trims: &[(Arc<str>, Arc<str>, u64, i64)],
    ) -> Result<(), StorageError> {
        self.write(Durability::Relaxed, |txn| {
            for (topic, epoch, up_to_seq, newest_ts) in trims {
                let Some(mut record) = txn.record(topic) else {
                    continue;
                };
                if record.epoch != *epoch || record.is_empty() || *up_to_seq < record.low_seq {
                    continue;
                }
                record.low_seq = (*up_to_seq).min(record.high_seq) + 1;
                record.trimmed_until_ts = record.trimmed_until_ts.max(*newest_ts);
                txn.stage(record.topic.clone(), Some(record));
            }
            Ok(())
        })
    }

    /// Drops every record of `topic`; compactions drop its events.
    pub fn forget_topic(&self, topic: &str) -> Result<(), StorageError> {
        self.write(Durability::Mode, |txn| {
            if let Some(record) = txn.record(topic) {
                txn.stage(record.topic, None);
            }
            Ok(())
        })
    }

    /// Records that `topic` is committed up to `seq` of `epoch` (it only grows; ignored for
    /// another epoch than the topic's). Synced like [`Self::trim_front`]: a committed seq
    /// lost to a power cut is a lower one, which serves less, not more.
    pub fn set_committed(&self, topic: &str, epoch: &str, seq: u64) -> Result<(), StorageError> {
        self.write(Durability::Relaxed, |txn| {
            if let Some(mut record) = txn.record(topic)
                && *record.epoch == *epoch
                && seq > record.committed_seq
            {
                record.committed_seq = seq;
                txn.stage(record.topic.clone(), Some(record));
            }
            Ok(())
        })
    }

    /// `topic`'s record, if the log has one.
    pub fn topic(&self, topic: &str) -> Option<TopicRecord> {
        self.index.read().get(topic).cloned()
    }

    /// Every topic's record, sorted by topic.
    pub fn topics(&self) -> impl Iterator<Item = TopicRecord> + use<> {
        let mut records: Vec<TopicRecord> = self.index.read().values().cloned().collect();
        records.sort_by(|a, b| a.topic.cmp(&b.topic));
        records.into_iter()
    }

    /// A page of `topic`'s retained events from `from_seq` on (from its `low_seq` when
    /// `from_seq` is below), oldest first: at most `max_events`, and no more payload bytes
    /// than `max_bytes` except that the first event always comes (a page always moves on).
    /// Empty when nothing is retained from there. A missing or unreadable event in the range
    /// is a [`StorageError::Corrupt`] naming it; nothing after it is returned.
    pub fn read(
        &self,
        topic: &str,
        from_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<Event>>, StorageError> {
        let Some(record) = self.topic(topic) else {
            return Ok(Vec::new());
        };
        let start = from_seq.max(record.low_seq);
        if start > record.high_seq || max_events == 0 {
            return Ok(Vec::new());
        }
        let first = event_key(topic, record.generation, start);
        let last = event_key(topic, record.generation, record.high_seq);
        let mut page = Vec::new();
        let mut bytes = 0usize;
        let mut expected = start;
        for item in self.events.range(first..=last) {
            let (key, value) = item.into_inner()?;
            let corrupt = |seq, reason| StorageError::Corrupt {
                topic: record.topic.clone(),
                seq,
                reason,
            };
            if layout::split_event_key(&key).map(|(_, seq)| seq) != Some(expected) {
                return Err(corrupt(expected, "missing"));
            }
            let view = layout::view_event(&value).map_err(|reason| corrupt(expected, reason))?;
            if view.epoch != &*record.epoch {
                return Err(corrupt(
                    expected,
                    "event of another epoch than its topic's record",
                ));
            }
            if !page.is_empty() && bytes.saturating_add(view.payload.len()) > max_bytes {
                return Ok(page);
            }
            bytes += view.payload.len();
            page.push(Arc::new(view.into_event(
                record.topic.clone(),
                record.epoch.clone(),
                expected,
            )));
            if page.len() == max_events || expected == record.high_seq {
                return Ok(page);
            }
            expected += 1;
        }
        Err(StorageError::Corrupt {
            topic: record.topic.clone(),
            seq: expected,
            reason: "missing",
        })
    }

    /// Retained event `seq` of `epoch` on `topic`, if any.
    pub fn get(
        &self,
        topic: &str,
        epoch: &str,
        seq: u64,
    ) -> Result<Option<Arc<Event>>, StorageError> {
        match self.topic(topic) {
            Some(record) if *record.epoch == *epoch => {}
            _ => return Ok(None),
        }
        Ok(self
            .read(topic, seq, 1, usize::MAX)?
            .pop()
            .filter(|event| event.seq == seq))
    }

    /// Syncs the journal now (`fdatasync`), whatever the mode.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.db
            .persist(PersistMode::SyncData)
            .map_err(|e| record_failure(&self.failure, e))
    }

    /// How many times `Interval` mode's thread has synced the journal.
    pub fn background_syncs(&self) -> u64 {
        self.flusher
            .as_ref()
            .map_or(0, |f| f.syncs.load(Ordering::Relaxed))
    }

    /// Closes the log cleanly: stops the syncing thread, syncs the journal and writes the
    /// memtables out as tables (waiting at most 10 s), so that the next open has little
    /// journal to replay. Dropping the log without it loses nothing either (fjall syncs its
    /// journal when dropped); the next open just replays more.
    pub fn close(mut self) -> Result<(), StorageError> {
        drop(self.flusher.take());
        self.sync()?;
        // `rotate_memtable` is `#[doc(hidden)]` in fjall 3.1 (recheck on upgrades). Its
        // `_and_wait` sibling polls until the flush is done, forever if it fails (a full
        // disk): this waits a bounded time instead, the journal still holds everything.
        let keyspaces = [&self.events, &self.topics];
        for keyspace in keyspaces {
            keyspace.rotate_memtable()?;
        }
        let deadline = Instant::now() + CLOSE_FLUSH_WAIT;
        while keyspaces.iter().any(|k| k.sealed_memtable_count() > 0) {
            if Instant::now() > deadline {
                tracing::warn!(
                    dir = %self.dir.display(),
                    "history on disk: memtables not written out within {CLOSE_FLUSH_WAIT:?} at close; the journal holds them, the next start replays it"
                );
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Stages a write under the writer lock, commits it as one batch, then makes it
    /// visible (index, trim rules). Nothing is visible of a write that failed.
    fn write<R>(
        &self,
        durability: Durability,
        stage: impl FnOnce(&mut Txn<'_>) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let mut next_gen = self.writer.lock();
        let mut txn = Txn {
            log: self,
            next_gen: &mut next_gen,
            generation_given: false,
            batch: self.db.batch(),
            staged: HashMap::default(),
        };
        let out = stage(&mut txn)?;
        let Txn {
            mut batch,
            staged,
            generation_given,
            ..
        } = txn;
        if staged.is_empty() && batch.is_empty() {
            return Ok(out);
        }
        {
            let index = self.index.read();
            for (topic, record) in &staged {
                match record {
                    // A record that only grew at the end (appends following it) is not
                    // written: its events are, and recovery extends the record over them
                    // (`recovery::extend`). That halves what an append writes to the
                    // memtables, where the same record key would pile up one version per
                    // event.
                    Some(record) if extends(index.get(topic), record) => {}
                    Some(record) => {
                        batch.insert(
                            &self.topics,
                            record_key(topic),
                            layout::encode_record(record),
                        );
                    }
                    None => batch.remove(&self.topics, record_key(topic)),
                }
            }
        }
        if generation_given {
            batch.insert(&self.topics, META_NEXT_GEN, next_gen.to_be_bytes());
        }
        let mode = match (durability, self.fsync) {
            (Durability::Mode, FsyncMode::Always) => PersistMode::SyncData,
            _ => PersistMode::Buffer,
        };
        batch
            .durability(Some(mode))
            .commit()
            .map_err(|e| record_failure(&self.failure, e))?;
        let written = self.written.fetch_add(1, Ordering::AcqRel) + 1;
        if mode == PersistMode::SyncData {
            self.synced.fetch_max(written, Ordering::AcqRel);
        }
        let mut changes = Vec::with_capacity(staged.len());
        {
            let mut index = self.index.write();
            for (topic, record) in staged {
                let old = index.get(&topic).map(|r| r.generation);
                changes.push(Change {
                    old,
                    new: record.as_ref().map(|r| (r.generation, r.low_seq)),
                });
                match record {
                    Some(record) => index.insert(topic, record),
                    None => index.remove(&topic),
                };
            }
        }
        self.rules.update(&changes, *next_gen);
        Ok(out)
    }

    /// Writes the memtables out and compacts every table, so that the compaction filter
    /// sees everything now (tests; `major_compact` is `#[doc(hidden)]` in fjall 3.1).
    #[cfg(test)]
    fn compact_now(&self) -> Result<(), StorageError> {
        self.events.rotate_memtable_and_wait()?;
        self.events.major_compact()?;
        Ok(())
    }
}

impl Drop for DiskLog {
    fn drop(&mut self) {
        // Before the database handle goes: the thread holds a clone of it.
        drop(self.flusher.take());
    }
}

/// Whether a write is synced as the mode says or only handed to the OS.
#[derive(Debug, Clone, Copy)]
enum Durability {
    Mode,
    Relaxed,
}

/// One write being staged: the batch, and the records it changes (`None`: removed).
struct Txn<'a> {
    log: &'a DiskLog,
    next_gen: &'a mut u64,
    generation_given: bool,
    batch: OwnedWriteBatch,
    staged: HashMap<Arc<str>, Option<TopicRecord>, RandomState>,
}

impl Txn<'_> {
    /// The topic's record as this write leaves it so far.
    fn record(&self, topic: &str) -> Option<TopicRecord> {
        match self.staged.get(topic) {
            Some(staged) => staged.clone(),
            None => self.log.topic(topic),
        }
    }

    fn stage(&mut self, topic: Arc<str>, record: Option<TopicRecord>) {
        self.staged.insert(topic, record);
    }

    fn new_generation(&mut self) -> u64 {
        let generation = *self.next_gen;
        *self.next_gen += 1;
        self.generation_given = true;
        generation
    }

    fn append(&mut self, event: &Arc<Event>) {
        let record = match self.record(&event.topic) {
            Some(mut record) if follows(&record, event) => {
                if record.is_empty() {
                    // Events skipped before this one are not here, and were published
                    // before it: as far as anyone can tell, as late as it.
                    if event.seq > record.low_seq && event.seq > 1 {
                        record.trimmed_until_ts = record.trimmed_until_ts.max(event.ts);
                    }
                    record.low_seq = event.seq;
                }
                record.high_seq = event.seq;
                record
            }
            previous => TopicRecord {
                topic: event.topic.clone(),
                epoch: event.epoch.clone(),
                low_seq: event.seq,
                high_seq: event.seq,
                committed_seq: previous
                    .filter(|p| p.epoch == event.epoch)
                    .map_or(0, |p| p.committed_seq),
                // Joining mid-sequence: the earlier events are not here and may be as recent
                // as this one.
                trimmed_until_ts: if event.seq > 1 { event.ts } else { 0 },
                generation: self.new_generation(),
            },
        };
        self.batch.insert(
            &self.log.events,
            event_key(&event.topic, record.generation, event.seq),
            encode_event(event),
        );
        self.stage(record.topic.clone(), Some(record));
    }
}

/// Whether `new` is `old` with only more events at the end: the events written after the
/// record on disk say as much, so the record need not be written again.
fn extends(old: Option<&TopicRecord>, new: &TopicRecord) -> bool {
    old.is_some_and(|old| {
        old.epoch == new.epoch
            && old.generation == new.generation
            && old.low_seq == new.low_seq
            && old.committed_seq == new.committed_seq
            && old.trimmed_until_ts == new.trimmed_until_ts
            && new.high_seq > old.high_seq
    })
}

/// Whether `event` continues `record`'s history (else it starts the topic afresh).
fn follows(record: &TopicRecord, event: &Event) -> bool {
    record.epoch == event.epoch
        && if record.is_empty() {
            event.seq >= record.low_seq
        } else {
            event.seq == record.high_seq + 1
        }
}

fn check_topic(topic: &str) -> Result<(), StorageError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(StorageError::Invalid(format!(
            "a topic name of {} bytes (1 to {MAX_TOPIC_BYTES})",
            topic.len()
        )));
    }
    Ok(())
}

/// Refuses what could not be read back as it was written.
fn check_event(event: &Event) -> Result<(), StorageError> {
    check_topic(&event.topic)?;
    if event.seq == 0 {
        return Err(StorageError::Invalid("an event with seq 0".into()));
    }
    if event.epoch.is_empty() || event.epoch.len() > usize::from(u16::MAX) {
        return Err(StorageError::Invalid(format!(
            "an epoch of {} bytes",
            event.epoch.len()
        )));
    }
    if let Some(id) = &event.publish_id
        && PublishId::from_wire(id.wire()).is_none()
    {
        return Err(StorageError::Invalid(format!(
            "a publish id a peer could not send ({} bytes)",
            id.wire().len()
        )));
    }
    Ok(())
}

/// The first failed write or sync of an opening, kept to explain the refusals after it.
#[derive(Debug, Clone)]
struct Failure {
    cause: Arc<str>,
    disk_full: bool,
}

/// Maps a failed write or sync, remembering the first failure (fjall poisons the database
/// on it and answers every later write `Poisoned`, which is reported with that cause).
fn record_failure(failure: &Mutex<Option<Failure>>, error: fjall::Error) -> StorageError {
    let error = StorageError::from(error);
    let mut first = failure.lock();
    match (&error, &*first) {
        (StorageError::Failed { .. }, Some(first)) => StorageError::Failed {
            cause: first.cause.clone(),
            disk_full: first.disk_full,
        },
        (StorageError::Failed { .. }, None) | (_, Some(_)) => error,
        (_, None) => {
            *first = Some(Failure {
                cause: error.to_string().into(),
                disk_full: error.is_disk_full(),
            });
            error
        }
    }
}

/// `Interval` mode's thread: syncs the journal every period until stopped.
struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    syncs: Arc<AtomicU64>,
}

impl Flusher {
    fn start(
        db: Database,
        every: Duration,
        failure: Arc<Mutex<Option<Failure>>>,
    ) -> Result<Self, StorageError> {
        let every = every.max(Duration::from_millis(1));
        let (stop, stopped) = mpsc::channel::<()>();
        let syncs = Arc::new(AtomicU64::new(0));
        let counter = syncs.clone();
        let thread = thread::Builder::new()
            .name("history-sync".into())
            .spawn(move || {
                // Disconnected (the log dropped the sender): stop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if let Err(error) = db.persist(PersistMode::SyncData) {
                        let error = record_failure(&failure, error);
                        tracing::error!(
                            %error,
                            "history on disk: the periodic sync failed; writes are refused until the store is reopened"
                        );
                        return;
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(StorageError::from_io)?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
            syncs,
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the thread has been reported by the panic hook already.
            let _ = thread.join();
        }
    }
}
