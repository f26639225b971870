//! fjall 3.1: one database, one keyspace `events`, one LSM tree for every topic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Result;
use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::store::{Fsync, Position, Store, TrimRange};
use crate::workload::{Record, prefix_end, prefix_topic, split_key, value_header};

/// Retention rules a compaction filter applies: per topic the lowest sequence number kept,
/// and the oldest timestamp kept. Set by the broker; compactions drop what is below them
/// without tombstones.
#[derive(Debug, Default)]
pub struct TrimRules {
    low_seq: RwLock<HashMap<Vec<u8>, u64>>,
    min_ts: AtomicI64,
}

impl TrimRules {
    pub fn set_low_seq(&self, prefix: Vec<u8>, seq: u64) {
        self.low_seq
            .write()
            .expect("trim rules lock")
            .insert(prefix, seq);
    }

    pub fn set_min_ts(&self, ts: i64) {
        self.min_ts.store(ts, Ordering::Relaxed);
    }
}

struct TrimFactory(Arc<TrimRules>);

impl Factory for TrimFactory {
    fn name(&self) -> &'static str {
        "murmur-history-trim"
    }

    fn make_filter(&self, _ctx: &Context) -> Box<dyn CompactionFilter> {
        // A snapshot of the rules per compaction: no lock while it runs.
        Box::new(TrimFilter {
            low_seq: self.0.low_seq.read().expect("trim rules lock").clone(),
            min_ts: self.0.min_ts.load(Ordering::Relaxed),
        })
    }
}

struct TrimFilter {
    low_seq: HashMap<Vec<u8>, u64>,
    min_ts: i64,
}

impl CompactionFilter for TrimFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _ctx: &Context) -> CompactionFilterResult {
        let Some((prefix, seq)) = split_key(item.key()) else {
            return Ok(Verdict::Keep);
        };
        if self.low_seq.get(prefix).is_some_and(|&low| seq < low) {
            // Every key is written once, so no older version can resurface: no tombstone.
            return Ok(Verdict::Destroy);
        }
        if self.min_ts > 0 {
            let value = item.value()?;
            if value_header(&value).is_some_and(|(_, ts)| ts < self.min_ts) {
                return Ok(Verdict::Destroy);
            }
        }
        Ok(Verdict::Keep)
    }
}

pub struct FjallStore {
    db: Database,
    events: Keyspace,
    fsync: Fsync,
}

impl FjallStore {
    /// Opens (or creates) the store; with `rules`, compactions drop what they trim.
    pub fn open(
        dir: &Path,
        fsync: Fsync,
        cache_bytes: u64,
        rules: Option<Arc<TrimRules>>,
    ) -> Result<Self> {
        let mut builder = Database::builder(dir).cache_size(cache_bytes);
        if let Some(rules) = rules {
            let factory: Arc<dyn Factory> = Arc::new(TrimFactory(rules));
            builder = builder.with_compaction_filter_factories(Arc::new(move |keyspace: &str| {
                (keyspace == "events").then(|| factory.clone())
            }));
        }
        let db = builder.open()?;
        let events = db.keyspace("events", KeyspaceCreateOptions::default)?;
        Ok(Self { db, events, fsync })
    }
}

impl Store for FjallStore {
    fn append(&mut self, batch: &[Record]) -> Result<()> {
        // `Buffer` hands the journal's buffer to the OS (write(2)) at commit; `SyncData`
        // also fdatasyncs the journal before the commit returns.
        let mode = match self.fsync {
            Fsync::Always => PersistMode::SyncData,
            Fsync::Interval | Fsync::Never => PersistMode::Buffer,
        };
        let mut write = self.db.batch().durability(Some(mode));
        for record in batch {
            write.insert(&self.events, record.key.as_slice(), record.value.as_slice());
        }
        write.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    fn last_positions(&self, max_topics: usize) -> Result<Vec<Position>> {
        let mut positions = Vec::new();
        let mut start: Vec<u8> = Vec::new();
        while positions.len() < max_topics {
            let Some(first) = self.events.range(start.as_slice()..).next() else {
                break;
            };
            let key = first.key()?;
            let Some((prefix, _)) = split_key(&key) else {
                anyhow::bail!("malformed key {key:?}");
            };
            let prefix = prefix.to_vec();
            let end = prefix_end(&prefix);
            let Some(last) = self
                .events
                .range(prefix.as_slice()..end.as_slice())
                .next_back()
            else {
                anyhow::bail!("topic vanished during the scan");
            };
            let (key, value) = last.into_inner()?;
            let (_, last_seq) = split_key(&key).unwrap_or_default();
            let (epoch, _) = value_header(&value).unwrap_or_default();
            positions.push(Position {
                topic: prefix_topic(&prefix).to_owned(),
                epoch,
                last_seq,
            });
            start = end;
        }
        Ok(positions)
    }

    fn read_page(&self, prefix: &[u8], from_seq: u64, n: usize) -> Result<(usize, usize)> {
        let from = crate::workload::event_key(prefix, from_seq);
        let end = prefix_end(prefix);
        let mut events = 0;
        let mut bytes = 0;
        for guard in self.events.range(from.as_slice()..end.as_slice()).take(n) {
            let (key, value) = guard.into_inner()?;
            events += 1;
            bytes += key.len() + value.len();
        }
        Ok((events, bytes))
    }

    fn first_seq_not_older(
        &self,
        prefix: &[u8],
        cutoff_ts: i64,
        max_scan: usize,
    ) -> Result<Option<u64>> {
        let end = prefix_end(prefix);
        for guard in self.events.range(prefix..end.as_slice()).take(max_scan) {
            let (key, value) = guard.into_inner()?;
            if value_header(&value).is_some_and(|(_, ts)| ts >= cutoff_ts) {
                return Ok(split_key(&key).map(|(_, seq)| seq));
            }
        }
        Ok(None)
    }

    fn delete(&mut self, ranges: &[TrimRange]) -> Result<u64> {
        // fjall 3.1 has no range delete: one tombstone per event, one write batch per topic.
        let mut deleted = 0;
        for range in ranges {
            let mut write = self.db.batch().durability(Some(PersistMode::Buffer));
            for seq in range.from..range.to {
                write.remove(&self.events, crate::workload::event_key(&range.prefix, seq));
                deleted += 1;
            }
            write.commit()?;
        }
        self.db.persist(PersistMode::SyncData)?;
        Ok(deleted)
    }

    fn compact(&mut self) -> Result<()> {
        // Flush the memtable, then a major compaction: tombstones meet their values (and the
        // compaction filter, if any, runs over every table).
        self.events.rotate_memtable_and_wait()?;
        self.events.major_compact()?;
        Ok(())
    }

    fn prepare_close(&mut self) -> Result<()> {
        self.events.rotate_memtable_and_wait()?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }
}
